#!/usr/bin/env bash
# The whole pipeline on the synthetic default dataset, offline:
#   synth -> prep -> train -> eval
# Usage: scripts/demo.sh [IMAGE_DIR]   (default: generate data/synthetic)
# Outputs: data/synthetic (unless IMAGE_DIR), data/demo-prepared, runs/demo.
# Re-running replaces the demo's own outputs (and only those).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release
for b in lesion-prep lesion-train lesion-eval lesion-predict lesion-serve; do
  [[ -x $bin/$b ]] || { cargo build --release --workspace; break; }
done

images=${1:-data/synthetic}
prepared=data/demo-prepared
run=runs/demo

if [[ $# -eq 0 ]]; then
  echo "==> generating the synthetic dataset in $images"
  "$bin/lesion-prep" synth --out "$images" --per-class 200 --seed 42 --force
fi

echo "==> prep: $images -> $prepared"
"$bin/lesion-prep" "$images" --out "$prepared" --size 112 --views 4 --force

# The training recipe lives in scripts/demo-train.args (a test runs it too).
mapfile -t train_args < <(sed -e 's/#.*//' scripts/demo-train.args | tr -s ' \t' '\n' | grep -v '^$')
echo "==> train: $prepared -> $run (${train_args[*]})"
"$bin/lesion-train" --data "$prepared" --out "$run" "${train_args[@]}" --force

echo "==> eval: $run on the test split"
"$bin/lesion-eval" --run "$run" --data "$prepared" --force

echo
echo "demo finished:"
echo "  images:   $images"
echo "  prepared: $prepared (manifest.json, samples.png)"
echo "  run:      $run (config.json, history.csv, curves.png, best/last.safetensors)"
echo "  report:   $run/eval-test/report.html"
echo "next: lesion-predict --run $run IMAGE...  or  lesion-serve --run $run (web page)"
