#!/usr/bin/env bash
# `just bench`: our pipeline against PyTorch on the same machine, same threads.
#
# Usage: scripts/bench.sh [--no-end-to-end]
#   1. train-frozen  training, notebook recipe (stem-layer2 frozen), batch 32, 224 px
#   2. train-all     training, all layers
#   3. infer         eval-mode inference
#      each: lesion-bench vs scripts/bench_torch.py (NCHW) vs bench_torch.py --channels-last,
#      one process per run, sides interleaved, BENCH_REPEATS times; figures are medians.
#   4. end-to-end    (skipped by --no-end-to-end, i.e. `just bench-train`, and by BENCH_QUICK=1)
#      lesion-prep + lesion-train --weights none --epochs 3 --patience 100 + lesion-eval on
#      the test split, against scripts/notebook_torch.py --epochs 3; wall time and peak RSS.
# Ends with `RATIO <workload> <ours/PyTorch>` lines (end-to-end: PyTorch wall / ours),
# `RATIO_CL <workload> <ours/PyTorch channels-last>` and `RSS_RATIO end-to-end <ours/PyTorch>`.
#
# Environment:
#   BENCH_REPEATS=3         runs of each side per workload (workloads 1-3)
#   BENCH_ITERS=5           timed iterations per run, after BENCH_WARMUP=2 untimed ones (the
#                           first steps of both sides grow their heaps and caches)
#   BENCH_QUICK=1           smoke run: 1 repeat, 2 iterations, no end-to-end
#   BENCH_THREADS=2         threads on both sides (RAYON/OMP/MKL_NUM_THREADS, torch, taskset)
#   BENCH_BATCH=32 BENCH_SIZE=224
#   BENCH_DATA=../shared/data/isic2017-256   end-to-end image folder
#   BENCH_EPOCHS=3          end-to-end epochs
#   BENCH_E2E_REPEATS=1     end-to-end runs of each side (about 15 min per pair on 2 AVX2
#                           cores), alternating which side goes first; the RATIO is then the
#                           median of the per-pair ratios
#   BENCH_TRAIN_ARGS=""     extra options for our end-to-end lesion-train, split on whitespace
#                           (e.g. "--winograd-4x4"); BENCH_REPEATS=0 runs the end to end alone
#   BENCH_DEVICE=cpu        cpu or cuda (both sides); BENCH_FEATURES=cuda[,cudnn] for our build
#   BENCH_TF32=0            on CUDA both sides compute in full f32 (NVIDIA_TF32_OVERRIDE=0, our
#                           default); 1 leaves each side on its libraries' defaults (TF32
#                           convolutions on Ampere and later: PyTorch's default, ours with
#                           LESION_TF32=1)
#   BENCH_PYTHON=python     use this Python (must import torch, torchvision) instead of the venv
#   BENCH_VENV=.venv-bench  venv created and filled with `pip install torch torchvision
#                           scikit-learn pillow` when torch is missing (about 3 GB download,
#                           5.6 GB installed: PyPI's torch wheel is the CUDA build)
#   BENCH_NO_INSTALL=1      install nothing (no pip, no apt-get: for offline machines); without
#                           torch only our side runs, without GNU time RSS comes from Python
#   BENCH_NO_BUILD=1        skip `cargo build` (benchmark the binaries already built)
#   BENCH_OMP_WAIT_POLICY=PASSIVE  OpenMP wait policy of the PyTorch side (spinning OpenMP
#                           workers halve torch's throughput when other work shares the cores)
# Raw results (JSON lines, logs) go to target/bench/<date-time>/ (also target/bench/latest).
set -euo pipefail
cd "$(dirname "$0")/.."

end_to_end=1
for arg in "$@"; do
    case $arg in
        --no-end-to-end) end_to_end=0 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

