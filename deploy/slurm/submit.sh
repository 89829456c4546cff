#!/usr/bin/env bash
# Queues a k-fold cross-validation on Slurm: an array job with one task per fold
# (cv.sbatch, --array=0-(K-1) with K read from PREPARED's manifest) and the aggregation
# (cv-eval.sbatch), which starts only when every fold has succeeded (afterok).
#
# Usage: deploy/slurm/submit.sh PREPARED CV_DIR [sbatch options for both jobs...]
#   e.g. TRAIN_ARGS="--epochs 10 --force" deploy/slurm/submit.sh /shared/prepared-cv /shared/cv -p gpu
# PREPARED (made by `scripts/cv.sh prep IMAGES PREPARED K`) and CV_DIR must be on a shared
# filesystem. TRAIN_ARGS, EVAL_ARGS and LESION_BIN are passed on to the jobs (see cv.sbatch).
# Prints the two job ids.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
k=$("$repo/scripts/cv.sh" folds "$1")
# The jobs run elsewhere, in whatever folder; absolute paths mean the same there.
PREPARED=$(realpath "$1")
CV_DIR=$(realpath -m "$2")
LESION_REPO=$repo
export PREPARED CV_DIR LESION_REPO
shift 2

echo "+ sbatch --array=0-$((k - 1)) $* $here/cv.sbatch" >&2
folds=$(sbatch --parsable --export=ALL --array="0-$((k - 1))" "$@" "$here/cv.sbatch")
folds=${folds%%;*}
echo "+ sbatch --dependency=afterok:$folds $* $here/cv-eval.sbatch" >&2
agg=$(sbatch --parsable --export=ALL --dependency="afterok:$folds" "$@" "$here/cv-eval.sbatch")
agg=${agg%%;*}
echo "folds: job $folds (array 0-$((k - 1))), aggregation: job $agg -> $CV_DIR/eval"
