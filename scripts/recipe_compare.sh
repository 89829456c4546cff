#!/usr/bin/env bash
# Compares training recipes on ISIC 2017 (binary and 3-class), several seeds each, and prints
# the table of scripts/recipe_table.py (balanced accuracy and AUC with bootstrap intervals,
# training wall time).
#
# Usage: scripts/recipe_compare.sh ISIC_DIR OUT_DIR
#   ISIC_DIR  ../shared/data/isic2017-256 (Benign/, Malignant/, labels.csv)
#   OUT_DIR   created; holds the prepared data, the runs and table.md
#
# Environment (defaults in brackets):
#   RECIPES ["notebook recommended"]  SEEDS ["1 2 3"]  TASKS ["binary 3class"]
#   SIZE [224]  image side for lesion-prep
#   TRAIN_ARGS []  extra lesion-train options for every run (e.g. "--weights none --epochs 10")
#   LESION_BIN [target/release]  folder of the binaries
# Every run is evaluated on the test split; the threshold of binary runs is chosen on
# validation by lesion-eval. Re-running skips runs whose evaluation exists. Recipes alternate
# within each seed so that other load on the machine falls on both alike; train-seconds.txt
# records each run's wall and CPU seconds (user + system, from /usr/bin/time).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
isic=$1
out=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${LESION_BIN:-$repo/target/release}
read -r -a recipes <<<"${RECIPES:-notebook recommended}"
read -r -a seeds <<<"${SEEDS:-1 2 3}"
read -r -a tasks <<<"${TASKS:-binary 3class}"
read -r -a train_args <<<"${TRAIN_ARGS:-}"
size=${SIZE:-224}
mkdir -p "$out"
times=$out/train-seconds.txt
touch "$times"

prepared() {
  local task=$1 dir=$out/prepared-$1-$size
  if [[ ! -f $dir/manifest.json ]]; then
    case $task in
      binary) "$bin/lesion-prep" "$isic" --out "$dir" --size "$size" -q >&2 ;;
      3class)
        [[ -d $out/isic-3class ]] || python3 "$repo/scripts/isic_classes.py" "$isic" "$out/isic-3class" >&2
        "$bin/lesion-prep" "$out/isic-3class" --out "$dir" --size "$size" --malignant melanoma -q >&2 ;;
      *) echo "unknown task $task" >&2; exit 2 ;;
    esac
  fi
  echo "$dir"
}

evals=()
for task in "${tasks[@]}"; do
  data=$(prepared "$task")
  for seed in "${seeds[@]}"; do
    for recipe in "${recipes[@]}"; do
      run=$out/runs/$task-$recipe-seed$seed
      if [[ ! -f $run/eval-test/metrics.json ]]; then
        echo "==> $task $recipe seed $seed" >&2
        /usr/bin/time -f '%e %U %S' -o "$out/time.tmp" \
          "$bin/lesion-train" --data "$data" --out "$run" --recipe "$recipe" --seed "$seed" \
          --force -q "${train_args[@]}"
        read -r wall user sys <"$out/time.tmp"
        echo "$(cd "$run" && pwd) $wall $(echo "$user + $sys" | bc)" >>"$times"
        "$bin/lesion-eval" --run "$run" --data "$data" --force -q >/dev/null
      fi
      evals+=("$run/eval-test")
    done
  done
done
python3 "$repo/scripts/recipe_table.py" --times "$times" "${evals[@]}" | tee "$out/table.md"
