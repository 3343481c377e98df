#!/usr/bin/env bash
# Every guidance method on the embedded digits, at equal network evaluations, over 3 seeds:
#   1. train a class-conditional model with label dropout (for classifier-free guidance), keeping its
#      checkpoint at 1/8 of the steps (an autoguidance guide), a smaller model (the other guide: half the
#      channels at the 8x8 level; 16 channels everywhere is not an ADM network, whose group norms need multiples
#      of 32) and a noisy classifier, all on the same noise schedule;
#   2. benchmarks/bench_guidance_digits.py samples every method (Heun, 35 evaluations of the main model) and
#      judges it with the digits judge; table and plot in benchmarks/.
# Usage: bash benchmarks/guidance_digits.sh [--out runs/guidance_digits]   (about 80 minutes on 2 cores)
# A rerun resumes: finished training is not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/guidance_digits
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    *) echo "usage: bash benchmarks/guidance_digits.sh [--out DIR]" >&2; exit 2 ;;
  esac
done
steps=2400

source scripts/launcher.sh
$py datasets/digits.py --out_dir "$out/digits" --image_size 16 --split train

common=(--data_dir "$out/digits" --image_size 16 --num_res_blocks 1 --attention_resolutions ""
        --class_cond True --num_classes 10 --class_dropout_prob 0.1 --lr 2e-3 --batch_size $((64 / ranks))
        --ema_rate 0.995 --random_flip False --max_steps "$steps" --log_interval 300 --resume_checkpoint auto)
echo "guidance_digits: the main model (32 channels, $steps steps, checkpoints every $((steps / 8)))"
"${launch[@]}" scripts/image_train.py "${common[@]}" --num_channels 32 --channel_mult 1,2 --save_interval $((steps / 8)) \
  --log_dir "$out/main"
echo "guidance_digits: the smaller guide (channel_mult 1,1, $steps steps)"
"${launch[@]}" scripts/image_train.py "${common[@]}" --num_channels 32 --channel_mult 1,1 --save_interval "$steps" \
  --log_dir "$out/small"
echo "guidance_digits: the noisy classifier (1500 steps)"
"${launch[@]}" scripts/classifier_train.py --data_dir "$out/digits" --log_dir "$out/classifier" \
  --image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 \
  --classifier_attention_resolutions "" --classifier_pool adaptive --num_classes 10 --lr 1e-3 \
  --batch_size $((64 / ranks)) --iterations 1500 --random_crop False --random_flip False \
  --save_interval 1500 --log_interval 500 --resume_checkpoint auto

ckpt() { printf '%s/%s/ema_0.995_%06d.pt' "$out" "$1" "$2"; }
OMP_NUM_THREADS=$(nproc) $py benchmarks/bench_guidance_digits.py --model_path "$(ckpt main "$steps")" \
  --early_guide_path "$(ckpt main $((steps / 8)))" --small_guide_path "$(ckpt small "$steps")" \
  --classifier_path "$(printf '%s/classifier/model%06d.pt' "$out" 1500)" --out_dir "$out/bench"
