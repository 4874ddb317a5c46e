#!/usr/bin/env python3
"""`veil protect` on the 56 CelebA-HQ portraits, with a camera's metadata, and a check of every copy.

The portraits in ../shared/data/portraits carry no metadata of their own, so each one is first given a
camera's: the EXIF (GPS included) and XMP of one of the Nikon files in exif-samples/jpg/gps (in turn)
and an ICC profile from exif-samples/jpg/Nikon_D70.jpg, spliced in as APP segments without touching
the picture. Every fourth portrait is stored turned, as phones store pictures taken upright: its
pixels rotated a quarter turn and EXIF orientation 6, so that viewers (and Veil) show it upright.
These inputs go to a scratch folder, never into the repository.

Then one `veil protect --json --out OUT IN` over the folder, and for every photo:
- the copy exists, is a JPEG, and shows the same picture size as its original (orientation applied);
- its EXIF tags (IFD0, Exif IFD, GPS IFD, interoperability IFD) equal the original's; the thumbnail
  IFD is left out, since Veil regenerates the thumbnail from the protected pixels;
- its XMP packet and ICC profile are byte for byte the original's;
- Veil reported at least one face, a PSNR and an SSIM; the PSNR is also computed here from the two
  files, over the whole picture, as a cross-check;
- the original is unchanged (SHA-256 before and after).

    .venv/bin/python bench/portraits.py --veil target/release/veil --config C [--preset P]
        [--data ../shared/data] [--work DIR] [--json FILE] [--limit N]

Prints a Markdown summary, one row per photo and the medians; exits 1 when any check fails.
"""

import argparse
import hashlib
import io
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageOps

EXIF_ID = b"Exif\0\0"
XMP_ID = b"http://ns.adobe.com/xap/1.0/\0"
ICC_ID = b"ICC_PROFILE\0"
# IFDs compared tag by tag: Exif, GPS, interoperability (IFD0 is the Exif object itself).
SUB_IFDS = (0x8769, 0x8825, 0xA005)


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """The marker segments before the first SOS, as (marker, payload)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI)")
    out, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((marker, data[pos + 4 : pos + 2 + length]))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def metadata(data: bytes) -> dict:
    """The EXIF payload, XMP packet and ICC profile (chunks joined in order) of a JPEG."""
    exif, xmp, icc = None, None, []
    for marker, payload in segments(data):
        if marker == 0xE1 and payload.startswith(EXIF_ID) and exif is None:
            exif = payload
        elif marker == 0xE1 and payload.startswith(XMP_ID) and xmp is None:
            xmp = payload[len(XMP_ID) :]
        elif marker == 0xE2 and payload.startswith(ICC_ID):
            icc.append((payload[len(ICC_ID)], payload[len(ICC_ID) + 2 :]))
    return {"exif": exif, "xmp": xmp, "icc": b"".join(p for _, p in sorted(icc)) or None}


def segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("segment too large")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def icc_segments(profile: bytes) -> bytes:
    chunk = 0xFFFF - 2 - len(ICC_ID) - 2
    parts = [profile[i : i + chunk] for i in range(0, len(profile), chunk)]
    return b"".join(segment(0xE2, ICC_ID + bytes([i + 1, len(parts)]) + p) for i, p in enumerate(parts))


def with_orientation(exif: bytes, value: int) -> bytes:
    """The EXIF payload with IFD0's Orientation tag set to `value` (the tag must be there)."""
    tiff = bytearray(exif[len(EXIF_ID) :])
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd0 : ifd0 + 2])
    for i in range(count):
        at = ifd0 + 2 + 12 * i
        (tag,) = struct.unpack(order + "H", tiff[at : at + 2])
        if tag == 0x0112:
            tiff[at + 8 : at + 10] = struct.pack(order + "H", value)
            return EXIF_ID + bytes(tiff)
    raise ValueError("the donor's EXIF has no Orientation tag")


def dress(picture: bytes, exif: bytes, xmp: bytes, icc: bytes) -> bytes:
    """The picture's JPEG with the metadata segments spliced in after SOI (its own APP0 kept)."""
    return b"\xff\xd8" + segment(0xE1, exif) + segment(0xE1, XMP_ID + xmp) + icc_segments(icc) + picture[2:]


