#!/usr/bin/env bash
# Build Horovod 0.28.1 (gloo, PyTorch; no MPI/TensorFlow/MXNet) against the torch already in this venv.
# Horovod 0.28.1 asks for C++14, but torch >= 2.1 headers need C++17: patch both CMakeLists before building.
# Idempotent: does nothing when `import horovod.torch` already works.
#   usage: scripts/build_horovod.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
VERSION=0.28.1
if "$PY" -c "import horovod.torch" 2>/dev/null; then
    echo "horovod: already installed ($("$PY" -c 'import horovod; print(horovod.__version__)'))"
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
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-2}" \
    "$PY" -m pip install -q --no-build-isolation "$src"
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'built')"
