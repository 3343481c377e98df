#!/usr/bin/env bash
# ADM's, EDM's and EDM2's training recipes on the embedded digits, at equal wall-clock training time:
#   1. calibrate: each recipe trains 120 steps; its images/s over the last 60 gives the step count that fills
#      --minutes of training on this machine (so the arms get equal time however busy the machine is later);
#   2. train, class-conditional with label dropout 0.1 (for CFG), batch 64, power-function EMAs 0.05,0.10:
#        adm      the main job's network and objective (eps prediction, 1000 linear steps), lr 2e-3, EMA 0.995
#        adm-edm  the same network with --objective edm (EDM's preconditioning, loss and noise levels), lr 2e-3
#        edm2     EDM2's network at similar cost (32 channels, 1,2, 1 block), its loss with learned uncertainty,
#                 Adam betas 0.9,0.99, lr 1e-2 with EDM2's schedule (ramp-up 4k images, decay after 8k),
#                 P_mean -0.8, P_std 1.6 (EDM2's pixel-space ImageNet-64 values)
#   3. reconstruct each run's EMA at 8 lengths (scripts/reconstruct_ema.py);
#   4. benchmarks/bench_edm_recipes_digits.py samples (Heun, 18 steps = 35 evaluations; CFG in one doubled batch)
#      and judges: recipes table (classic EMA and post-hoc lengths), FD against sigma_rel with and without CFG
#      (the EDM2 run over all 8 lengths, with CFG on one seed); tables and plots in OUT/bench. About 90 minutes on 2 cores.
# Usage: bash benchmarks/edm_recipes_digits.sh [--out runs/edm_recipes_digits] [--minutes 6]
# A rerun resumes: finished calibration, training and reconstruction are not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/edm_recipes_digits
minutes=6
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    *) echo "usage: bash benchmarks/edm_recipes_digits.sh [--out DIR] [--minutes M]" >&2; exit 2 ;;
  esac
done
batch=64
stds="0.02,0.035,0.05,0.075,0.10,0.16,0.20,0.25"

source scripts/launcher.sh
source benchmarks/calibrate.sh
$py datasets/digits.py --out_dir "$out/digits" --image_size 16 --split train

common=(--data_dir "$out/digits" --image_size 16 --class_cond True --num_classes 10 --class_dropout_prob 0.1
        --batch_size $((batch / ranks)) --ema_rate 0.995 --random_flip False --phema_stds 0.05,0.10)
adm=(--num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions "" --lr 2e-3)
recipe() {  # the arm's flags, into the array `flags`
  case $1 in
    adm) flags=("${adm[@]}") ;;
    adm-edm) flags=("${adm[@]}" --objective edm) ;;
    edm2) flags=(--arch edm2 --model_channels 32 --channel_mult 1,2 --num_blocks 1 --attn_resolutions "" --lr 1e-2
                 --lr_rampup_images 4000 --lr_ref_images 8000 --p_mean -0.8 --p_std 1.6) ;;
  esac
}

declare -A steps
for arm in adm adm-edm edm2; do  # all calibrations first, back to back
  recipe "$arm"
  steps[$arm]=$(calibrated_steps "$out/calibrate/$arm" "$minutes" "$batch" "${common[@]}" "${flags[@]}" \
    --phema_stds "")
  echo "edm_recipes_digits: $arm trains ${steps[$arm]} steps ($minutes min at its calibrated speed)"
done
for arm in adm adm-edm edm2; do
  recipe "$arm"
  steps=${steps[$arm]}
  "${launch[@]}" scripts/image_train.py "${common[@]}" "${flags[@]}" --max_steps "$steps" --save_interval "$steps" \
    --log_interval 500 --phema_interval $((steps * batch / 16)) --log_dir "$out/$arm" --resume_checkpoint auto
  if ! ls "$out/$arm"/phema_recon_0.250_*.pt >/dev/null 2>&1; then
    $py scripts/reconstruct_ema.py --run_dir "$out/$arm" --sigma_rel "$stds"
  fi
done

OMP_NUM_THREADS=$(nproc) $py benchmarks/bench_edm_recipes_digits.py --runs_dir "$out" --sigma_rels "$stds" \
  --out_dir "$out/bench"
