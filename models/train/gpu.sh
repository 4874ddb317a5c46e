#!/usr/bin/env bash
# Trains the whole zoo on a GPU machine in one run and leaves the exported models, their JSON logs and
# manifest.toml in OUT_DIR. Phase 1 trains six models at once (five when INIT_DIR has a classifier,
# which is then kept as it is), each in its own process, for MINUTES;
# phase 2 fine-tunes phase 1's StarGAN adversarially (the paper's G+D training) into stargan_adv, alone
# on the GPU, for ADV_MINUTES.
#
# Measured on an H200 (2026-11-26): seven processes at once for 4 minutes gave each GAN only 500-1,900
# iterations, about a seventh of the card each, so several models at once save no GPU time. Spend
# the minutes you have on longer runs: MINUTES is per model, and phase 1 takes MINUTES in all.
#
# INIT_DIR (e.g. `models`, the committed zoo) makes every generator go on from its exported weights there
# instead of starting afresh (a fresh critic trains alone for its first 200 iterations), so GPU sessions
# add up; stargan_adv still starts from phase 1's new StarGAN.
#
# Environment:
#   MODELS  the phase 1 models (default: all six; e.g. "stargan attgan" to give two models the whole
#           card). With INIT_DIR, the models not trained are copied from it, so OUT_DIR holds a whole zoo.
#   STATE   a folder of training states (train.py --state): each model goes on from DIR/<model>.state.pt,
#           critics included, when it is there, and leaves its new state there. About 9 MB per GAN.
#           stargan_adv too: with its own state it goes on from that instead of phase 1's StarGAN.
#   BATCH   batch size (default 32).
#   LR_DECAY train.py --lr-decay: the last fraction of each model's time over which its learning rate
#           falls to a tenth (default 0: constant).
#   ADV_MINUTES 0 skips phase 2.
#
# Here (once):  .venv/bin/python models/train/pack.py --data ../shared/data/celeba --out .device/celeba128.tar.gz
# There:        bash models/train/gpu.sh .device/celeba128.tar.gz /tmp/zoo 6 cuda 3 models
#               (`.device/` is git-ignored; name it in the device call's `carry`.)
# Then copy OUT_DIR's *.pt, *.json and manifest.toml into models/ and run
#   .venv/bin/python models/train/evaluate.py --models models --data ../shared/data/celeba --split val --samples models/samples
# here to fill in models/README.md's figures.
set -euo pipefail
usage="usage: gpu.sh DATA_TAR OUT_DIR [MINUTES] [DEVICE] [ADV_MINUTES] [INIT_DIR]"
data=${1:?$usage}
out=${2:?$usage}
minutes=${3:-4}
device=${4:-cuda}
adv_minutes=${5:-$minutes}
init_dir=${6:-}
# ADV_MINUTES of 0 (or 0.0) skips phase 2.
no_adv=$(awk -v m="$adv_minutes" 'BEGIN { print (m + 0 == 0) ? 1 : 0 }')
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
common=(--device "$device" --data "$data" --out "$out" --batch "${BATCH:-32}" --width 32 --threads 2)
[ -n "${STATE:-}" ] && common+=(--state "$STATE")
[ -n "${LR_DECAY:-}" ] && common+=(--lr-decay "$LR_DECAY")
init=()
[ -n "$init_dir" ] && init=(--init-dir "$init_dir")
# The classifier is the judge of every edit-success figure: going on from a zoo, keep its judge, so that
# figures from different sessions measure with the same stick (and the GANs get its share of the GPU).
models=(stargan ganimation attgan cyclegan faceswap classifier)
if [ -n "$init_dir" ] && [ -f "$init_dir/classifier.pt" ] && [ -f "$init_dir/classifier.json" ]; then
  cp "$init_dir/classifier.pt" "$init_dir/classifier.json" "$out/"
  models=(stargan ganimation attgan cyclegan faceswap)
  echo "gpu.sh: classifier kept from $init_dir"
fi
if [ -n "${MODELS:-}" ]; then
  read -r -a models <<<"$MODELS"
  for m in "${models[@]}"; do
    case " stargan ganimation attgan cyclegan faceswap classifier " in
      *" $m "*) ;;
      *) echo "gpu.sh: MODELS: unknown phase 1 model $m" >&2; exit 2 ;;
    esac
  done
  if [ -n "$init_dir" ]; then
    # The rest of the zoo comes as it is, so OUT_DIR is a whole zoo to evaluate and commit.
    for m in stargan ganimation attgan cyclegan faceswap stargan_adv classifier; do
      case " ${models[*]} " in *" $m "*) continue ;; esac
      [ "$m" = stargan_adv ] && [ "$no_adv" = 0 ] && continue
      [ -f "$out/$m.pt" ] && continue
      [ -f "$init_dir/$m.pt" ] && cp "$init_dir/$m.pt" "$init_dir/$m.json" "$out/" && echo "gpu.sh: $m kept from $init_dir"
    done
  fi
fi
pids=()
for m in "${models[@]}"; do
  # GANimation's attention mask saturates at "keep the input" within ~50 iterations (measured on the
  # CPU, 2026-11-26; zoo v0's ganimation is the identity): cap its mean.
  extra=()
  [ "$m" = ganimation ] && extra=(--attention-cap 0.8)
  PYTHONUNBUFFERED=1 python3 "$here/train.py" "$m" "${common[@]}" "${init[@]}" "${extra[@]}" --minutes "$minutes" >"$out/$m.log" 2>&1 &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
if [ "$no_adv" = 1 ]; then
  echo "gpu.sh: phase 2 (stargan_adv) skipped"
elif [ -f "$out/stargan.pt" ]; then
  PYTHONUNBUFFERED=1 python3 "$here/train.py" stargan_adv "${common[@]}" --minutes "$adv_minutes" \
    --init "$out/stargan.pt" --adv-warmup 0 >"$out/stargan_adv.log" 2>&1 || failed=$((failed + 1))
else
  failed=$((failed + 1))
fi
tail -n 3 "$out"/*.log
python3 "$here/train.py" manifest --out "$out"
[ "$failed" -eq 0 ] || { echo "gpu.sh: $failed model(s) failed; see $out/*.log" >&2; exit 1; }
