#!/usr/bin/env bash
# Prep throughput: `lesion-prep` (release build) against the notebook's own prep path
# (Pillow + torchvision + torch.save, scripts/bench_prep_notebook.py) on the same folder,
# both pinned to 2 threads. Usage: scripts/bench-prep.sh [IMAGE_DIR]
# (default ../shared/data/isic2017-256). The Python side runs when `$BENCH_PYTHON` (default
# python3 if it imports torch, else .venv-bench/bin/python if present) can import torch and
# torchvision; otherwise only our figure is printed.
# Figures are each tool's own in-process images/s (listing to last file written); wall
# time and peak RSS come from /usr/bin/time -v.
set -euo pipefail
cd "$(dirname "$0")/.."

data=${1:-../shared/data/isic2017-256}
threads=${BENCH_THREADS:-2}
py=${BENCH_PYTHON:-python3}
# Without BENCH_PYTHON, and when python3 cannot import torch, the venv of `just bench`
# (.venv-bench, which scripts/bench.sh creates and fills) is used if present.
if [ -z "${BENCH_PYTHON:-}" ] && ! python3 -c 'import torch, torchvision' 2>/dev/null \
    && [ -x .venv-bench/bin/python ]; then
    py=.venv-bench/bin/python
fi
[ -d "$data" ] || { echo "error: $data is not a folder" >&2; exit 2; }

cargo build --release -p lesion-prep >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pin=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge "$threads" ]; then
    pin=(taskset -c "0-$((threads - 1))")
fi

# Warm the page cache so that neither side pays for the first read of the images.
cat "$data"/*/* >/dev/null 2>&1 || true

field() { # field NAME FILE: a value from /usr/bin/time -v output
    grep -F "$1" "$2" | head -1 | awk -F': ' '{print $2}'
}
wall_s() { # h:mm:ss or m:ss.xx -> seconds
    awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }' <<<"$1"
}

/usr/bin/time -v "${pin[@]}" target/release/lesion-prep "$data" --out "$tmp/ours" \
    --threads "$threads" --quiet >"$tmp/ours.out" 2>"$tmp/ours.time"
ours=$(grep -oE '\(([0-9.]+) images/s\)' "$tmp/ours.out" | grep -oE '[0-9.]+' | head -1)
ours_rss=$(($(field 'Maximum resident set size' "$tmp/ours.time") / 1024))
ours_wall=$(wall_s "$(field 'Elapsed (wall clock) time' "$tmp/ours.time")")
head -1 "$tmp/ours.out" >&2

printf '%-44s %10s %8s %13s\n' "pipeline ($threads threads, $(basename "$data"))" "images/s" "wall s" "peak RSS MiB"
printf '%-44s %10s %8s %13s\n' "lesion-prep (u8 shards)" "$ours" "$ours_wall" "$ours_rss"

if "$py" -c 'import torch, torchvision' 2>/dev/null; then
    # Passive waiting: spinning OpenMP workers collapse torch throughput on a busy machine.
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
        /usr/bin/time -v "${pin[@]}" \
        "$py" scripts/bench_prep_notebook.py "$data" --out "$tmp/notebook" --threads "$threads" \
        >"$tmp/nb.out" 2>"$tmp/nb.time" || { cat "$tmp/nb.out" "$tmp/nb.time" >&2; exit 1; }
    nb=$(awk '/^images\/s/ {print $2}' "$tmp/nb.out")
    nb_rss=$(($(field 'Maximum resident set size' "$tmp/nb.time") / 1024))
    nb_wall=$(wall_s "$(field 'Elapsed (wall clock) time' "$tmp/nb.time")")
    printf '%-44s %10s %8s %13s\n' "notebook (Pillow+torchvision, f32 torch.save)" "$nb" "$nb_wall" "$nb_rss"
    echo "RATIO prep $(awk -v a="$ours" -v b="$nb" 'BEGIN { printf "%.2f", a / b }')"
else
    echo "(no torch/torchvision for $py: set BENCH_PYTHON to a Python that has them for the baseline)"
fi
