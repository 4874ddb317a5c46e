#!/usr/bin/env bash
# Veil's engine against the eager-PyTorch reference, in one run, on the same device and models:
#   bench/compare.sh [VEIL_BINARY] [CONFIG] [DATA_DIR] [PYTHON] [BATCH]
# Runs `veil bench --json` (the attack on one face and on BATCH faces at once, and 12 MP photos end to
# end), then bench/reference.py on face regions of the same side with the same models, preset and
# batch, and prints both medians and the ratios reference / veil (above 1: Veil is faster). The two
# JSON reports are kept in $BENCH_OUT (if set) as veil.json and reference.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
veil=${1:-$here/../target/release/veil}
config=${2:-}
data=${3:-$here/../../shared/data}
python=${4:-$here/../.venv/bin/python}
batch=${5:-8}
[ -x "$python" ] || python=python3
args=()
[ -n "$config" ] && args+=(--config "$config")
veil_json=$("$veil" "${args[@]}" bench --json --batch "$batch" --data "$data")
models=$("$veil" "${args[@]}" config show | sed -n 's/^dir = "\(.*\)"$/\1/p' | head -1)
side=$(printf '%s' "$veil_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["face_side"])')
preset=$(printf '%s' "$veil_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["preset"])')
portrait=$(ls "$data"/portraits/src/female/*.jpg | head -1)
ref_json=$("$python" "$here/reference.py" --models "$models" --side "$side" --preset "$preset" --photo "$portrait" --batch "$batch")
if [ -n "${BENCH_OUT:-}" ]; then
  printf '%s\n' "$veil_json" >"$BENCH_OUT/veil.json"
  printf '%s\n' "$ref_json" >"$BENCH_OUT/reference.json"
fi
"$python" - "$veil_json" "$ref_json" <<'PY'
import json, sys
veil, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
v, r = veil["attack_one_face"]["median_s"], ref["attack_one_face"]["median_s"]
print(f"device: veil {veil['device']} | reference {ref['device']}")
print(f"attack, one {veil['face_side']} px face, preset {veil['preset']}: veil {v:.3f} s, eager PyTorch {r:.3f} s, ratio {r / v:.2f}x")
if veil.get("attack_batch") and ref.get("attack_batch"):
    vb, rb = veil["attack_batch"], ref["attack_batch"]
    print(f"attack, {vb['faces']} faces at once: veil {vb['timing']['median_s']:.3f} s ({vb['faces_per_second']:.2f} faces/s), "
          f"eager PyTorch {rb['timing']['median_s']:.3f} s ({rb['faces_per_second']:.2f} faces/s), ratio {rb['timing']['median_s'] / vb['timing']['median_s']:.2f}x")
if veil.get("protect_one_face"):
    print(f"protect_pixels on that face in its photo (context, attack, quantization, report): {veil['protect_one_face']['median_s']:.3f} s")
print(f"12 MP photo end to end: 1 face {veil['photo_12mp_one_face']['median_s']:.3f} s, 4 faces {veil['photo_12mp_four_faces']['median_s']:.3f} s")
PY
