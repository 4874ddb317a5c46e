#!/bin/bash
# The GPU session script: train the zoo (phase 1 in parallel, then stargan_adv), `veil doctor`, `veil eval`
# on 200 val images in 4 chunks, `bench/compare.sh` (Veil against eager PyTorch) and fp16, in one device
# call, writing at most 8 files to $OUT (log.txt, zoo_a.tar, zoo_b.tar, eval1-4.json, eval16.json).
#
# Prepare here, in the git-ignored `.device/` (carry it: run's carry = [".device"]):
#   .venv/bin/python models/train/pack.py --data ../shared/data/celeba --out .device/celeba128.tar.gz
#   mkdir -p .device/bin && strip -o .device/bin/veil target/release/veil
#   .device/data/celeba/{attributes.csv,val/} with the first 200 val rows and their JPEGs,
#   .device/data/portraits/src/{female,male}/ and .device/data/exif-samples/jpg/mobile/jolla.jpg (for bench),
#   cp -a models/mtcnn .device/models/
# There:   bash bench/device-run.sh   (MIN: minutes of phase 1, ADV_MIN: of stargan_adv after it; STOP:
#          seconds after which no further eval chunk starts. Leave room in the 600 s call limit.
#          INIT_DIR: where training goes on from, default models/ (the committed zoo); INIT_DIR= starts
#          afresh.)
# Here, a dry run on the CPU with the tiny fixtures: OUT=/tmp/out DRY=1 CHUNK=2 RUNS=1 bash bench/device-run.sh
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
MIN=${MIN:-4}; CHUNK=${CHUNK:-50}; LIMIT16=${LIMIT16:-50}; RUNS=${RUNS:-5}; STOP=${STOP:-470}
# compare.sh's limit: on the GPU it takes well under a minute; a DRY run on 2 CPU cores needs minutes.
CMP_T=${CMP_T:-$([ -n "${DRY:-}" ] && echo 400 || echo 150)}
log "start; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
Z=/tmp/zoo; rm -rf $Z; mkdir -p $Z
if [ -z "${DRY:-}" ]; then
  log "train ${MIN} min per model, in parallel"
  bash models/train/gpu.sh .device/celeba128.tar.gz $Z "$MIN" cuda "${ADV_MIN:-$MIN}" "${INIT_DIR-models}" >>"$L" 2>&1; log "gpu.sh rc $?"
else
  cp target/fixtures/models/*.pt target/fixtures/models/*.json target/fixtures/models/manifest.toml $Z/
fi
for m in stargan ganimation attgan cyclegan faceswap stargan_adv classifier; do
  $PY -c "import json;d=json.load(open('$Z/$m.json'));print('$m', d['parameters'], 'params', d['iterations'], 'iters', d['seconds'], 's', d['bytes'], 'bytes', d.get('adversarial_from_iter',''))" >>"$L" 2>&1
done
(cd $Z && tar cf $OUT/zoo_a.tar manifest.toml *.json $(ls *.log 2>/dev/null) stargan.pt ganimation.pt attgan.pt cyclegan.pt) 2>>"$L"
(cd $Z && tar cf $OUT/zoo_b.tar faceswap.pt stargan_adv.pt classifier.pt) 2>>"$L"
ls -la $OUT >>"$L"
cp -a .device/models/mtcnn $Z/
printf '[models]\ndir = "%s"\n' $Z >/tmp/veil.toml
printf '[models]\ndir = "%s"\n[engine]\nprecision = "fp16"\n' $Z >/tmp/veil16.toml
printf '[models]\ndir = "%s"\n[engine]\nchannels_last = true\n' $Z >/tmp/veilcl.toml
printf '[models]\ndir = "%s"\n[engine]\nchannels_last = true\nprecision = "bf16"\n' $Z >/tmp/veilclbf.toml
log "doctor"; $V --config /tmp/veil.toml doctor >>"$L" 2>&1
# Four chunks of the 200 val images, so a slow eval still leaves whole chunks behind.
src=$PWD/.device/data/celeba
for i in 1 2 3 4; do
  d=/tmp/evalset$i; rm -rf $d; mkdir -p $d/val; head -1 $src/attributes.csv >$d/attributes.csv
  tail -n +2 $src/attributes.csv | sed -n "$(( (i-1)*CHUNK + 1 )),$(( i*CHUNK ))p" >>$d/attributes.csv
  tail -n +2 $d/attributes.csv | cut -d, -f2 | while read f; do cp $src/val/$f $d/val/$f; done
done
evalchunk() {
  log "eval fp32 chunk $1"
  timeout 150 $V --config /tmp/veil.toml eval --data /tmp/evalset$1 --split val --json >$OUT/eval$1.json 2>>"$L"; log "eval chunk $1 rc $?"
}
evalchunk 1
[ -n "${SKIPBENCH:-}" ] || {
log "bench fp32 vs reference"
rm -f /tmp/veil.json /tmp/reference.json
BENCH_OUT=/tmp timeout $CMP_T bash bench/compare.sh $V /tmp/veil.toml .device/data $PY 8 >>"$L" 2>&1; log "compare rc $?"
for f in /tmp/veil.json /tmp/reference.json; do echo "BENCHJSON $(cat $f)" >>"$L"; done
}
for i in 2 3 4; do
  [ $(el) -lt $STOP ] && evalchunk $i
done
[ -n "${SKIPBENCH:-}" ] || {
log "bench fp16"
echo "BENCHJSON16 $(timeout 60 $V --config /tmp/veil16.toml bench --json --batch 8 --runs $RUNS --data .device/data 2>>"$L")" >>"$L"; log "bench16 rc $?"
log "bench channels-last, fp32 and bf16"
echo "BENCHJSONCL $(timeout 60 $V --config /tmp/veilcl.toml bench --json --batch 8 --runs $RUNS --no-four-faces --data .device/data 2>>"$L")" >>"$L"; log "benchcl rc $?"
echo "BENCHJSONCLBF $(timeout 60 $V --config /tmp/veilclbf.toml bench --json --batch 8 --runs $RUNS --no-four-faces --data .device/data 2>>"$L")" >>"$L"; log "benchclbf rc $?"
}
if [ $(el) -lt $(( STOP + 20 )) ]; then
  log "eval fp16 chunk 1"
  timeout 60 $V --config /tmp/veil16.toml eval --data /tmp/evalset1 --split val --json >$OUT/eval16.json 2>>"$L"; log "eval16 rc $?"
fi
log "done"
