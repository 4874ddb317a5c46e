#!/usr/bin/env bash
# Prepares the git-ignored `.device/` that bench/device-run.sh reads on the GPU machine, from a set-up
# checkout (`make setup`; it builds the binary itself, without HEIC) and the data in ../shared/data (read in place, packed or copied only into
# `.device/`, which is never committed):
#   .device/celeba128.tar.gz      the first LIMIT train faces (and the rest of the splits) at 128 px (pack.py)
#   .device/bin/veil              the release binary (built without HEIC: no libheif there), stripped
#   .device/models/mtcnn/         the face detector's weights
#   .device/data/celeba/          attributes.csv with the first 200 val rows, and their JPEGs (eval part)
#   .device/data/portraits/src/   the portraits veil bench pastes into its 12 MP photos
#   .device/data/exif-samples/jpg/mobile/jolla.jpg   the bench photos' background
# Then prints what a call would carry, against the 64 MiB limit.
#
#   bash bench/device-prep.sh [LIMIT]      (LIMIT default 10000; 8000 leaves room for two training states)
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-10000}
data=../shared/data
# The GPU machine has no libheif, so its binary is built without HEIC (`make build` turns HEIC on
# wherever libheif is installed; a later `make build` here turns it on again).
make build FEATURES=
if ldd target/release/veil | grep -q libheif; then
  echo "device-prep: target/release/veil needs libheif, which the GPU machine lacks" >&2; exit 1
fi
[ -d models/mtcnn ] || { echo "device-prep: models/mtcnn is missing: run make setup" >&2; exit 1; }
[ -f "$data/celeba/attributes.csv" ] || { echo "device-prep: $data/celeba/attributes.csv is missing" >&2; exit 1; }
mkdir -p .device/bin .device/models .device/data/celeba/val .device/data/portraits/src .device/data/exif-samples/jpg/mobile
git check-ignore -q .device || { echo "device-prep: .device/ is not git-ignored" >&2; exit 1; }
if [ ! -f .device/celeba128.tar.gz ] || [ "${REPACK:-}" = 1 ]; then
  .venv/bin/python models/train/pack.py --data "$data/celeba" --out .device/celeba128.tar.gz --limit "$limit"
fi
strip -o .device/bin/veil target/release/veil
rm -rf .device/models/mtcnn && cp -a models/mtcnn .device/models/
cp -a "$data/portraits/src/female" "$data/portraits/src/male" .device/data/portraits/src/
cp "$data/exif-samples/jpg/mobile/jolla.jpg" .device/data/exif-samples/jpg/mobile/
head -1 "$data/celeba/attributes.csv" >.device/data/celeba/attributes.csv
awk -F, 'NR > 1 && $1 == "val" { print; if (++n == 200) exit }' "$data/celeba/attributes.csv" >>.device/data/celeba/attributes.csv
tail -n +2 .device/data/celeba/attributes.csv | cut -d, -f2 | while read -r f; do
  cp "$data/celeba/val/$f" .device/data/celeba/val/
done
repo=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
tar=$(du -cb .device/celeba128.tar.gz | tail -1 | cut -f1)
rest=$(du -cb .device/bin .device/models .device/data | tail -1 | cut -f1)
echo "device-prep: repository $repo B, tar $tar B, binary+mtcnn+data $rest B;" \
  "train call with all of them $((repo + tar + rest)) B of 67108864"
