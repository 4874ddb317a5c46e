"""Prove each model of the zoo does its job, on a split the models never trained on.

    python models/train/evaluate.py --models DIR --data DIR [--split val] [--limit N] [--samples DIR]
                                    [--judge FILE]

For each conditional generator in DIR/manifest.toml and each of the paper's edits (set black, blond or
brown hair, flip Male, flip Young), the attribute classifier (DIR/classifier.pt) judges whether the
edited face shows the target value of the edited attribute: the edit success rate. For unconditional
generators: the face-swap autoencoder's mean L1 reconstruction error in [-1,1], and for the CycleGAN
translator (not-Young -> Young) the share of not-Young faces the classifier calls Young afterwards.
The classifier's own accuracy on the split is reported first, since it is the judge.

Writes a JSON report to stdout (and --json FILE), and with --samples a PNG grid per generator (input
row, then one row per edit) into that folder, which must be git-ignored: the pictures derive from
CelebA, whose terms forbid redistribution.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402

ATTR_OF_EDIT = {"black_hair": 0, "blond_hair": 1, "brown_hair": 2, "flip_male": 3, "flip_young": 4}


def load(path: str) -> torch.jit.ScriptModule:
    return torch.jit.load(path, map_location="cpu").float().eval()


def counted(target: torch.Tensor, ys: torch.Tensor, k: int) -> torch.Tensor:
    """The faces `[N]` bool an edit of attribute `k` to `target` `[N,5]` counts on: hair edits only
    where the target differs from the image's own hair (labels `ys` `[N,5]` in {0,1}); flips always
    differ."""
    return (target[:, k] != ys[:, k]) if k in D.HAIR else torch.ones(len(ys), dtype=torch.bool)


def recall(pred: torch.Tensor, y: torch.Tensor, k: int, value: bool) -> float:
    """The share of faces whose attribute `k` is `value` that the judge calls so (`pred`, `y`: `[N,5]`
    bool)."""
    return (pred[y[:, k] == value, k] == value).float().mean().item()


@torch.no_grad()
def evaluate(
    models_dir: str, data_dir: str, split: str, limit: int, samples: str | None, judge: str | None = None
) -> dict:
    with open(os.path.join(models_dir, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    entries = manifest.get("model", [])
    size = entries[0]["input_size"] if entries else 128
    val = D.load_split(data_dir, split, size, limit=limit)
    judge = judge or os.path.join(models_dir, "classifier.pt")
    clf = load(judge)
    report = {"split": split, "images": len(val), "size": size, "judge": os.path.basename(judge)}

    def predict(x):
        return torch.cat([clf(x[i : i + 64]) for i in range(0, len(x), 64)]) > 0

    xs, ys = val.batch(torch.arange(len(val)))
    pred, y = predict(xs), ys > 0.5
    acc = (pred == y).float().mean(0)
    report["classifier_accuracy"] = {a: round(acc[i].item(), 4) for i, a in enumerate(D.STARGAN_ATTRS)}
    # Mean of the recall on faces with and without each attribute: accuracy alone flatters a judge that
    # calls the rarer value (Brown_Hair, not-Young) too seldom, and the edits ask for both values.
    balanced = [(recall(pred, y, k, True) + recall(pred, y, k, False)) / 2 for k in range(5)]
    report["classifier_balanced_accuracy"] = {a: round(balanced[i], 4) for i, a in enumerate(D.STARGAN_ATTRS)}

    def run(g, x, c):
        return torch.cat([g(x[i : i + 32], c[i : i + 32]) for i in range(0, len(x), 32)]).clamp(-1, 1)

    def edit_success(g) -> tuple[dict, list[torch.Tensor]]:
        """Per paper edit, the share of `g`'s edits the judge finds the target value in; the outputs'
        first 8 faces per edit, for the sample grid."""
        row, shown = {}, []
        for edit, target in D.paper_targets(ys):
            out = run(g, xs, target)
            k = ATTR_OF_EDIT[edit]
            hit = predict(out)[:, k] == (target[:, k] > 0.5)
            row[edit] = round(hit[counted(target, ys, k)].float().mean().item(), 4)
            shown.append(out[:8])
        row["mean_edit_success"] = round(sum(row[k] for k in ATTR_OF_EDIT) / len(ATTR_OF_EDIT), 4)
        return row, shown

    # The judge's own reach, to read edit success against: `identity` is what a generator that
    # returns its input scores (the judge's errors alone), `real` what one that produced real faces
    # with the target attributes would score (the judge's recall of each target value on real faces,
    # weighted as the edits' targets are).
    # CycleGAN's one edit (not-Young -> Young) has its own: the share of not-young faces the judge calls
    # young, and of young faces it calls young.
    report["judge_reference"] = {
        "identity": {**edit_success(lambda x, c: x)[0], "not_young_to_young": round(1 - recall(pred, y, 4, False), 4)},
        "real": {**real_ceiling(pred, ys), "not_young_to_young": round(recall(pred, y, 4, True), 4)},
    }

    for e in entries:
        g = load(os.path.join(models_dir, e["file"]))
        name = e["name"]
        row = {"role": e["role"]}
        grid = [xs[:8]]
        if e.get("attributes"):
            edits, shown = edit_success(g)
            row.update(edits)
            grid += shown
        else:
            c = torch.zeros(len(xs), 0)
            out = run(g, xs, c)
            grid.append(out[:8])
            if name == "faceswap" or "faceswap" in e["file"]:
                row["reconstruction_l1"] = round((out - xs).abs().mean().item(), 4)
            else:
                old = ys[:, 4] < 0.5
                row["not_young_to_young"] = round(predict(out)[old, 4].float().mean().item(), 4)
        report[name] = row
        if samples:
            save_grid(torch.cat(grid), len(grid), os.path.join(samples, f"{name}.png"))
    return report


def real_ceiling(pred: torch.Tensor, ys: torch.Tensor) -> dict:
    """Edit success of a perfect generator as this judge would score it: per paper edit, the share of
    real faces showing each target value that the judge calls so (`pred`, `ys`: `[N,5]` bool and
    {0,1}), weighted by how often the edits ask for that value."""
    y = ys > 0.5
    out = {}
    for edit, target in D.paper_targets(ys):
        k = ATTR_OF_EDIT[edit]
        t = target[:, k] > 0.5
        share = 0.0
        for value in (True, False):
            asked = (t[counted(target, ys, k)] == value).float().mean().item()
            if asked > 0:
                share += asked * recall(pred, y, k, value)
        out[edit] = round(share, 4)
    out["mean_edit_success"] = round(sum(out[k] for k in ATTR_OF_EDIT) / len(ATTR_OF_EDIT), 4)
    return out


def save_grid(images: torch.Tensor, rows: int, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    n, _, s, _ = images.shape
    cols = n // rows
    pix = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    sheet = Image.new("RGB", (cols * s, rows * s))
    for i in range(n):
        sheet.paste(Image.fromarray(pix[i]), ((i % cols) * s, (i // cols) * s))
    sheet.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--samples", help="git-ignored folder for sample grids")
    p.add_argument("--judge", help="attribute classifier to judge with (default: DIR/classifier.pt)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    report = evaluate(args.models, args.data, args.split, args.limit, args.samples, args.judge)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