repeats=${BENCH_REPEATS:-3}
warmup=${BENCH_WARMUP:-2}
iters=${BENCH_ITERS:-5}
threads=${BENCH_THREADS:-2}
batch=${BENCH_BATCH:-32}
size=${BENCH_SIZE:-224}
data=${BENCH_DATA:-../shared/data/isic2017-256}
epochs=${BENCH_EPOCHS:-3}
device=${BENCH_DEVICE:-cpu}
venv=${BENCH_VENV:-.venv-bench}
omp_wait=${BENCH_OMP_WAIT_POLICY:-PASSIVE}
e2e_repeats=${BENCH_E2E_REPEATS:-1}
if [[ ! $e2e_repeats =~ ^[1-9][0-9]*$ ]]; then
    echo "error: BENCH_E2E_REPEATS must be a positive integer, got '$e2e_repeats'" >&2
    exit 2
fi
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    repeats=1
    iters=2
    end_to_end=0
fi

out=target/bench/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
ln -sfn "$(basename "$out")" target/bench/latest
results=$out/results.jsonl
log=$out/bench.log
: >"$results"
note() { echo "bench: $*" >&2; }

# --- PyTorch: system/BENCH_PYTHON, else the venv (created and filled if needed) -------------
has_torch() { "$1" -c 'import torch, torchvision' >/dev/null 2>&1; }
py=""
if [[ -n ${BENCH_PYTHON:-} ]]; then
    has_torch "$BENCH_PYTHON" && py=$BENCH_PYTHON
elif [[ -x $venv/bin/python ]] && has_torch "$venv/bin/python"; then
    py=$venv/bin/python
elif [[ ${BENCH_NO_INSTALL:-0} != 1 ]]; then
    if [[ ! -x $venv/bin/python ]]; then
        note "creating $venv"
        python3 -m venv "$venv" || note "could not create $venv (python3 -m venv failed)"
    fi
    if [[ -x $venv/bin/pip ]]; then
        note "installing torch torchvision scikit-learn pillow into $venv (about 3 GB)"
        start=$(date +%s)
        if "$venv/bin/pip" install --quiet torch torchvision scikit-learn pillow >&2; then
            note "pip install took $(($(date +%s) - start)) s, $venv is $(du -sh "$venv" | cut -f1)"
        else
            note "pip install failed"
        fi
        has_torch "$venv/bin/python" && py=$venv/bin/python
    fi
fi
if [[ -z $py ]]; then
    note "PyTorch is not available: running our side alone (no RATIO lines)"
fi

# --- /usr/bin/time -v for peak RSS (Debian's `time`), else a Python getrusage wrapper --------
gnu_time() { /usr/bin/time -v -o /dev/null true >/dev/null 2>&1; }
if ! gnu_time && [[ ${BENCH_NO_INSTALL:-0} != 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    note "installing Debian's time package for /usr/bin/time -v"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq time >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq time >/dev/null 2>&1; } ||
        true
fi
# measure NAME CMD...: runs CMD (stdout to $out/NAME.out, stderr to $out/NAME.err); sets
# wall_s (seconds) and rss_mib (peak RSS of CMD, MiB). Returns CMD's exit status.
measure() {
    local name=$1 start end rc=0
    shift
    start=$(date +%s.%N)
    if gnu_time; then
        /usr/bin/time -v -o "$out/$name.time" "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
    else
        python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    f.write(f"Maximum resident set size (kbytes): {kib}\n")
sys.exit(rc)' "$out/$name.time" "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
    fi
    end=$(date +%s.%N)
    wall_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    rss_mib=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' \
        "$out/$name.time" 2>/dev/null || echo 0)
    return "$rc"
}

# --- build -----------------------------------------------------------------------------
pkgs=(lesion-bench lesion-prep lesion-train)
[[ -f crates/eval/Cargo.toml ]] && pkgs+=(lesion-eval)
build=(cargo build --release --quiet)
for p in "${pkgs[@]}"; do
    build+=(-p "$p")
    if [[ -n ${BENCH_FEATURES:-} ]]; then
        IFS=, read -r -a feats <<<"$BENCH_FEATURES"
        for f in "${feats[@]}"; do build+=(--features "$p/$f"); done
    fi
done
if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
    note "BENCH_NO_BUILD=1: using the binaries in target/release as they are"
else
    note "building: ${build[*]}"
    "${build[@]}"
fi
bin=target/release

pin=()
if command -v taskset >/dev/null && [[ $(nproc) -ge $threads ]]; then
    pin=(taskset -c "0-$((threads - 1))")
fi
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
if [[ $device == cuda* ]]; then
    if [[ ${BENCH_TF32:-0} == 1 ]]; then
        export LESION_TF32=1
        unset NVIDIA_TF32_OVERRIDE
    else
        export NVIDIA_TF32_OVERRIDE=0
    fi
fi
torch_env=(env OMP_WAIT_POLICY="$omp_wait")

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc --all) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
    echo "torch: $([[ -n $py ]] && "$py" -c 'import torch; print(torch.__version__)' || echo none)"
    echo "settings: device $device${NVIDIA_TF32_OVERRIDE:+ (NVIDIA_TF32_OVERRIDE=$NVIDIA_TF32_OVERRIDE)}${LESION_TF32:+ (TF32 allowed)}${BENCH_TRAIN_ARGS:+, end-to-end lesion-train $BENCH_TRAIN_ARGS}, $threads threads, batch $batch, ${size} px, $repeats repeats x $iters iters (+$warmup warm-up), PyTorch OMP_WAIT_POLICY=$omp_wait, end to end x $e2e_repeats"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/header.txt"

