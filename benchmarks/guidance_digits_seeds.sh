#!/usr/bin/env bash
# ADM's fidelity/diversity trade-off on the digits over several seeds: the main job's diffusion model and
# classifier (run `bash quickstart.sh` first), scripts/classifier_sample.py at each guidance scale and seed
# (360 images, DDIM-50, requested digits 0-9 cycled, as the main job), then the digits judge, summarized as mean
# and standard deviation over seeds and as the paired difference to scale 0 (same seed, same noise).
# Usage: bash benchmarks/guidance_digits_seeds.sh [QUICKSTART_OUT]   (default runs/quickstart; about 12 min)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/quickstart}
seeds="0 100000 200000"
scales="0 0.5 1 2 3 10"
model=$(printf '%s/diffusion/ema_0.995_%06d.pt' "$out" 2500)
classifier=$(printf '%s/classifier/model%06d.pt' "$out" 1500)
for f in "$model" "$classifier"; do
  [ -f "$f" ] || { echo "guidance_digits_seeds.sh: $f not found: run bash quickstart.sh first" >&2; exit 2; }
done

source scripts/launcher.sh
pairs=()
for seed in $seeds; do
  for scale in $scales; do
    folder="$out/guidance_seeds/seed${seed}_scale${scale}"
    "${launch[@]}" scripts/classifier_sample.py --model_path "$model" --classifier_path "$classifier" \
      --classifier_scale "$scale" --classes 0-9 --num_samples 360 --batch_size 120 --seed "$seed" \
      --use_ddim True --timestep_respacing ddim50 --log_dir "$folder" --progress False >/dev/null
    pairs+=("${scale}@${seed}=$folder/samples_360x16x16x3.npz")
  done
done
$py datasets/digits_judge.py --out_dir "$out/guidance_seeds/judge" "${pairs[@]}" >/dev/null
$py benchmarks/seed_summary.py "$out/guidance_seeds/judge/results.json" --column "guidance scale"
