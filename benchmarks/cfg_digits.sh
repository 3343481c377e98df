# Classifier-free guidance on the embedded digits: train a class-conditional model with label dropout, sample
# each digit at several guidance scales, and judge the samples with an SVC trained on the real digits.
#
#   bash benchmarks/cfg_digits.sh [--out runs/cfg_digits] [--steps 2500]
#
# About 7 minutes on 2 CPU cores after set-up. Numbers in benchmarks/RESULTS.md; grids in $out/judge.
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/cfg_digits
steps=2500
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "usage: bash benchmarks/cfg_digits.sh [--out DIR] [--steps N]" >&2; exit 2 ;;
  esac
done

source scripts/launcher.sh

$py datasets/digits.py --out_dir "$out/digits" --image_size 16 --split train
"${launch[@]}" scripts/image_train.py --data_dir "$out/digits" --log_dir "$out/diffusion" --image_size 16 \
  --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions "" --class_cond True \
  --num_classes 10 --class_dropout_prob 0.1 --noise_schedule cosine --lr 2e-3 --batch_size $((64 / ranks)) \
  --ema_rate 0.995 --random_flip False --max_steps "$steps" --save_interval 500 --log_interval 250 \
  --resume_checkpoint auto

checkpoint=$(printf '%s/diffusion/ema_0.995_%06d.pt' "$out" "$steps")
pairs=()
for scale in 0 1 2 4; do
  "${launch[@]}" scripts/image_sample.py --model_path "$checkpoint" --cfg_scale "$scale" --classes 0-9 \
    --num_samples 200 --batch_size 100 --sampler heun --steps 18 --log_dir "$out/samples_cfg$scale" --progress False
  pairs+=("$scale=$out/samples_cfg$scale/samples_200x16x16x3.npz")
done
$py datasets/digits_judge.py --out_dir "$out/judge" "${pairs[@]}"
