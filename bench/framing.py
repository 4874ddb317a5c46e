"""Does a perturbation computed on one framing of a face survive an attacker's other framing?

    .venv/bin/python bench/framing.py [--model stargan] [--n 40] [--mode A|B|J] [--iters 10]

CelebA val photos (178x218, the first N of attributes.csv). The attacker's view B is the standard
aligned crop (rows 20..198, 178 px) resized to the generator's 128 px, which is how CelebA-trained
generators are fed. Veil's own crop A is what MTCNN with margin 0.2 gives on these photos (154 px at
x 3, y 46). PGD (ε 0.05, step 0.01, random start, joint over the paper's 5 conditions derived from
each face's attributes, 8-bit result) on the full-resolution pixels through a differentiable
antialiased resize, then judged in view B with the paper's threshold (MSE >= 0.05):
  B: attacked in the attacker's own view (the paper's setting: an upper bound);
  A: attacked on Veil's crop only (the mismatch an attacker's other crop creates);
  J: attacked on a framing drawn per step around Veil's crop (0.85-1.25 times its side, center moved
     by up to 0.1 of it), with that framing's clean outputs: what `protect.framing` does.
  L: like J, but half the steps (--aligned) frame the crop an aligner would cut from the face's five
     landmarks (the template fitted on train faces, then moved by up to 0.03 of its side).
No spread-spectrum here: one generator, no transform, so only the framing differs.

--faces and --template take the output of `veil faces --json` on the same val photos and on train
photos; with them, Veil's crop A is each photo's own (MTCNN box, margin 0.2) instead of the fixed one.
--judge A stands for an attacker who crops around the detector's box instead of aligning.
--mask says where the perturbation may go: the whole photo (none, the default), Veil's crop A
feathered at 0.1 of its side (A, what the pipeline did), or the box around A and the aligned crop (AL).
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models", "train"))
import data as D  # noqa: E402
import reference as R  # noqa: E402  (bench/, the script's own folder)

A = (3, 46, 154)  # x, y, side: Veil's crop
B = (0, 20, 178)  # the attacker's aligned crop


def view(x, fr):
    X, Y, S = fr
    return F.interpolate(x[:, :, Y:Y + S, X:X + S], size=(128, 128), mode="bilinear", antialias=True)


def drawn(a=A, scale=(0.85, 1.25), shift=0.1):
    s = min(int(round(a[2] * random.uniform(*scale))), 178)
    cx = a[0] + a[2] / 2 + random.uniform(-shift, shift) * a[2]
    cy = a[1] + a[2] / 2 + random.uniform(-shift, shift) * a[2]
    X = int(round(min(max(cx - s / 2, 0), 178 - s)))
    Y = int(round(min(max(cy - s / 2, 0), 218 - s)))
    return (X, Y, s)


def faces_of(path):
    """{photo file name: (box, landmarks [5,2])} of the best face, from `veil faces --json`."""
    out = {}
    for photo in json.load(open(path)):
        if photo["faces"]:
            f = photo["faces"][0]
            out[os.path.basename(photo["photo"])] = (f["box"], np.array(f["landmarks"]))
    return out


def veil_crop(box):
    """faces::crop_region with margin 0.2 on a 178x218 photo."""
    side = max(box[2] - box[0], box[3] - box[1]) * 1.4
    size = int(min(max(round(side), 1), 178))
    x = int(min(max(round((box[0] + box[2]) / 2 - size / 2), 0), 178 - size))
    y = int(min(max(round((box[1] + box[3]) / 2 - size / 2), 0), 218 - size))
    return (x, y, size)


def aligned_crop(marks, template):
    """The attacker's crop B mapped back through the similarity (scale and shift, no rotation) that takes
    these landmarks onto the template: (x, y, side) as floats."""
    p, q = marks - marks.mean(0), template - template.mean(0)
    s = (p * q).sum() / (p * p).sum()
    t = template.mean(0) - s * marks.mean(0)
    return ((B[0] - t[0]) / s, (B[1] - t[1]) / s, B[2] / s)


def mask_of(fr, feather=0.1):
    """[1,1,218,178] feather mask of a window (x, y, side) in the photo."""
    X, Y, S = (int(round(v)) for v in fr)
    band = max(feather * S, 1e-6)
    ys = torch.arange(218).float().view(-1, 1)
    xs = torch.arange(178).float().view(1, -1)
    d = torch.minimum(torch.minimum(ys - Y + 0.5, Y + S - ys - 0.5), torch.minimum(xs - X + 0.5, X + S - xs - 0.5))
    return (d / band).clamp(0, 1).view(1, 1, 218, 178)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=os.path.join(HERE, "..", "models"))
    p.add_argument("--model", default="stargan")
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "celeba"))
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--mode", choices=["A", "B", "J", "L"], default="J")
    p.add_argument("--faces", help="`veil faces --json` of the val photos")
    p.add_argument("--template", help="`veil faces --json` of train photos (mode L)")
    p.add_argument("--aligned", type=float, default=0.5, help="share of mode L's steps on the aligned crop")
    p.add_argument("--mask", choices=["none", "A", "AL"], default="none")
    p.add_argument("--judge", choices=["A", "B"], default="B",
                   help="the attacker's view: B, CelebA's aligned crop, or A, Veil's own crop (a tool that crops "
                        "the detector's box)")
    p.add_argument("--spread", default="", help="spread-spectrum families, comma-separated (e.g. "
                   "identity,gaussian,box,resize,jpeg): one transform per step, drawn as Veil draws it")
    p.add_argument("--identity", type=float, help="with --spread: identity's share of the steps instead of one "
                   "family's share")
    p.add_argument("--target", choices=["clean", "defended"], default="clean",
                   help="with --spread: away from G(x) (clean) or from G(T(x)), the same transform of the clean "
                        "face (defended), which is what veil eval measures against")
    p.add_argument("--jitter", type=float, default=0.03, help="mode L: scale and shift jitter of the aligned crop")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    g = torch.jit.load(os.path.join(args.models, f"{args.model}.pt")).float().eval()
    for q in g.parameters():
        q.requires_grad_(False)
    _, rows = D.read_attributes(args.data)
    rows = [r for r in rows if r["split"] == "val"][: args.n]
    imgs = torch.stack([
        torch.from_numpy(np.array(Image.open(os.path.join(args.data, "val", r["file"])).convert("RGB"))).permute(2, 0, 1)
        for r in rows
    ]).float() / 127.5 - 1
    labels = torch.tensor([[1.0 if r[a] == "1" else 0.0 for a in D.STARGAN_ATTRS] for r in rows])
    targets = D.paper_targets(labels)
    faces = faces_of(args.faces) if args.faces else {}
    if args.mode == "L" or args.mask == "AL":
        train = faces_of(args.template)
        template = np.mean([m for _, m in train.values()], 0)
        print(f"template from {len(train)} train faces:", np.round(template, 1).tolist())
    crops_a, crops_l = [], []
    for r in rows:
        box, marks = faces.get(r["file"], (None, None))
        crops_a.append(veil_crop(box) if box else A)
        crops_l.append(aligned_crop(marks, template) if marks is not None and args.mode == "L" or args.mask == "AL" else B)
    if crops_l and args.mode == "L":
        err = np.array([[c[0] - B[0], c[1] - B[1], c[2] - B[2]] for c in crops_l])
        print("aligned crop minus B (x, y, side): mean", np.round(err.mean(0), 2).tolist(), "abs",
              np.round(np.abs(err).mean(0), 2).tolist())
    masks = []
    for a, l in zip(crops_a, crops_l):
        if args.mask == "none":
            masks.append(torch.ones(1, 1, 218, 178))
        elif args.mask == "A":
            masks.append(mask_of(a))
        else:
            x0, y0 = min(a[0], l[0]), min(a[1], l[1])
            x1, y1 = max(a[0] + a[2], l[0] + l[2]), max(a[1] + a[2], l[1] + l[2])
            m = mask_of((x0, y0, max(x1 - x0, y1 - y0)))
            masks.append(m)
    masks = torch.cat(masks)
    eps, step = 0.05, 0.01
    t0 = time.time()
    transforms = R.spread([f for f in args.spread.split(",") if f], False)
    defenses = [("none", ("identity", None)), ("blur", ("gaussian", 1.5)), ("jpeg75~", ("jpeg", 75)),
                ("resize", ("resize", 0.5))]
    res = {(name, dn): [] for name in ["noise", "attack"] for dn, _ in defenses}
    for i in range(0, len(rows), 8):
        x = imgs[i:i + 8]
        b = x.shape[0]
        k = len(targets)
        cr = torch.cat([t[i:i + 8] for _, t in targets])

        m = masks[i:i + 8]
        ca, cl = crops_a[i:i + 8], crops_l[i:i + 8]

        def G(v):
            return g(v.repeat(k, 1, 1, 1), cr)

        def views(v, frs):
            return torch.cat([view(v[j:j + 1], fr) for j, fr in enumerate(frs)])

        def frames(step):
            if args.mode == "B":
                return [B] * b
            if args.mode == "A":
                return ca
            if args.mode == "L" and random.random() < args.aligned:
                return [drawn(c, (1 - args.jitter, 1 + args.jitter), args.jitter) for c in cl]
            return [drawn(c) for c in ca]

        def transform():
            if not transforms:
                return ("identity", None)
            if args.identity is not None:
                others = [t for t in transforms if t[0] != "identity"]
                if random.random() < args.identity or not others:
                    return ("identity", None)
                return R.draw(others)
            return R.draw(transforms)

        d = torch.empty_like(x).uniform_(-eps, eps)
        for it in range(args.iters):
            frs = frames(it)
            t = transform()
            with torch.no_grad():
                ref = G(R.apply(t, views(x, frs)) if args.target == "defended" else views(x, frs))
            d.requires_grad_(True)
            xa = (x + d * m).clamp(-1, 1)
            (grad,) = torch.autograd.grad(((G(R.apply(t, views(xa, frs))) - ref) ** 2).mean(), d)
            d = (d.detach() + step * grad.sign()).clamp(-eps, eps)
        xa = (x + d * m).clamp(-1, 1)
        q = ((xa + 1) * 127.5).round() / 127.5 - 1
        noise = (x + eps * torch.randint(0, 2, x.shape).float().mul(2).sub(1)).clamp(-1, 1)
        with torch.no_grad():
            judge = [B] * b if args.judge == "B" else ca
            clean_b = G(views(x, judge))
            for name, v in [("noise", noise), ("attack", q)]:
                for dn, dt in defenses:
                    out = G(R.apply(dt, views(v, judge)))
                    res[(name, dn)].append(((out - clean_b) ** 2).flatten(1).mean(1).view(k, b))
    print(f"{args.model}, attacked in mode {args.mode}: {len(rows)} val faces, {args.iters} iterations, "
          f"{time.time() - t0:.0f} s; judged in view {args.judge} (% with MSE >= 0.05, mean MSE)")
    for (name, dn), v in res.items():
        if name == "noise" and dn != "none":
            continue
        m = torch.cat(v, 1)
        print(f"{name:7s} {dn:8s} " + "  ".join(
            f"{tn} {100 * (m[j] >= 0.05).float().mean():5.1f}% {m[j].mean():.4f}" for j, (tn, _) in enumerate(targets)))


if __name__ == "__main__":
    main()
