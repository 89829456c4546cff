# lesion — task runner. `just` lists the recipes; every stage is also a plain binary
# (target/release/lesion-{prep,train,eval}) for use in shell scripts.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Cargo features for the binaries, e.g. `just features=cuda train` or `features=metal`.
features := ""
cargo_features := if features == "" { "" } else { "--features " + features }

# Default locations of the artifacts of each stage.
images := "data/synthetic"
prepared := "data/prepared"
run := "runs/default"
# k-fold cross-validation (`just cv`): the prepared folder with folds, the fold runs and their
# aggregate, and extra lesion-prep options for preparing it (e.g. cv_prep_args="--size 64").
prepared_cv := "data/prepared-cv"
cv_dir := "runs/cv"
cv_prep_args := ""

# List the recipes.
default:
    @just --list --unsorted

# Build the release binaries (optionally with `features=cuda|cudnn|metal|mkl|accelerate`).
build:
    cargo build --release --workspace {{cargo_features}}

# Fetch nvcc, cuBLAS and cuDNN from PyPI into target/cuda-pip for `features=cudnn` builds without a CUDA toolkit.
cuda-from-pip *args:
    scripts/cuda-from-pip.sh {{args}}

# Generate the synthetic default dataset (offline, deterministic) into data/synthetic.
synth *args: build
    target/release/lesion-prep synth --out {{images}} {{args}}

# Split, augment and shard an image folder (default: data/synthetic, generated if absent) into data/prepared.
prep *args: build
    if [[ ! -d "{{images}}" && "{{images}}" == data/synthetic ]]; then target/release/lesion-prep synth --out "{{images}}"; fi
    target/release/lesion-prep "{{images}}" --out "{{prepared}}" {{args}}

# Check a prepared folder's shards against its manifest hashes.
verify: build
    target/release/lesion-prep verify {{prepared}}

# Fine-tune ResNet-18 on data/prepared into runs/default (pass e.g. `--weights none`).
train *args: build
    target/release/lesion-train --data {{prepared}} --out {{run}} {{args}}

# Evaluate runs/default on the test split of data/prepared.
eval *args: build
    target/release/lesion-eval --run {{run}} --data {{prepared}} {{args}}

# Classify images with runs/default (e.g. `just predict photos/ --explain heatmaps/`).
predict *args: build
    target/release/lesion-predict --run {{run}} {{args}}

# Serve runs/default over HTTP with a web page at http://127.0.0.1:8080/.
serve *args: build
    target/release/lesion-serve --run {{run}} {{args}}

# k-fold cross-validation on this machine through scripts/cv.sh: prepares images (default
# data/synthetic, generated if absent) with K folds into data/prepared-cv unless that folder already
# has a manifest (whose K must then match), trains fold I into runs/cv/fold-I for every I with the
# given lesion-train options, and aggregates the folds into runs/cv/eval. Examples:
#   just cv K=5 --epochs 3 --weights none
#   just images=../shared/data/isic2017-256 cv_prep_args="--size 64" cv K=5 --epochs 2
# lesion-eval options for the aggregation come from $EVAL_ARGS (e.g. EVAL_ARGS=--force).
# K-fold cross-validation: prep with K folds (once), train every fold, aggregate (`just cv K=5 --epochs 3`).
cv K="5" *args: build
    if [[ ! -d "{{images}}" && "{{images}}" == data/synthetic ]]; then target/release/lesion-prep synth --out "{{images}}"; fi
    k="{{K}}"; k=${k#K=}; if [[ ! -f "{{prepared_cv}}/manifest.json" ]]; then scripts/cv.sh prep "{{images}}" "{{prepared_cv}}" "$k" {{cv_prep_args}}; else have=$(scripts/cv.sh folds "{{prepared_cv}}"); if [[ $have != "$k" ]]; then echo "{{prepared_cv}} has $have folds, not $k: remove it or run with K=$have" >&2; exit 2; fi; fi
    scripts/cv.sh all "{{prepared_cv}}" "{{cv_dir}}" {{args}}

# Whole pipeline on the synthetic dataset, offline: synth -> prep -> train -> eval.
demo: build
    scripts/demo.sh

# Run the tests (add `--include-ignored` for those that read ../shared, as CI does).
test *args:
    cargo test --workspace -- {{args}}

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Ours against PyTorch on this machine: train (2 recipes), inference, end to end; prints RATIO lines.
bench *args:
    scripts/bench.sh {{args}}

# As `bench` without the end-to-end workload (training and inference throughput only).
bench-train:
    scripts/bench.sh --no-end-to-end

# Micro-benchmarks of the CPU kernels against candle's ops (conv|elementwise|network|profile).
bench-kernels *args:
    cargo bench -p lesion --bench kernels -- {{args}}

# Prep throughput on ../shared/data/isic2017-256 against the notebook's Pillow/torch prep.
bench-prep: build
    scripts/bench-prep.sh

# Remove generated data and runs (keeps data/README.md).
clean-data:
    find data -mindepth 1 ! -name README.md -exec rm -rf {} +
    rm -rf runs
