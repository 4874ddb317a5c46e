#!/usr/bin/env bash
# Trains the whole zoo on a GPU machine in one run and leaves the exported models in OUT_DIR.
#
# Here (once):  .venv/bin/python models/train/pack.py --data ../shared/data/celeba --out .device/celeba128.tar.gz
# There:        bash models/train/gpu.sh .device/celeba128.tar.gz "$OUT" 1.1
#               (`.device/` is git-ignored; name it in the device call's `carry`.)
# Then copy OUT_DIR's *.pt, *.json and manifest.toml into models/ and run
#   .venv/bin/python models/train/evaluate.py --models models --data ../shared/data/celeba --split val --samples models/samples
# here to fill in models/README.md's figures.
set -euo pipefail
data=${1:?usage: gpu.sh DATA_TAR OUT_DIR [MINUTES_PER_MODEL]}
out=${2:?usage: gpu.sh DATA_TAR OUT_DIR [MINUTES_PER_MODEL]}
minutes=${3:-1.1}
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONUNBUFFERED=1 python3 "$here/train.py" all --device cuda --data "$data" --out "$out" \
  --batch 32 --width 32 --minutes "$minutes" 2>&1 | tee "$out/train.log"