# --- workloads 1-3 -----------------------------------------------------------------------
common=(--batch-size "$batch" --size "$size" --warmup "$warmup" --iters "$iters"
    --threads "$threads" --device "$device")
run_side() { # run_side SIDE WORKLOAD: one process, its JSON line appended to $results
    local side=$1 w=$2 cmd
    case $side in
        ours) cmd=("$bin/lesion-bench" "$w" "${common[@]}") ;;
        pytorch) cmd=("${torch_env[@]}" "$py" scripts/bench_torch.py "$w" "${common[@]}") ;;
        pytorch-cl) cmd=("${torch_env[@]}" "$py" scripts/bench_torch.py "$w" "${common[@]}" --channels-last) ;;
    esac
    local ips
    if "${pin[@]}" "${cmd[@]}" >"$out/last.json" 2>>"$log" && grep '^{' "$out/last.json" >>"$results"; then
        ips=$(grep -o '"images_per_s_median": *[0-9.]*' "$out/last.json" | grep -o '[0-9.]*$')
        printf '  %-11s %-13s %6.1f img/s\n' "$side" "$w" "$ips" >&2
    else
        note "$side $w failed (see $log)"
    fi
}
sides=(ours)
[[ -n $py ]] && sides+=(pytorch pytorch-cl)
for ((r = 0; r < repeats; r++)); do
    note "repeat $((r + 1))/$repeats"
    for w in train-frozen train-all infer; do
        # Rotate the order of the sides every repeat so that none always runs first.
        for ((k = 0; k < ${#sides[@]}; k++)); do
            run_side "${sides[(k + r) % ${#sides[@]}]}" "$w"
        done
    done
done

# --- workload 4: end to end ---------------------------------------------------------------
e2e_json=""
# e2e_tag R: the suffix of repeat R's log files and the words for its messages (both empty
# when there is one repeat).
e2e_tag() {
    sfx="" label=""
    if ((e2e_repeats > 1)); then
        sfx=".r$(($1 + 1))" label=" (repeat $(($1 + 1))/$e2e_repeats)"
    fi
}
# e2e_ours R: our pipeline once (repeat R); sets ours_json (null if a stage failed).
e2e_ours() {
    local r=$1 work=$out/e2e sfx label ours_wall=0 ours_rss=0 detail="" ok=1 acc
    e2e_tag "$r"
    rm -rf "$work"
    mkdir -p "$work"
    step() { # step NAME CMD...: one measured stage of our pipeline
        local name=$1
        shift
        note "ours: $name$label"
        if ! measure "e2e-$name$sfx" "${pin[@]}" "$@"; then
            note "our $name failed:"
            tail -5 "$out/e2e-$name$sfx.err" >&2
            return 1
        fi
        ours_wall=$(awk -v a="$ours_wall" -v b="$wall_s" 'BEGIN { print a + b }')
        ((rss_mib > ours_rss)) && ours_rss=$rss_mib
        detail+="$name ${wall_s}s/${rss_mib}MiB "
    }
    step prep "$bin/lesion-prep" "$data" --out "$work/prepared" --threads "$threads" --quiet &&
        step train "$bin/lesion-train" --data "$work/prepared" --out "$work/run" \
            --weights none --epochs "$epochs" --patience 100 --device "$device" --quiet \
            "${train_args[@]}" ||
        ok=0
    if [[ $ok == 1 ]]; then
        if [[ -x $bin/lesion-eval ]]; then
            step eval "$bin/lesion-eval" --run "$work/run" --data "$work/prepared" \
                --device "$device" --quiet || ok=0
            acc=$(python3 -c 'import json, sys
print(round(json.load(open(sys.argv[1]))["at_default_threshold"]["accuracy"], 4))' \
                "$work/run/eval-test/metrics.json" 2>/dev/null || echo '?')
            detail+="test_acc $acc"
        else
            detail+="(no lesion-eval binary: test evaluation skipped)"
        fi
    fi
    rm -rf "$work" # the prepared shards and run of the benchmark are not kept
    ours_json=null
    if [[ $ok == 1 ]]; then
        ours_json=$(printf '{"wall_s": %s, "peak_rss_mib": %s, "detail": "%s"}' \
            "$ours_wall" "$ours_rss" "$detail")
    fi
    return 0
}
# e2e_pytorch R: the notebook script once (repeat R); sets pt_json (null if it did not run).
e2e_pytorch() {
    local r=$1 sfx label name nb_detail nb_acc
    e2e_tag "$r"
    name=e2e-notebook$sfx
    pt_json=null
    [[ -n $py ]] || return 0
    note "PyTorch: notebook_torch.py$label"
    if measure "$name" "${pin[@]}" "${torch_env[@]}" "$py" scripts/notebook_torch.py \
        "$data" --epochs "$epochs" --threads "$threads" --device "$device"; then
        nb_detail=$(grep '^wall_s' "$out/$name.out" | sed 's/^wall_s [0-9.]* //')
        nb_acc=$(awk '/^test_acc/ { print $2 }' "$out/$name.out")
        pt_json=$(printf '{"wall_s": %s, "peak_rss_mib": %s, "detail": "in-process %s, test_acc %s (weights none)"}' \
            "$wall_s" "$rss_mib" "$nb_detail" "$nb_acc")
    else
        note "notebook_torch.py failed:"
        tail -5 "$out/$name.err" >&2
    fi
    return 0
}
if [[ $end_to_end == 1 && ! -d $data ]]; then
    note "$data is not a folder: skipping end to end"
    end_to_end=0
fi
if [[ $end_to_end == 1 ]]; then
    note "end to end on $data ($epochs epochs, $e2e_repeats repeat(s)); warming the page cache"
    cat "$data"/*/* >/dev/null 2>&1 || true
    read -r -a train_args <<<"${BENCH_TRAIN_ARGS:-}"
    [[ ${#train_args[@]} -gt 0 ]] && note "our lesion-train gets: ${train_args[*]}"
    e2e_json=$out/e2e.jsonl
    : >"$e2e_json"
    for ((r = 0; r < e2e_repeats; r++)); do
        # Alternate which side runs first, as in workloads 1-3: the machine's speed drifts.
        if ((r % 2 == 0)); then
            e2e_ours "$r" && e2e_pytorch "$r"
        else
            e2e_pytorch "$r" && e2e_ours "$r"
        fi
        printf '{"ours": %s, "pytorch": %s}\n' "$ours_json" "$pt_json" >>"$e2e_json"
    done
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/header.txt"
echo
python3 scripts/bench_summary.py "$results" ${e2e_json:+"$e2e_json"} | tee "$out/summary.txt"
