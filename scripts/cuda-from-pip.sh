#!/usr/bin/env bash
# A CUDA build environment from NVIDIA's PyPI wheels, for machines without a CUDA toolkit
# (no root, no GPU needed: the build only compiles and links).
#
# Usage: scripts/cuda-from-pip.sh [DIR]      (default: target/cuda-pip)
#        source DIR/env.sh
#        cargo build --release --features lesion-train/cudnn -p lesion-train
#
# Fetches nvcc, the CUDA runtime headers, cuBLAS, cuRAND, NVRTC and cuDNN for CUDA
# ${CUDA_MAJOR:-13}.${CUDA_MINOR:-0} (about 1.2 GB of wheels), unpacks them into one toolkit
# tree and writes DIR/env.sh (CUDA_ROOT, PATH, CUDA_COMPUTE_CAP). candle links the CUDA
# libraries dynamically, so the linker needs the driver's libcuda.so too: without a driver
# here, a stub with the driver API's symbols is built from cudarc's bindings (the real
# library is loaded at run time on the GPU machine). Set CUDA_COMPUTE_CAP (default 90,
# Hopper) to the GPU's compute capability times ten: nvidia-smi is not there to ask.
#
# The binaries need the same major CUDA version's libraries on the GPU machine at run time
# (a PyTorch cu13x install has them: add its site-packages/nvidia/*/lib to LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-target/cuda-pip}")
major=${CUDA_MAJOR:-13}
minor=${CUDA_MINOR:-0}
mkdir -p "$dir/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir/wheels" \
    "nvidia-cuda-nvcc==$major.$minor.*" "nvidia-cuda-runtime==$major.$minor.*" \
    "nvidia-cuda-crt==$major.$minor.*" "nvidia-nvvm==$major.$minor.*" \
    "nvidia-cuda-cccl==$major.$minor.*" "nvidia-cublas==$major.$minor.*" \
    "nvidia-cuda-nvrtc==$major.$minor.*" nvidia-curand "nvidia-cudnn-cu$major"
rm -rf "$dir/tree"
for w in "$dir"/wheels/*.whl; do
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$w" "$dir/tree"
done
root=$dir/tree/nvidia/cu$major
# zipfile drops the executable bits.
[[ -f $root/bin/nvcc ]] || { echo "error: no nvcc in $root/bin" >&2; exit 1; }
chmod +x "$root"/bin/* "$root"/nvvm/bin/*
ln -sfn lib "$root/lib64"
cd "$root/lib"
# Unversioned names for the linker (-lcublas, ...), and cuDNN beside the rest.
for f in "$dir"/tree/nvidia/cudnn/lib/*.so.*; do ln -sf "$f" .; done
for f in *.so.*; do
    base=${f%%.so.*}
    [[ -e $base.so ]] || ln -s "$f" "$base.so"
done
if [[ ! -e libcuda.so ]]; then
    sys=$(ls ~/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | tail -1)
    [[ -n $sys ]] || { echo "error: run 'cargo fetch' first (cudarc's sources give the stub's symbols)" >&2; exit 1; }
    grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^\s+fn //; s/\($//' | sort -u |
        awk '{ print "void " $1 "(void) {}" }' >"$dir/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o libcuda.so "$dir/libcuda-stub.c"
fi
cat >"$dir/env.sh" <<EOF
export CUDA_ROOT=$root CUDA_HOME=$root CUDA_PATH=$root
export PATH=$root/bin:\$PATH
export LIBRARY_PATH=$root/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
EOF
"$root/bin/nvcc" --version | tail -2
echo "now: source $dir/env.sh"
