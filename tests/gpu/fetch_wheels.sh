#!/usr/bin/env bash
# Download the wheels tests/gpu/run_gpu.sh installs on an offline GPU machine (Python 3.12, x86-64) into .whl/.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl; mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  fastai==2.8.12 fastcore==2.2.41 fasttransform==0.0.5 fastdownload==0.0.8 plum-dispatch==2.9.0 beartype==0.23.1 fastprogress==1.0.5
ls -la .whl
