"""CelebA-style face data for training Veil's generator zoo.

A dataset folder holds `attributes.csv` (columns `split,file,...` then attribute columns with values
1 / -1, as in CelebA) and one subfolder per split with the images (`train/000004.jpg`). Any folder laid
out like that works: Veil's own is `../shared/data/celeba`.

Images are cropped to the standard aligned square (the central 178x178, rows 20..198 of a 178x218 CelebA
image; for other sizes the central square) and resized to `size`. Decoded splits are cached as uint8
arrays in `.cache/` so that several training runs decode the JPEGs once. A `.tar.gz` of pre-cropped JPEGs
(see `pack.py`) can stand in for the folder, for copying data to a GPU machine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# The five attributes of the paper's StarGAN: three hair colours (mutually exclusive), sex, age.
STARGAN_ATTRS = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
HAIR = [0, 1, 2]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "celeba")


@dataclass
class Split:
    """Images `[N,3,S,S]` uint8 and attributes `[N,A]` float in {0,1} for `attrs`."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    attrs: list[str]

    def to(self, device: str) -> "Split":
        """The whole split on `device` (12,000 faces at 128 px are 590 MB of uint8)."""
        return Split(self.images.to(device), self.labels.to(device), self.files, self.attrs)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as `[B,3,S,S]` float in [-1,1] and their labels `[B,A]`, on the split's device.
        Indices from the CPU are copied there, which on CUDA waits for the GPU: training loops draw
        theirs with `sample`, on the device."""
        idx = idx.to(self.images.device)
        x = self.images[idx].float().div(127.5).sub(1.0)
        return x, self.labels[idx]

    def sample(self, b: int, among: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of `b` faces drawn at random (from the indices `among`, when given), the indices
        drawn on the split's device: copying them from the CPU would make every training step wait
        for the GPU to finish the previous one. On the CPU this draws what `randint` did before."""
        dev = self.images.device
        if among is None:
            return self.batch(torch.randint(0, len(self), (b,), device=dev))
        return self.batch(among[torch.randint(0, len(among), (b,), device=dev)])

    def __len__(self) -> int:
        return self.images.shape[0]


def crop_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    if (w, h) == (178, 218):
        return im.crop((0, 20, 178, 198))
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def read_attributes(root: str) -> tuple[list[str], list[dict]]:
    path = os.path.join(root, "attributes.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        names = [n for n in (reader.fieldnames or []) if n not in ("split", "file", "identity")]
    if not rows:
        raise SystemExit(f"error: {path} has no rows")
    return names, rows


def load_split(root: str, split: str, size: int, attrs: list[str] = STARGAN_ATTRS, limit: int | None = None) -> Split:
    """Loads `split` of the dataset at `root` (a folder, or a tar made by pack.py)."""
    if root.endswith((".tar", ".tar.gz")):
        return _load_tar(root, split, size, attrs, limit)
    _, rows = read_attributes(root)
    rows = [r for r in rows if r["split"] == split]
    if limit:
        rows = rows[:limit]
    missing = [a for a in attrs if a not in rows[0]]
    if missing:
        raise SystemExit(f"error: {root}/attributes.csv lacks attributes {missing}")
    key = hashlib.sha1(f"{os.path.abspath(root)}|{split}|{size}|{len(rows)}".encode()).hexdigest()[:12]
    cache = os.path.join(CACHE, f"{split}-{size}-{key}.npy")
    if os.path.exists(cache):
        images = np.load(cache)
    else:
        images = np.stack([_decode(os.path.join(root, split, r["file"]), size) for r in rows])
        os.makedirs(CACHE, exist_ok=True)
        np.save(cache + ".tmp.npy", images)
        os.replace(cache + ".tmp.npy", cache)
    labels = torch.tensor([[1.0 if r[a] == "1" else 0.0 for a in attrs] for r in rows])
    return Split(torch.from_numpy(images), labels, [r["file"] for r in rows], list(attrs))


def _decode(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = crop_square(im.convert("RGB")).resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def _load_tar(path: str, split: str, size: int, attrs: list[str], limit: int | None) -> Split:
    with tarfile.open(path) as tar:
        text = tar.extractfile("attributes.csv").read().decode()
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r["split"] == split]
        if limit:
            rows = rows[:limit]
        images = []
        for r in rows:
            with Image.open(io.BytesIO(tar.extractfile(f"{split}/{r['file']}").read())) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                images.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())
    labels = torch.tensor([[1.0 if r[a] == "1" else 0.0 for a in attrs] for r in rows])
    return Split(torch.from_numpy(np.stack(images)), labels, [r["file"] for r in rows], list(attrs))


def paper_targets(labels: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The paper's edits for a batch of true labels `[B,5]` (STARGAN_ATTRS order): set each hair colour,
    flip Male, flip Young. Returns (name, target labels `[B,5]`)."""
    out = []
    for h, name in zip(HAIR, ["black_hair", "blond_hair", "brown_hair"]):
        t = labels.clone()
        t[:, HAIR] = 0.0
        t[:, h] = 1.0
        out.append((name, t))
    for i, name in [(3, "flip_male"), (4, "flip_young")]:
        t = labels.clone()
        t[:, i] = 1.0 - t[:, i]
        out.append((name, t))
    return out


def first_rows(root: str, split: str, n: int) -> list[dict]:
    """The first `n` rows of `split` in ROOT/attributes.csv, in file order (for the probes in bench/)."""
    _, rows = read_attributes(root)
    return [r for r in rows if r["split"] == split][:n]


def photo(root: str, row: dict) -> torch.Tensor:
    """A row's aligned photo as it is stored (178x218 for CelebA): [1,3,H,W] in [-1,1]."""
    with Image.open(os.path.join(root, row["split"], row["file"])) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1


def row_targets(row: dict) -> torch.Tensor:
    """The paper's five conditions for one row's true attributes: [5,5] (see `paper_targets`)."""
    labels = torch.tensor([[float(row[a] == "1") for a in STARGAN_ATTRS]])
    return torch.cat([t for _, t in paper_targets(labels)])


def random_targets(labels: torch.Tensor) -> torch.Tensor:
    """Random target labels for training: a random hair colour (one-hot) and random Male/Young."""
    b, dev = labels.shape[0], labels.device
    t = torch.zeros_like(labels)
    t[torch.arange(b, device=dev), torch.randint(0, 3, (b,), device=dev)] = 1.0
    t[:, 3:] = torch.randint(0, 2, (b, 2), device=dev).float()
    return t
