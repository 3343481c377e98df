#!/usr/bin/env bash
# The main job, on the handwritten digits that ship with scikit-learn (no download, no GPU needed):
#   1. set up (setup.sh: Open MPI, .venv, torch, the project),
#   2. train an unconditional diffusion model (scripts/image_train.py) and a noisy classifier
#      (scripts/classifier_train.py), data-parallel under mpiexec when it is available,
#   3. sample with classifier guidance at several scales (scripts/classifier_sample.py, DDIM),
#   4. judge the samples (datasets/digits_judge.py): the fraction an independent SVC reads as the requested
#      digit, and the Fréchet distance, precision and recall against the held-out real digits, per scale;
#      table, grids (OUT/judge/grid_*.png) and the trade-off plot (OUT/judge/tradeoff.png).
# With --recipe edm2 the same pipeline trains EDM2's network instead (class-conditional with label dropout, its
# loss and learning-rate schedule, power-function EMAs), picks the EMA length afterwards (scripts/reconstruct_ema.py)
# and samples with classifier-free guidance at several scales (Heun, 35 evaluations); same judge, same table.
# Usage: bash quickstart.sh [--fast] [--steps N] [--out DIR] [--recipe adm|edm2]
#   --fast: a tiny budget, about 2 minutes; --steps N: train every network N steps instead of the budget's count
# A rerun resumes: finished training and sampling are not repeated.
set -euo pipefail
cd "$(dirname "$0")"

fast=0
steps_override=""
out=""
recipe=adm
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) fast=1; shift ;;
    --steps) steps_override=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --recipe) recipe=$2; shift 2 ;;
    *) echo "usage: bash quickstart.sh [--fast] [--steps N] [--out DIR] [--recipe adm|edm2]" >&2; exit 2 ;;
  esac
done
case "$recipe" in
  adm|edm2) ;;
  *) echo "quickstart.sh: error: --recipe $recipe: choose adm or edm2" >&2; exit 2 ;;
esac
if [ -n "$steps_override" ] && ! [[ "$steps_override" =~ ^[1-9][0-9]*$ ]]; then
  echo "quickstart.sh: error: --steps $steps_override: expected a positive whole number of training steps" >&2; exit 2
fi
if [ -z "$out" ]; then
  out=runs/quickstart$([ "$recipe" = edm2 ] && echo -edm2)$([ "$fast" = 1 ] && echo -fast)
fi

if [ "$fast" = 1 ]; then
  train_steps=300; classifier_steps=300; per_digit=10; ddim=ddim20; scales="0 10"
else
  train_steps=2500; classifier_steps=1500; per_digit=36; ddim=ddim50; scales="0 0.5 1 2 3 10"
fi
if [ -n "$steps_override" ]; then train_steps=$steps_override; classifier_steps=$steps_override; fi

source scripts/launcher.sh

judge() {  # the samples named in "${pairs[@]}" against the real digits; $1: the table's first column
  echo "quickstart: judging the samples against the real digits"
  $py datasets/digits_judge.py --out_dir "$out/judge" --column "$1" --plot "$out/judge/tradeoff.png" "${pairs[@]}"
  echo "quickstart: grids in $out/judge/grid_*.png, plot in $out/judge/tradeoff.png, numbers in $out/judge/results.json"
}
echo "quickstart: output in $out, launching with: ${launch[*]}"

$py datasets/digits.py --out_dir "$out/digits" --image_size 16 --split train

if [ "$recipe" = edm2 ]; then
  # EDM2's network at the main job's cost; EMA length and CFG scale from benchmarks/edm_recipes_digits.sh.
  if [ "$fast" = 1 ]; then steps=300; per_digit=10; scales="1 2"; else steps=2000; per_digit=36; scales="1 1.5 2 3"; fi
  steps=${steps_override:-$steps}
  sigma_rel=0.10
  echo "quickstart: training EDM2's network ($steps steps, power-function EMAs 0.05,0.10)"
  "${launch[@]}" scripts/image_train.py --data_dir "$out/digits" --log_dir "$out/diffusion" --image_size 16 \
    --arch edm2 --model_channels 32 --channel_mult 1,2 --num_blocks 1 --attn_resolutions "" --class_cond True \
    --num_classes 10 --class_dropout_prob 0.1 --lr 1e-2 --lr_rampup_images 4000 --lr_ref_images 8000 \
    --p_mean -0.8 --p_std 1.6 --batch_size $((64 / ranks)) --ema_rate 0.995 --random_flip False \
    --phema_stds 0.05,0.10 --phema_interval $((steps * 4)) --max_steps "$steps" --save_interval 500 \
    --log_interval 250 --resume_checkpoint auto
  model_ckpt=$(printf '%s/diffusion/phema_recon_%.3f_%06d.pt' "$out" "$sigma_rel" "$steps")
  [ -f "$model_ckpt" ] || $py scripts/reconstruct_ema.py --run_dir "$out/diffusion" --sigma_rel "$sigma_rel"
  pairs=()
  for scale in $scales; do
    echo "quickstart: sampling with classifier-free guidance at scale $scale"
    "${launch[@]}" scripts/image_sample.py --model_path "$model_ckpt" --cfg_scale "$scale" --classes 0-9 \
      --num_samples $((10 * per_digit)) --batch_size 100 --sampler heun --steps 18 \
      --log_dir "$out/samples_cfg$scale" --progress False
    pairs+=("$scale=$(printf '%s/samples_cfg%s/samples_%dx16x16x3.npz' "$out" "$scale" $((10 * per_digit)))")
  done
  judge "CFG scale"
  exit 0
fi

model=(--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions "")
echo "quickstart: training the diffusion model ($train_steps steps)"
"${launch[@]}" scripts/image_train.py --data_dir "$out/digits" --log_dir "$out/diffusion" "${model[@]}" \
  --lr 2e-3 --batch_size $((64 / ranks)) --ema_rate 0.995 --random_flip False --max_steps "$train_steps" \
  --save_interval 500 --log_interval 250 --resume_checkpoint auto

echo "quickstart: training the noisy classifier ($classifier_steps steps)"
"${launch[@]}" scripts/classifier_train.py --data_dir "$out/digits" --log_dir "$out/classifier" \
  --image_size 16 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 \
  --classifier_attention_resolutions "" --classifier_pool adaptive --num_classes 10 --lr 1e-3 \
  --batch_size $((64 / ranks)) --iterations "$classifier_steps" --random_crop False --random_flip False \
  --save_interval 500 --log_interval 250 --resume_checkpoint auto

diffusion_ckpt=$(printf '%s/diffusion/ema_0.995_%06d.pt' "$out" "$train_steps")
classifier_ckpt=$(printf '%s/classifier/model%06d.pt' "$out" "$classifier_steps")
pairs=()
for scale in $scales; do
  echo "quickstart: sampling at guidance scale $scale"
  "${launch[@]}" scripts/classifier_sample.py --model_path "$diffusion_ckpt" --classifier_path "$classifier_ckpt" \
    --classifier_scale "$scale" --classes 0-9 --num_samples $((10 * per_digit)) --batch_size 100 \
    --use_ddim True --timestep_respacing "$ddim" --log_dir "$out/samples_scale$scale" --progress False
  pairs+=("$scale=$(printf '%s/samples_scale%s/samples_%dx16x16x3.npz' "$out" "$scale" $((10 * per_digit)))")
done

judge "guidance scale"
