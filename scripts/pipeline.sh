#!/usr/bin/env bash
# prep -> train -> eval on a folder of images, for users who do not use `just`.
#
# Usage: scripts/pipeline.sh DATA_DIR [RUN_NAME]
#   DATA_DIR  a folder with one sub-folder per class (Benign/, Malignant/)
#   RUN_NAME  name of the run (default: the name of DATA_DIR)
#
# Outputs: data/<RUN_NAME>-prepared (prepared dataset), runs/<RUN_NAME> (checkpoints, curves,
# threshold.json) and runs/<RUN_NAME>/eval-test/ (metrics, predictions, figures, report.html).
# Paths are relative to the current directory.
#
# Extra options for each stage come from the environment, split on whitespace, e.g.
#   PREP_ARGS="--size 112 --force" TRAIN_ARGS="--weights none --epochs 5 --force" \
#   EVAL_ARGS="--tta" scripts/pipeline.sh ~/isic
# FORCE=1 passes --force to every stage (replace the outputs of an earlier pipeline run).
#
# Stops at the first stage that fails, with that stage's exit code (2: bad input or
# usage, 1: anything else). LESION_BIN overrides the folder of the binaries (default:
# target/release of this checkout, built if missing).
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
  usage >&2
  exit 2
fi
data_dir=$1
if [[ ! -d $data_dir ]]; then
  echo "error: $data_dir is not a folder (expected one sub-folder per class)" >&2
  exit 2
fi
run_name=${2:-$(basename "$(cd "$data_dir" && pwd)")}
# A bare folder name could be taken for a lesion-prep subcommand (`synth`, `verify`).
case $data_dir in
  /* | ./* | ../*) ;;
  *) data_dir=./$data_dir ;;
esac
if [[ -z $run_name || $run_name == */* ]]; then
  echo "error: invalid run name '$run_name'" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${LESION_BIN:-$repo/target/release}
if [[ -z ${LESION_BIN:-} ]]; then
  for b in lesion-prep lesion-train lesion-eval; do
    if [[ ! -x $bin/$b ]]; then
      echo "==> building the release binaries (cargo build --release)"
      (cd "$repo" && cargo build --release --workspace)
      break
    fi
  done
fi
for b in lesion-prep lesion-train lesion-eval; do
  [[ -x $bin/$b ]] || { echo "error: $bin/$b not found" >&2; exit 1; }
done

prepared=data/$run_name-prepared
run=runs/$run_name
# Word splitting of the *_ARGS variables is intended: they hold several options.
read -r -a prep_args <<<"${PREP_ARGS:-}"
read -r -a train_args <<<"${TRAIN_ARGS:-}"
read -r -a eval_args <<<"${EVAL_ARGS:-}"
if [[ ${FORCE:-0} == 1 ]]; then
  prep_args+=(--force)
  train_args+=(--force)
  eval_args+=(--force)
fi

stage() {
  local name=$1
  shift
  echo "==> $name: $*"
  local code=0
  "$@" || code=$?
  if [[ $code -ne 0 ]]; then
    echo "pipeline stopped: $name failed with exit code $code" >&2
    exit "$code"
  fi
}

stage prep "$bin/lesion-prep" "$data_dir" --out "$prepared" "${prep_args[@]}"
stage train "$bin/lesion-train" --data "$prepared" --out "$run" "${train_args[@]}"
stage eval "$bin/lesion-eval" --run "$run" --data "$prepared" "${eval_args[@]}"

split=test
for ((i = 0; i < ${#eval_args[@]}; i++)); do
  case ${eval_args[i]} in
    --split) split=${eval_args[i + 1]:-test} ;;
    --split=*) split=${eval_args[i]#--split=} ;;
  esac
done

echo
echo "pipeline finished:"
echo "  prepared data: $prepared (manifest.json, samples.png)"
echo "  run:           $run (config.json, best/last.safetensors, history.csv, curves.png)"
echo "  threshold:     $run/threshold.json"
echo "  evaluation:    $run/eval-$split (metrics.json, predictions.csv, *.png)"
echo "  report:        $run/eval-$split/report.html"
