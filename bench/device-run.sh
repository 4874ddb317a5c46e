#!/bin/bash
# The GPU session script, in two parts, each one device call (`PART`):
#   PART=train (default): `bench/compare.sh` (Veil against eager PyTorch, fp32, with the pipeline's stage
#     times in the log) and Veil with channels-last + bf16, on the zoo already committed (speed does not
#     depend on the weights); then the zoo is trained in the time left before END (phase 1 in parallel,
#     then stargan_adv). Writes log.txt, zoo_a.tar and zoo_b.tar to $OUT; the zoo stays in /tmp/zoo.
#   PART=eval: `veil doctor`, then `veil eval` on chunks of the val images with /tmp/zoo (left by a train
#     call on the same, still warm machine) until END, and one chunk in fp16 if time is left. Writes
#     log.txt, eval1-4.json and eval16.json. BENCH=1 runs the train part's bench first (on the new zoo).
#   PROTECT='coarse = 3' (TOML lines) adds a [protect] section to the eval part's configuration, to
#   measure a setting on the 200 faces.
#   NOCLBF=1 skips the channels-last bf16 bench of the train part, NOFUSE=1 its benches with
#   engine.fuse_clean forced on and off (BENCHJSON_fuse, _nofuse; the default is "auto").
#   Training goes on from the committed zoo (INIT_DIR, default models/). MODELS, BATCH, STATE, LR_DECAY go to
#     gpu.sh: MODELS="stargan attgan" trains only those, for the whole time (the rest is kept as it is);
#     STATE=.device/state keeps each model's whole training state, critics included, so the next session
#     goes on from it: the states come back as $OUT/<model>.state.pt (~9 MB each) to put in
#     .device/state/ here. ADV_S=0 skips stargan_adv.
#
# Prepare here, in the git-ignored `.device/` (a new checkout has none): `bash bench/device-prep.sh
#   [LIMIT]` packs the train faces, strips the binary and copies mtcnn, 200 val faces and the bench's
#   photos there.
# What travels must stay under 64 MiB (67.1 MB) with the repository (25.3 MB, the committed zoo): carry
#   train: [".device/celeba128.tar.gz", ".device/bin", ".device/models", ".device/data/portraits", ".device/data/exif-samples"]
#          (66.2 MB with the 10,000-face tar and 13.4 MB of binary, mtcnn and data on 2026-11-27). With training states, drop the bench (SKIPBENCH=1, and
#          carry only the tar and .device/state, then BENCH=1 in the eval part) and make the tar fit:
#          25.3 MB + tar + ~9 MB per state; --limit 8000 gives a ~22 MB tar (room for two states).
#   eval:  [".device/bin", ".device/models", ".device/data"]
# There:   PART=train END=560 bash bench/device-run.sh   (call timeout_s 590)
#          END: seconds after the start by which the part must be done; training gets what the bench
#          leaves, ADV_S seconds of it for stargan_adv. INIT_DIR: where training goes on from, default
#          models/ (the committed zoo); INIT_DIR= starts afresh.
# Here, a dry run on the CPU with the tiny fixtures:
#   OUT=/tmp/out DRY=1 PART=train bash bench/device-run.sh; OUT=/tmp/out2 DRY=1 PART=eval CHUNK=2 bash bench/device-run.sh
# Then: bench/merge_eval.py $OUT/eval[1-4].json, and untar the zoo into models/.
set -u
OUT=${OUT:?}
T0=$(date +%s)
L=$OUT/log.txt
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el)s] $*" | tee -a "$L"; }
if [ -z "${DRY:-}" ]; then
  export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
  PY=python3
else
  PY=.venv/bin/python
fi
V=$PWD/.device/bin/veil
PART=${PART:-train}; END=${END:-560}; CHUNK=${CHUNK:-50}; RUNS=${RUNS:-5}; ADV_S=${ADV_S:-75}
# compare.sh's limit: on the GPU it takes well under a minute; a DRY run on 2 CPU cores needs minutes.
CMP_T=${CMP_T:-$([ -n "${DRY:-}" ] && echo 400 || echo 150)}
Z=/tmp/zoo
toml() { printf '[models]\ndir = "%s"\n%s' "$1" "${2:-}" >"$3"; }
log "start $PART; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"