def tags(path: str) -> dict:
    """EXIF tags by IFD, as PIL reads them (the thumbnail IFD left out)."""
    with Image.open(path) as im:
        ex = im.getexif()
        out = {"ifd0": dict(ex)}
        for ifd in SUB_IFDS:
            out[hex(ifd)] = dict(ex.get_ifd(ifd))
        for d in out.values():
            for k in [k for k in d if k in SUB_IFDS]:
                del d[k]  # offsets to the sub-IFDs, which move when the thumbnail changes
        return out


def shown(path: str) -> np.ndarray:
    """The picture as viewers show it (EXIF orientation applied), RGB uint8."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def portraits(data: str) -> list[tuple[str, str]]:
    """(name for the scratch copy, path) of every portrait, in a fixed order."""
    root = os.path.join(data, "portraits")
    found = []
    for part in ("src", "ref"):
        for sex in ("female", "male"):
            d = os.path.join(root, part, sex)
            for f in sorted(os.listdir(d)):
                if f.lower().endswith((".jpg", ".jpeg")):
                    found.append((f"{part}-{sex}-{f}", os.path.join(d, f)))
    return found


def prepare(data: str, into: str, limit: int | None) -> list[dict]:
    """Writes the dressed portraits into `into`; returns what each one is."""
    gps_dir = os.path.join(data, "exif-samples", "jpg", "gps")
    donors = sorted(os.path.join(gps_dir, f) for f in os.listdir(gps_dir) if f.lower().endswith(".jpg"))
    with open(os.path.join(data, "exif-samples", "jpg", "Nikon_D70.jpg"), "rb") as f:
        icc = metadata(f.read())["icc"]
    if not donors or icc is None:
        raise SystemExit(f"portraits: no GPS donors in {gps_dir} or no ICC profile in Nikon_D70.jpg")
    made = []
    for i, (name, path) in enumerate(portraits(data)[:limit]):
        with open(donors[i % len(donors)], "rb") as f:
            donor = metadata(f.read())
        with open(path, "rb") as f:
            picture = f.read()
        exif, orientation = donor["exif"], 1
        if i % 4 == 3:
            # Stored a quarter turn anticlockwise; orientation 6 turns it back clockwise for display.
            with Image.open(io.BytesIO(picture)) as im:
                buf = io.BytesIO()
                im.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95)
            picture, orientation = buf.getvalue(), 6
            exif = with_orientation(exif, 6)
        out = os.path.join(into, name)
        with open(out, "wb") as f:
            f.write(dress(picture, exif, donor["xmp"], icc))
        made.append({"name": name, "path": out, "orientation": orientation, "donor": os.path.basename(donors[i % len(donors)])})
    return made


def check(photo: dict, report: dict | None, out_dir: str, before: str) -> dict:
    """Every check for one photo; `problems` lists what failed, in words."""
    problems = []
    source, copy = photo["path"], os.path.join(out_dir, photo["name"])
    row = {"name": photo["name"], "orientation": photo["orientation"], "problems": problems}
    if sha256(source) != before:
        problems.append("the original changed")
    if report is None:
        problems.append("veil printed no report for it")
        return row
    row.update(faces=report.get("faces"), psnr=report.get("psnr"), ssim=report.get("ssim"), seconds=report.get("seconds"))
    if report.get("action") != "protected" or not report.get("faces"):
        problems.append(f"not protected (action {report.get('action')}, faces {report.get('faces')})")
    if report.get("psnr") is None or report.get("ssim") is None:
        problems.append("no PSNR or SSIM reported")
    if not os.path.isfile(copy):
        problems.append("no copy written")
        return row
    with open(source, "rb") as f:
        original = f.read()
    with open(copy, "rb") as f:
        written = f.read()
    try:
        a, b = metadata(original), metadata(written)
    except ValueError as e:
        problems.append(f"copy is not a readable JPEG: {e}")
        return row
    if a["xmp"] != b["xmp"]:
        problems.append("XMP differs")
    if a["icc"] != b["icc"]:
        problems.append("ICC profile differs")
    if b["exif"] is None:
        problems.append("EXIF missing")
    else:
        ta, tb = tags(source), tags(copy)
        for ifd in ta:
            if ta[ifd] != tb[ifd]:
                changed = sorted(hex(k) for k in set(ta[ifd]) | set(tb[ifd]) if ta[ifd].get(k) != tb[ifd].get(k))
                problems.append(f"EXIF {ifd} differs in {', '.join(changed)}")
    pa, pb = shown(source), shown(copy)
    if pa.shape != pb.shape:
        problems.append(f"shown size {pb.shape[1]}x{pb.shape[0]} differs from {pa.shape[1]}x{pa.shape[0]}")
    else:
        row["psnr_here"] = psnr(pa, pb)
        if report.get("psnr") is not None and abs(row["psnr_here"] - report["psnr"]) > 0.1:
            problems.append(f"PSNR here {row['psnr_here']:.3f} dB, veil said {report['psnr']:.3f} dB")
    row["bytes_in"], row["bytes_out"] = len(original), len(written)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--veil", default="target/release/veil")
    ap.add_argument("--config", required=True, help="veil configuration (its [models] dir is the zoo)")
    ap.add_argument("--preset", default=None, help="veil's --preset (default: the configured one)")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--json", default=None, help="also write every row and the summary here")
    ap.add_argument("--limit", type=int, default=None, help="only the first N portraits")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="veil-portraits-") as tmp:
        work = args.work or tmp
        in_dir, out_dir = os.path.join(work, "in"), os.path.join(work, "out")
        os.makedirs(in_dir, exist_ok=True)
        os.makedirs(out_dir, exist_ok=True)
        if os.listdir(out_dir):
            raise SystemExit(f"portraits: {out_dir} is not empty")
        photos = prepare(args.data, in_dir, args.limit)
        hashes = {p["name"]: sha256(p["path"]) for p in photos}
        cmd = [args.veil, "--config", args.config, "protect", "--json", "--out", out_dir]
        if args.preset:
            cmd += ["--preset", args.preset]
        started = time.time()
        run = subprocess.run(cmd + [in_dir], capture_output=True, text=True)
        wall = time.time() - started
        reports = {}
        for line in run.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                reports[os.path.basename(r.get("source", ""))] = r
        rows = [check(p, reports.get(p["name"]), out_dir, hashes[p["name"]]) for p in photos]

    failed = [r for r in rows if r["problems"]]
    med = lambda k: statistics.median(r[k] for r in rows if r.get(k) is not None)  # noqa: E731
    summary = {
        "photos": len(rows),
        "passed": len(rows) - len(failed),
        "veil_exit": run.returncode,
        "wall_seconds": round(wall, 1),
        "turned": sum(r["orientation"] == 6 for r in rows),
        "median_seconds": med("seconds"),
        "median_psnr": med("psnr"),
        "min_psnr": min(r["psnr"] for r in rows if r.get("psnr") is not None),
        "median_ssim": med("ssim"),
        "min_ssim": min(r["ssim"] for r in rows if r.get("ssim") is not None),
        "faces": sum(r.get("faces") or 0 for r in rows),
        "median_bytes_in": med("bytes_in"),
        "median_bytes_out": med("bytes_out"),
    }
    print("| photo | orientation | faces | PSNR dB (veil / here) | SSIM | seconds | checks |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p, h = r.get("psnr"), r.get("psnr_here")
        print(
            f"| {r['name']} | {r['orientation']} | {r.get('faces')} | "
            f"{p if p is None else f'{p:.2f}'} / {h if h is None else f'{h:.2f}'} | "
            f"{r.get('ssim') if r.get('ssim') is None else format(r['ssim'], '.4f')} | "
            f"{r.get('seconds') if r.get('seconds') is None else format(r['seconds'], '.2f')} | "
            f"{'; '.join(r['problems']) or 'ok'} |"
        )
    print()
    print(json.dumps(summary))
    if run.returncode != 0:
        print(f"veil exited {run.returncode}: {run.stderr[-2000:]}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    sys.exit(1 if failed or run.returncode != 0 else 0)


if __name__ == "__main__":
    main()
