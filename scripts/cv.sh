#!/usr/bin/env bash
# k-fold cross-validation with the lesion binaries: the one place the per-fold command lives
# (`just cv`, deploy/slurm and deploy/k8s all call this script).
#
# Usage:
#   scripts/cv.sh prep IMAGES PREPARED K [lesion-prep args...]
#       lesion-prep IMAGES --out PREPARED --folds K ...
#   scripts/cv.sh fold I PREPARED CV_DIR [lesion-train args...]
#       lesion-train --data PREPARED --fold I --out CV_DIR/fold-I ...   (0 <= I < K)
#   scripts/cv.sh eval PREPARED CV_DIR [lesion-eval args...]
#       lesion-eval --cv CV_DIR --data PREPARED ...
#   scripts/cv.sh all PREPARED CV_DIR [lesion-train args...]
#       every fold in turn (K from PREPARED/manifest.json), then eval; extra lesion-eval
#       options for that last step come from $EVAL_ARGS (split on whitespace)
#   scripts/cv.sh folds PREPARED
#       prints K (for schedulers sizing an array job)
#
# Binaries come from $LESION_BIN (default: <repo>/target/release). Each command is echoed to
# stderr before it runs. Wrong arguments exit 2 with a message; a failing binary's exit code
# is passed on.
set -euo pipefail

help() { sed -n '5,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Wrong arguments: the message and the usage, exit 2.
usage() {
  [[ $# -gt 0 ]] && echo "cv.sh: $*" >&2
  help >&2
  exit 2
}

# Arguments of the right shape that do not fit the data (a fold index out of range, a folder
# without folds): the message alone, exit 2.
reject() {
  echo "cv.sh: $*" >&2
  exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${LESION_BIN:-$repo/target/release}

# Runs a lesion binary from $bin, echoing the command line first.
run() {
  local exe=$bin/$1
  shift
  if [[ ! -x $exe ]]; then
    echo "cv.sh: $exe not found or not executable; build with \`cargo build --release\` or set LESION_BIN" >&2
    exit 1
  fi
  {
    printf '+ %q' "$exe"
    [[ $# -gt 0 ]] && printf ' %q' "$@"
    printf '\n'
  } >&2
  "$exe" "$@"
}

is_count() { [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]; }

# K from PREPARED/manifest.json: lesion-prep writes it pretty-printed, so a top-level key is
# the one at two spaces of indentation (an image's own "fold" is nested deeper).
folds_of() {
  local manifest=$1/manifest.json k
  [[ -f $manifest ]] || reject "$1 is not a prepared folder (no manifest.json)"
  k=$(sed -n -E 's/^  "folds": *([0-9]+),?[[:space:]]*$/\1/p' "$manifest" | head -n 1)
  if [[ -z $k || $k == 0 ]]; then
    reject "$manifest has no folds; prepare it with \`scripts/cv.sh prep IMAGES $1 K\` (lesion-prep --folds K)"
  fi
  echo "$k"
}

# Validates a fold index against PREPARED's K.
check_fold() {
  local i=$1 k
  is_count "$i" || reject "fold index '$i' is not a non-negative integer"
  k=$(folds_of "$2")
  ((i < k)) || reject "fold index $i out of range: $2 has $k folds (0..$((k - 1)))"
}

fold() {
  local i=$1 prepared=$2 cv_dir=$3
  shift 3
  check_fold "$i" "$prepared"
  run lesion-train --data "$prepared" --fold "$i" --out "$cv_dir/fold-$i" "$@"
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
  prep)
    [[ $# -ge 3 ]] || usage "prep needs IMAGES PREPARED K"
    is_count "$3" || reject "K '$3' is not a non-negative integer"
    images=$1 prepared=$2 k=$3
    shift 3
    run lesion-prep "$images" --out "$prepared" --folds "$k" "$@"
    ;;
  fold)
    [[ $# -ge 3 ]] || usage "fold needs I PREPARED CV_DIR"
    fold "$@"
    ;;
  eval)
    [[ $# -ge 2 ]] || usage "eval needs PREPARED CV_DIR"
    prepared=$1 cv_dir=$2
    shift 2
    run lesion-eval --cv "$cv_dir" --data "$prepared" "$@"
    ;;
  all)
    [[ $# -ge 2 ]] || usage "all needs PREPARED CV_DIR"
    prepared=$1 cv_dir=$2
    shift 2
    k=$(folds_of "$prepared")
    read -r -a eval_args <<<"${EVAL_ARGS:-}"
    for ((i = 0; i < k; i++)); do
      fold "$i" "$prepared" "$cv_dir" "$@"
    done
    run lesion-eval --cv "$cv_dir" --data "$prepared" "${eval_args[@]}"
    ;;
  folds)
    [[ $# -eq 1 ]] || usage "folds needs PREPARED"
    folds_of "$1"
    ;;
  -h | --help | help)
    help
    ;;
  *)
    usage "unknown command '$cmd'"
    ;;
esac
