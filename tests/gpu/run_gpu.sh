#!/usr/bin/env bash
# The GPU benchmark (issue "Speed"): one command on a GPU machine that has torch + torchvision but no internet.
# From the repo root, with wheels in .whl/ (fastai 2.8.12, fastcore, fasttransform, fastdownload, plum-dispatch, beartype,
# fastprogress<1.1 — fetch them here with tests/gpu/fetch_wheels.sh) and the WebP archive in
# .gpu/imagenette2-160-webp75.tgz (57 MB):   bash tests/gpu/run_gpu.sh [OUT_DIR] [BUDGET_SECONDS]
# Prints one table: exp vs fastai (5 epochs, 128 px, seconds from process start to final metric, accuracy), exp's train
# img/s against the model-only ceiling, host syncs per epoch, and the data pipeline's img/s (per-item vs fast path).
# OUT_DIR gets only gpu.txt, bench_gpu.log, table.md, results.json and logs.tgz (the device tool returns at most 8 files);
# run folders, caches and logs live in /tmp/exp-gpu-work. Every step must end within BUDGET_SECONDS (default 560) of
# this script's start: a step that would not fit is skipped and named in the table. With the `device` tool:
#   run(command='bash tests/gpu/run_gpu.sh $OUT', carry=['.gpu', '.whl'], timeout_s=600)
# (--smoke on a CPU: PYTHONPATH=<fastai wheels>:. EXP_DATA=... python3 tests/gpu/bench_gpu.py --smoke --out DIR)
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-/tmp/exp-gpu-bench}}; BUDGET=${2:-560}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
python3 -c "from PIL import features; assert features.check('webp'), 'this Pillow cannot decode WebP'" || exit 1
# The WebP copy stands in for imagenette2-160.tgz: same images and split, smaller (image_extensions lists .webp).
mkdir -p /tmp/mirror && ln -sf "$PWD/.gpu/imagenette2-160-webp75.tgz" /tmp/mirror/imagenette2-160.tgz
export EXP_DATA_MIRROR=/tmp/mirror EXP_DATA=/tmp/exp-data
python3 -c "from exp.nb_01 import *; print(untar_data(URLs.IMAGENETTE_160))" || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; df -h /dev/shm /tmp; nproc; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 tests/gpu/bench_gpu.py --out "$OUT" --work /tmp/exp-gpu-work --deadline $((START + BUDGET)) 2>&1 | tee "$OUT/bench_gpu.log"
