#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh needs on a CUDA machine without network, on a machine with one:
#   bash benchmarks/gpu_prepare.sh
# .whl/: the wheels that machine's Python 3.12 image lacks (diffusers, datasets and the dependencies
# it does not have), at the versions installed here; data/emoji: the emoji dataset (npm). Carry both
# along with the working tree (about 25 MB together). Edit PACKAGES for another image.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(diffusers datasets dill multiprocess importlib_metadata)
mkdir -p .whl
for name in "${PACKAGES[@]}"; do
  version=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$name==$version"
done
[ -d data/emoji ] || python benchmarks/data/emoji.py --out data/emoji
du -sh .whl data/emoji
