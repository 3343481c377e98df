# Sourced by the equal-wall-clock digits benchmarks (after scripts/launcher.sh): calibrated_steps DIR MINUTES BATCH
# FLAGS... trains 120 steps of image_train.py with FLAGS into DIR (once; a rerun reuses it) and prints the step
# count that fills MINUTES at the images/s of its last 60 steps.
calibrated_steps() {
  local dir=$1 minutes=$2 batch=$3
  shift 3
  if [ ! -f "$dir/model000120.pt" ]; then
    "${launch[@]}" scripts/image_train.py "$@" --max_steps 120 --save_interval 120 --log_interval 60 \
      --log_dir "$dir" >/dev/null 2>&1
  fi
  $py -c 'import csv, sys; rows = list(csv.DictReader(open(sys.argv[1])))
print(int(float(sys.argv[2]) * 60 * float(rows[-1]["images_per_sec"]) / int(sys.argv[3])))' \
    "$dir/progress.csv" "$minutes" "$batch"
}
