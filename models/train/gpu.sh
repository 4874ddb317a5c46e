#!/usr/bin/env bash
# Trains the whole zoo on a GPU machine in one run, every model in its own process at the same time
# (each is far too small to fill the GPU alone), and leaves the exported models, their JSON logs and
# manifest.toml in OUT_DIR.
#
# Here (once):  .venv/bin/python models/train/pack.py --data ../shared/data/celeba --out .device/celeba128.tar.gz
# There:        bash models/train/gpu.sh .device/celeba128.tar.gz /tmp/zoo 4
#               (`.device/` is git-ignored; name it in the device call's `carry`.)
# Then copy OUT_DIR's *.pt, *.json and manifest.toml into models/ and run
#   .venv/bin/python models/train/evaluate.py --models models --data ../shared/data/celeba --split val --samples models/samples
# here to fill in models/README.md's figures.
set -euo pipefail
data=${1:?usage: gpu.sh DATA_TAR OUT_DIR [MINUTES_PER_MODEL] [DEVICE]}
out=${2:?usage: gpu.sh DATA_TAR OUT_DIR [MINUTES_PER_MODEL] [DEVICE]}
minutes=${3:-4}
device=${4:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
pids=()
for m in stargan ganimation attgan cyclegan faceswap stargan_adv classifier; do
  PYTHONUNBUFFERED=1 python3 "$here/train.py" "$m" --device "$device" --data "$data" --out "$out" \
    --batch 32 --width 32 --threads 2 --minutes "$minutes" >"$out/$m.log" 2>&1 &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
tail -n 3 "$out"/*.log
python3 "$here/train.py" manifest --out "$out"
[ "$failed" -eq 0 ] || { echo "gpu.sh: $failed model(s) failed; see $out/*.log" >&2; exit 1; }
