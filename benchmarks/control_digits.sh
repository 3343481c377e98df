#!/usr/bin/env bash
# Separate semantic and control conditioning (Berrada et al. 2024) on the embedded digits, at equal wall-clock:
#   1. calibrate: each arm trains 120 steps; its images/s gives the step count that fills --minutes;
#   2. train the ADM network with --objective edm, class-conditional (label dropout 0.1), on augmented digits:
#      random crops covering 50-100% of the area (--min_crop_frac 0.71) after rescaling by 0.5-1
#      (--random_resize 0.5,1: 8 to 16 pixel sources, blurrier when small). Arms:
#        a  no control conditioning
#        b  crop and size controls summed into the class embedding, ungated (--control_gating False)
#        c  separate, gated controls (crop on at every level; size switched on below sigma 1, fully below 0.2)
#        d  c plus class attention (--class_attention True)
#      (b-d: control dropout 0.1);
#   3. benchmarks/bench_control_digits.py samples (Heun, 18 steps, CFG 2, control "whole image, size 16"), judges
#      (FD, precision, recall, recognized, ink touching the border) over 3 seeds, and runs the leak test (size 8
#      vs 16 on the same seeds: how often the recognized digit changes); tables, grids and a plot in OUT/bench.
# Usage: bash benchmarks/control_digits.sh [--out runs/control_digits] [--minutes 4]
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/control_digits
minutes=4
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    *) echo "usage: bash benchmarks/control_digits.sh [--out DIR] [--minutes M]" >&2; exit 2 ;;
  esac
done
batch=64

source scripts/launcher.sh
source benchmarks/calibrate.sh
$py datasets/digits.py --out_dir "$out/digits" --image_size 16 --split train

common=(--data_dir "$out/digits" --image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2
        --attention_resolutions "" --objective edm --class_cond True --num_classes 10 --class_dropout_prob 0.1
        --lr 2e-3 --batch_size $((batch / ranks)) --ema_rate 0.995 --random_flip False --random_crop True
        --min_crop_frac 0.71 --random_resize 0.5,1)
arm_flags() {  # the arm's flags, into the array `flags`
  case $1 in
    a) flags=() ;;
    b) flags=(--control_cond crop,size --control_dropout_prob 0.1 --control_gating False) ;;
    c) flags=(--control_cond crop,size --control_dropout_prob 0.1) ;;
    d) flags=(--control_cond crop,size --control_dropout_prob 0.1 --class_attention True) ;;
  esac
}

declare -A steps
for arm in a b c d; do  # all calibrations first, back to back
  arm_flags "$arm"
  steps[$arm]=$(calibrated_steps "$out/calibrate/$arm" "$minutes" "$batch" "${common[@]}" "${flags[@]}")
  echo "control_digits: arm $arm trains ${steps[$arm]} steps ($minutes min at its calibrated speed)"
done
for arm in a b c d; do
  arm_flags "$arm"
  "${launch[@]}" scripts/image_train.py "${common[@]}" "${flags[@]}" --max_steps "${steps[$arm]}" \
    --save_interval "${steps[$arm]}" --log_interval 500 --log_dir "$out/$arm" --resume_checkpoint auto
done

OMP_NUM_THREADS=$(nproc) $py benchmarks/bench_control_digits.py --runs_dir "$out" --out_dir "$out/bench"