if [ "$PART" = train ]; then
  Z0=/tmp/zoo0; rm -rf $Z0; mkdir -p $Z0
  if [ -z "${DRY:-}" ]; then cp models/*.pt models/*.json models/manifest.toml $Z0/
  else cp target/fixtures/models/*.pt target/fixtures/models/*.json target/fixtures/models/manifest.toml $Z0/; fi
  cp -a .device/models/mtcnn $Z0/
  toml $Z0 "" /tmp/veil0.toml
  toml $Z0 $'[engine]\nchannels_last = true\nprecision = "bf16"\n' /tmp/veilclbf.toml
  toml $Z0 $'[engine]\nfuse_clean = true\n' /tmp/veilfuse.toml
  toml $Z0 $'[engine]\nfuse_clean = false\n' /tmp/veilnofuse.toml
  [ -n "${SKIPBENCH:-}" ] || {
    log "bench fp32 vs reference (zoo at hand)"
    rm -f /tmp/veil.json /tmp/reference.json
    VEIL_LOG=info,veil::pipeline=debug BENCH_OUT=/tmp timeout $CMP_T bash bench/compare.sh $V /tmp/veil0.toml .device/data $PY 8 >>"$L" 2>&1
    log "compare rc $?"
    for f in /tmp/veil.json /tmp/reference.json; do echo "BENCHJSON $(cat $f 2>/dev/null)" >>"$L"; done
    # The same bench with engine.fuse_clean forced on and off ("auto" in compare.sh's run above:
    # fused for one face on CUDA). engine.parallel_generators is ignored on CUDA (it did not finish).
    [ -n "${NOFUSE:-}" ] || for v in fuse nofuse; do
      log "bench $v"
      echo "BENCHJSON_$v $(timeout 60 $V --config /tmp/veil$v.toml bench --json --batch 8 --runs $RUNS --no-four-faces --data .device/data 2>>"$L")" >>"$L"
      log "bench $v rc $?"
    done
    [ -n "${NOCLBF:-}" ] || {
      log "bench channels-last bf16"
      echo "BENCHJSONCLBF $(timeout 60 $V --config /tmp/veilclbf.toml bench --json --batch 8 --runs $RUNS --no-four-faces --data .device/data 2>>"$L")" >>"$L"
      log "benchclbf rc $?"
    }
  }
  rm -rf $Z; mkdir -p $Z
  if [ -z "${DRY:-}" ]; then
    # What is left before END, less ~20 s to pack, ~80 s of loading and exporting, ADV_S for stargan_adv.
    left=$(( END - $(el) - 20 ))
    p1=$(( left - 80 - ADV_S ))
    if [ $p1 -lt 60 ]; then
      log "only ${left}s left: no training"
    else
      m1=$($PY -c "print(round($p1/60, 2))"); m2=$($PY -c "print(round($ADV_S/60, 2))")
      log "train: phase 1 ${m1} min per model in parallel, stargan_adv ${m2} min"
      [ -n "${STATE:-}" ] && mkdir -p "$STATE"
      MODELS=${MODELS:-} BATCH=${BATCH:-32} STATE=${STATE:-} LR_DECAY=${LR_DECAY:-} \
        timeout $left bash models/train/gpu.sh .device/celeba128.tar.gz $Z "$m1" cuda "$m2" "${INIT_DIR-models}" >>"$L" 2>&1
      log "gpu.sh rc $?"
      for f in ${STATE:-/nonexistent}/*.state.pt; do [ -f "$f" ] && cp "$f" $OUT/; done
    fi
  else
    cp target/fixtures/models/*.pt target/fixtures/models/*.json target/fixtures/models/manifest.toml $Z/
  fi
  for m in stargan ganimation attgan cyclegan faceswap stargan_adv classifier; do
    $PY -c "import json;d=json.load(open('$Z/$m.json'));print('$m', d['parameters'], 'params', d['iterations'], 'iters', d['seconds'], 's', d['bytes'], 'bytes', d.get('adversarial_from_iter',''))" >>"$L" 2>&1
  done
  (cd $Z && tar cf $OUT/zoo_a.tar $(ls manifest.toml *.json *.log 2>/dev/null) $(ls stargan.pt ganimation.pt attgan.pt cyclegan.pt 2>/dev/null)) 2>>"$L"
  (cd $Z && tar cf $OUT/zoo_b.tar $(ls faceswap.pt stargan_adv.pt classifier.pt 2>/dev/null)) 2>>"$L"
  ls -la $OUT >>"$L"
fi

if [ "$PART" = eval ] && [ -n "${BENCH:-}" ] && [ -f $Z/manifest.toml ]; then
  cp -a .device/models/mtcnn $Z/
  toml $Z "" /tmp/veilz.toml
  log "bench fp32 vs reference (the new zoo)"
  rm -f /tmp/veil.json /tmp/reference.json
  VEIL_LOG=info,veil::pipeline=debug BENCH_OUT=/tmp timeout $CMP_T bash bench/compare.sh $V /tmp/veilz.toml .device/data $PY 8 >>"$L" 2>&1
  log "compare rc $?"
  for f in /tmp/veil.json /tmp/reference.json; do echo "BENCHJSON $(cat $f 2>/dev/null)" >>"$L"; done
fi

if [ "$PART" = eval ]; then
  [ -f $Z/manifest.toml ] || { log "no zoo in $Z (the train part ran on another machine?)"; exit 1; }
  cp -a .device/models/mtcnn $Z/
  protect=""; [ -z "${PROTECT:-}" ] || protect=$'[protect]\n'"$PROTECT"$'\n'
  toml $Z "$protect" /tmp/veil.toml
  toml $Z "$protect"$'[engine]\nprecision = "fp16"\n' /tmp/veil16.toml
  log "eval configuration:"; cat /tmp/veil.toml >>"$L"
  log "doctor"; $V --config /tmp/veil.toml doctor >>"$L" 2>&1
  src=$PWD/.device/data/celeba
  for i in 1 2 3 4; do
    d=/tmp/evalset$i; rm -rf $d; mkdir -p $d/val; head -1 $src/attributes.csv >$d/attributes.csv
    tail -n +2 $src/attributes.csv | sed -n "$(( (i-1)*CHUNK + 1 )),$(( i*CHUNK ))p" >>$d/attributes.csv
    tail -n +2 $d/attributes.csv | cut -d, -f2 | while read f; do cp $src/val/$f $d/val/$f; done
  done
  # A chunk starts only with time for it left (the first one's time, once known, else 90 s).
  per=90
  for i in 1 2 3 4; do
    [ $(( $(el) + per )) -lt $END ] || break
    log "eval fp32 chunk $i"; t=$(el)
    timeout $(( END - $(el) )) $V --config /tmp/veil.toml eval --data /tmp/evalset$i --split val --json >$OUT/eval$i.json 2>>"$L"
    log "eval chunk $i rc $?"; per=$(( $(el) - t + 5 ))
  done
  if [ $(( $(el) + per )) -lt $END ]; then
    log "eval fp16 chunk 1"
    timeout $(( END - $(el) )) $V --config /tmp/veil16.toml eval --data /tmp/evalset1 --split val --json >$OUT/eval16.json 2>>"$L"
    log "eval16 rc $?"
  fi
fi
log "done"
