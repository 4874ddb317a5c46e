"""Pack a CelebA-style folder into one tar of pre-cropped JPEGs, to carry to a GPU machine.

    python models/train/pack.py --data ../shared/data/celeba --out .device/celeba128.tar.gz [--size 128]

Each image is cropped to the standard aligned square and resized to SIZE, saved as JPEG (quality 70 by default);
attributes.csv goes along. The tar is for a git-ignored folder only: CelebA's terms forbid committing it.
"""

import argparse
import io
import os
import sys
import tarfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--splits", default="train", help="comma-separated; evaluation can run locally on val")
    # q70 (gzip-compressed tar headers and padding) keeps 12,000 faces at 128 px under 40 MB, so data, scripts and a binary fit one device call.
    p.add_argument("--quality", type=int, default=70)
    # The tar shares a device call's 64 MiB with the repository (its committed zoo) and a binary.
    p.add_argument("--limit", type=int, help="keep only the first N images of each split")
    args = p.parse_args()
    _, rows = D.read_attributes(args.data)
    splits = args.splits.split(",")
    kept: dict[str, int] = {}
    chosen = []
    for r in rows:
        if r["split"] in splits and (args.limit is None or kept.get(r["split"], 0) < args.limit):
            kept[r["split"]] = kept.get(r["split"], 0) + 1
            chosen.append(r)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tarfile.open(args.out + ".tmp", "w:gz") as tar:
        # attributes.csv lists exactly the packed images (a reader takes every row of a split).
        with open(os.path.join(args.data, "attributes.csv"), newline="") as f:
            lines = f.read().splitlines(keepends=True)
        packed = {(r["split"], r["file"]) for r in chosen}
        header = lines[0]
        keep = [header] + [ln for ln in lines[1:] if tuple(ln.split(",", 2)[:2]) in packed]
        csv_bytes = "".join(keep).encode()
        info = tarfile.TarInfo("attributes.csv")
        info.size = len(csv_bytes)
        tar.addfile(info, io.BytesIO(csv_bytes))
        for r in chosen:
            with Image.open(os.path.join(args.data, r["split"], r["file"])) as im:
                im = D.crop_square(im.convert("RGB")).resize((args.size, args.size), Image.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=args.quality)
            info = tarfile.TarInfo(f"{r['split']}/{r['file']}")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    os.replace(args.out + ".tmp", args.out)
    print(f"{args.out}: {len(chosen)} images, {os.path.getsize(args.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
