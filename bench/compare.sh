#!/usr/bin/env bash
# Veil's engine against the eager-PyTorch reference, in one run, on the same device and models:
#   bench/compare.sh [VEIL_BINARY] [CONFIG] [DATA_DIR] [PYTHON]
# Runs `veil bench --json` (the attack on one face and 12 MP photos end to end), then
# bench/reference.py on a face region of the same side with the same models and preset, and prints
# both medians and the ratio reference / veil (above 1: Veil is faster).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
veil=${1:-$here/../target/release/veil}
config=${2:-}
data=${3:-$here/../../shared/data}
python=${4:-$here/../.venv/bin/python}
[ -x "$python" ] || python=python3
args=()
[ -n "$config" ] && args+=(--config "$config")
veil_json=$("$veil" "${args[@]}" bench --json --data "$data")
models=$("$veil" "${args[@]}" config show | sed -n 's/^dir = "\(.*\)"$/\1/p' | head -1)
side=$(printf '%s' "$veil_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["face_side"])')
preset=$(printf '%s' "$veil_json" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["preset"])')
portrait=$(ls "$data"/portraits/src/female/*.jpg | head -1)
ref_json=$("$python" "$here/reference.py" --models "$models" --side "$side" --preset "$preset" --photo "$portrait")
printf '%s\n%s\n' "$veil_json" "$ref_json" | "$python" -c '
import json, sys
veil = json.loads(sys.stdin.readline() if False else "")
' 2>/dev/null || true
"$python" - "$veil_json" "$ref_json" <<'PY'
import json, sys
veil, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
v, r = veil["attack_one_face"]["median_s"], ref["attack_one_face"]["median_s"]
print(f"device: veil {veil['device']} | reference {ref['device']}")
print(f"attack, one {veil['face_side']} px face, preset {veil['preset']}: veil {v:.3f} s, eager PyTorch {r:.3f} s, ratio {r / v:.2f}x")
print(f"12 MP photo end to end: 1 face {veil['photo_12mp_one_face']['median_s']:.3f} s, 4 faces {veil['photo_12mp_four_faces']['median_s']:.3f} s")
PY
