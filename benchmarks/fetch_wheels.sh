#!/usr/bin/env bash
# The wheels benchmarks/device_run.sh needs on a GPU machine whose image has torch, triton and transformers
# but not the rest (Python 3.12, x86-64), downloaded from PyPI into .whl/ (ignored by git; carry it along):
#
#   bash benchmarks/fetch_wheels.sh
#
# Only packages that image lacks are fetched, without their dependencies (all of them are already there).
set -euo pipefail
cd "$(dirname "$0")/.."
WANTED=(diffusers==0.42.1 fpng==0.1.0)  # fpng: imaging.encode_png (lazy_loader, its one need, is there)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${WANTED[@]}"
ls -l .whl
