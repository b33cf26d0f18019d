#!/usr/bin/env bash
# Build Horovod 0.28.1 (PyTorch; gloo always, NCCL on GPU machines; no MPI/TensorFlow/MXNet) against the torch
# already in this venv. Horovod 0.28.1 asks for C++14, but torch >= 2.1 headers need C++17: patch both CMakeLists
# before building. Idempotent: does nothing when a suitable `horovod.torch` is already installed.
#   usage: scripts/build_horovod.sh [--gpu|--cpu] [PYTHON]   (default: .venv/bin/python; mode: --gpu when torch
#          is a CUDA build). --gpu builds with HOROVOD_GPU_OPERATIONS=NCCL, so GPU gradients are all-reduced by
#          NCCL (over EFA with the aws-ofi-nccl plugin) instead of device -> host -> TCP; ddlc refuses CUDA
#          training with a Horovod that has no NCCL (hvd.nccl_built() false).
set -euo pipefail
MODE=auto
if [[ "${1:-}" == "--gpu" || "${1:-}" == "--cpu" ]]; then MODE=${1#--}; shift; fi
PY=${1:-.venv/bin/python}
VERSION=0.28.1
if [[ $MODE == auto ]]; then
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then MODE=gpu; else MODE=cpu; fi
fi
if [[ $MODE == gpu ]]; then
    WANT="import horovod.torch as hvd, sys; sys.exit(0 if hvd.nccl_built() else 1)"
else
    WANT="import horovod.torch"
fi
# Horovod is installed below with --no-deps (so pip never touches the pinned torch); its own runtime requirements
# come in here, first, so that an installed Horovod missing one is repaired rather than rebuilt.
"$PY" -m pip install -q cloudpickle cffi psutil pyyaml packaging
if "$PY" -c "$WANT" 2>/dev/null; then
    echo "horovod: already installed ($("$PY" -c 'import horovod; print(horovod.__version__)'), mode $MODE)"
    exit 0
fi
command -v cmake >/dev/null || "$PY" -m pip install -q cmake
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$work"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
for file in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    sed -i -E 's/CMAKE_CXX_STANDARD 1[14]/CMAKE_CXX_STANDARD 17/' "$file"
    grep -q "CMAKE_CXX_STANDARD 17" "$file" || sed -i '1i set(CMAKE_CXX_STANDARD 17)' "$file"
done
GPU_FLAGS=()
if [[ $MODE == gpu ]]; then
    # NCCL for allreduce/allgather/broadcast on GPUs; torch's bundled NCCL unless HOROVOD_NCCL_HOME points elsewhere.
    GPU_FLAGS=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}")
fi
env "${GPU_FLAGS[@]}" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-2}" \
    "$PY" -m pip install -q --no-build-isolation --force-reinstall --no-deps "$src"
"$PY" -c "$WANT" || { echo "horovod: built, but not with what mode $MODE needs (NCCL: hvd.nccl_built())" >&2; exit 1; }
"$PY" -c "import horovod.torch as hvd; print('horovod built: nccl', bool(hvd.nccl_built()), 'gloo', bool(hvd.gloo_built()))"
