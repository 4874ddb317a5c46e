"""The eager-PyTorch reference for `veil bench`: the same attack recipe a user would otherwise run.

    python bench/reference.py --models DIR [--side 1260] [--preset balanced] [--device cuda] [--runs 5] [--batch 8]

It loads the same TorchScript generators (the `ensemble` models of DIR/manifest.toml, fp16 weights
made fp32), takes a face region of SIDE×SIDE pixels (a portrait from --photo resized, or noise), and
runs the same recipe as Veil's `protect` module: antialiased resize to each generator's input, one
transform per step from the same spread (Gaussian k11 σ1-3, box 5/7/9, resize 0.5-0.9, the
differentiable JPEG approximation q60-95, identity; a family drawn uniformly, then one of its
members), a framing per face and step (a crop 0.85-1.25
times the face's side, its center moved by up to 0.1 of it, inside the region; the clean outputs of
that framing, under the step's transform, computed in the step), L-inf PGD (ε 0.05, step 0.01, 10 steps for `balanced`) from a
random start, joint over each generator's attacked conditions in one batched pass (each condition's
rows through its own transform drawn per step, as `protect.mix`; --no-mix: one per step), a fine and a
coarse part of the perturbation (`protect.coarse`, --coarse), losses weighed as
`protect.focus` (--focus) says, feathered mask, 8-bit quantization. It reports the
median seconds per attack after warm-up as JSON, for one face and for --batch faces attacked together
(as `veil bench` does), for bench/compare.sh to set against `veil bench`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
import tomllib

import torch
import torch.nn.functional as F

PRESETS = {
    # step, iterations, spread families, wide
    "fast": (0.02, 5, ["identity", "gaussian", "jpeg"], False),
    "balanced": (0.01, 10, ["identity", "gaussian", "box", "resize", "jpeg"], False),
    "strong": (0.01, 30, ["identity", "gaussian", "box", "resize", "jpeg"], True),
}


def spread(families, wide):
    out = []
    for f in families:
        if f == "identity":
            out.append(("identity", None))
        elif f == "gaussian":
            out += [("gaussian", s) for s in ([1.0, 1.5, 2.0, 2.5, 3.0] + ([3.5] if wide else []))]
        elif f == "box":
            out += [("box", k) for k in ([5, 7, 9] + ([11] if wide else []))]
        elif f == "resize":
            out += [("resize", r) for r in (([0.4] if wide else []) + [0.5, 0.6, 0.7, 0.8, 0.9])]
        elif f in ("jpeg", "jpeg420"):
            qs = [50, 60, 70, 80, 90, 95] if wide else [60, 70, 80, 90, 95]
            out += [(f, (q, f == "jpeg420")) for q in qs]
    return out


def depthwise(x, kernel):
    k = kernel.shape[0]
    w = kernel.to(x).view(1, 1, k, k).repeat(3, 1, 1, 1)
    return F.conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), w, groups=3)


def gaussian(x, sigma, k=11):
    r = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(r**2) / (2 * sigma * sigma))
    g = g / g.sum()
    return depthwise(x, g[:, None] * g[None, :])


Q_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17,
          22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78,
          87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
Q_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


def qtable(base, q):
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return torch.tensor([min(max(math.floor((b * scale + 50) / 100), 1), 255) for b in base], dtype=torch.float32)


def dct_matrix():
    """The orthonormal 8x8 DCT-II matrix, made in one go (64 element writes from Python cost more than
    the transform itself). Like the blur kernels and the JPEG tables, it is made on the CPU at each call
    and copied to the device, as straightforward eager code does; Veil keeps them on the device."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    a = torch.full((8, 1), math.sqrt(2 / 8), dtype=torch.float64)
    a[0] = math.sqrt(1 / 8)
    return (a * torch.cos(math.pi * (2 * n + 1) * k / 16)).float()


def quantized(p, qt):
    """8x8 DCT of planes p [N,C,H,W], quantized by qt [1,C,1,1,8,8] with the cubic surrogate, and back."""
    n, c, h, w = p.shape
    blocks = p.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    d = dct_matrix().to(p)
    s = (d @ blocks @ d.T) / qt
    r = s.round().detach()
    coef = (r + (s - r) ** 3) * qt
    return (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def jpeg_approx(x, p):
    """As Veil's spread::jpeg_approx; p = (quality, subsampled): with subsampled (4:2:0) the chroma
    planes are averaged over 2x2, quantized at half size and enlarged bilinearly. A bare quality (as the
    probes under bench/ pass) is 4:4:4."""
    q, sub = p if isinstance(p, tuple) else (p, False)
    n, _, h, w = x.shape
    unit = 16 if sub else 8
    ph, pw = (unit - h % unit) % unit, (unit - w % unit) % unit
    x255 = F.pad((x + 1) * 127.5, [0, pw, 0, ph], mode="replicate")
    hh, ww = h + ph, w + pw
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).to(x)
    ycc = torch.einsum("nchw,dc->ndhw", x255, m) + torch.tensor([-128.0, 0, 0]).to(x).view(1, 3, 1, 1)
    qt = torch.stack([qtable(Q_LUMA, q), qtable(Q_CHROMA, q), qtable(Q_CHROMA, q)]).view(1, 3, 1, 1, 8, 8).to(x)
    if sub:
        luma = quantized(ycc[:, :1], qt[:, :1])
        chroma = quantized(F.avg_pool2d(ycc[:, 1:], 2), qt[:, 1:])
        ycc = torch.cat([luma, F.interpolate(chroma, size=(hh, ww), mode="bilinear")], 1)
    else:
        ycc = quantized(ycc, qt)
    ycc = ycc - torch.tensor([-128.0, 0, 0]).to(x).view(1, 3, 1, 1)
    mi = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]).to(x)
    rgb = torch.einsum("nchw,dc->ndhw", ycc, mi)[:, :, :h, :w]
    return (rgb / 127.5 - 1).clamp(-1, 1)


def apply(t, x):
    kind, p = t
    if kind == "identity":
        return x
    if kind == "gaussian":
        return gaussian(x, p)
    if kind == "box":
        return depthwise(x, torch.full((p, p), 1.0 / (p * p)))
    if kind == "resize":
        h, w = x.shape[2:]
        small = F.interpolate(x, size=(max(1, round(h * p)), max(1, round(w * p))), mode="bilinear", antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear")
    return jpeg_approx(x, p)


def feather(h, w, f, device):
    band = max(f * min(h, w), 1e-6)
    ramp = lambda n: torch.tensor([min((min(i, n - 1 - i) + 0.5) / band, 1.0) for i in range(n)])
    return (ramp(h)[:, None] * ramp(w)[None, :]).view(1, 1, h, w).to(device)


def load(models_dir, device):
    with open(os.path.join(models_dir, "manifest.toml"), "rb") as f:
        entries = [m for m in tomllib.load(f).get("model", []) if m["role"] == "ensemble"]
    gens = []
    for e in entries:
        g = torch.jit.load(os.path.join(models_dir, e["file"]), map_location=device).float().eval()
        for p in g.parameters():
            p.requires_grad_(False)
        conds = e.get("conditions") or [[]]
        c = torch.tensor(conds, dtype=torch.float32, device=device).view(len(conds), -1)
        gens.append((e["name"], g, e["input_size"], c))
    return gens


def draw(transforms):
    """A family drawn uniformly, then one of its members, as Veil's spread::draw."""
    family = random.choice(sorted({t[0] for t in transforms}))
    return random.choice([t for t in transforms if t[0] == family])


FRAMING = (0.85, 1.25, 0.1)  # scale range and center shift, as Veil's Framing::DEFAULT


def window(h, w, framing):
    """One framing of a face that fills an h×w region: (y, x, height, width) inside it."""
    lo, hi, shift = framing
    scale = random.uniform(lo, hi)
    dx, dy = random.uniform(-shift, shift), random.uniform(-shift, shift)
    ww, hh = min(max(round(w * scale), 1), w), min(max(round(h * scale), 1), h)
    x0 = min(max(round(w * (0.5 + dx) - ww / 2), 0), w - ww)
    y0 = min(max(round(h * (0.5 + dy) - hh / 2), 0), h - hh)
    return y0, x0, hh, ww


THRESHOLD = 0.05  # the paper's disruption threshold on the MSE in [-1,1]


def focused(out, target, f):
    """As Veil's `protect::focused_loss`: the mean over rows of sigmoid(f·ln(m/τ))/f, m a row's MSE."""
    rows = (out - target).square().flatten(1).mean(1)
    return torch.sigmoid(f * torch.log(rows.clamp_min(1e-12) / THRESHOLD)).mean() / f


def attack(gens, x, mask, eps, step, iters, transforms, framing=FRAMING, focus=1.0, mix=True, coarse=2):
    """x: [N,3,h,w] in [-1,1] (N faces of one size); each generator sees every face under every
    condition in one pass, rows face-major. `framing` None: every step sees the whole region. `focus`
    0: each loss normalized by its value at the start; above 0, weighed against the threshold. `mix`:
    each attacked condition's rows through their own transform drawn per step. `coarse` f > 1: the
    perturbation is a fine part plus a coarse one at 1/f resolution upsampled, as Veil's protect.coarse."""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]

    def inputs(img, ts, s, k, wins):
        """Rows n*k + j: face n resized to s and through ts[j % len(ts)]."""
        faces = [img[j : j + 1, :, y0 : y0 + hh, x0 : x0 + ww] for j, (y0, x0, hh, ww) in enumerate(wins)]
        r = torch.cat([F.interpolate(f, size=(s, s), mode="bilinear", antialias=True) for f in faces])
        if all(t == ts[0] for t in ts[:k]):
            return apply(ts[0], r).unsqueeze(1).expand(n, k, 3, s, s).reshape(n * k, 3, s, s)
        return torch.stack([apply(ts[j % len(ts)], r) for j in range(k)], 1).reshape(n * k, 3, s, s)

    def clean(wins, ts=(("identity", None),)):
        with torch.no_grad():
            return [g(inputs(x, ts, s, c.shape[0], wins), c.repeat(n, 1)) for _, g, s, c in gens]

    whole = [(0, 0, h, w)] * n
    targets = clean(whole)
    if coarse > 1:
        # The fine part starts at 0, the coarse part at random in the ε-ball.
        delta = torch.zeros_like(x)
        low = torch.empty(n, 3, -(-h // coarse), -(-w // coarse), device=x.device).uniform_(-eps, eps)
    else:
        delta, low = torch.empty_like(x).uniform_(-eps, eps), None

    def combined(delta, low):
        if low is None:
            return delta
        return (delta + F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)).clamp(-eps, eps)

    norms = [None] * len(gens)
    # One transform per attacked condition and step with `mix` (as Veil's protect.mix), else one.
    draws = max(c.shape[0] for _, _, _, c in gens) if mix else 1
    for _ in range(iters):
        ts = [draw(transforms) for _ in range(draws)]
        wins = whole if framing is None else [window(h, w, framing) for _ in range(n)]
        # Away from the outputs of the same framing and transform of the clean face, as Veil.
        plain = framing is None and all(t[0] == "identity" for t in ts)
        step_targets = targets if plain else clean(wins, ts)
        delta.requires_grad_(True)
        parts = [delta] if low is None else [delta, low.requires_grad_(True)]
        x_adv = (x + combined(delta, low) * mask).clamp(-1, 1)
        total = 0
        for i, (_, g, s, c) in enumerate(gens):
            out = g(inputs(x_adv, ts, s, c.shape[0], wins), c.repeat(n, 1))
            if focus > 0:
                total = total + focused(out, step_targets[i], focus)
                continue
            loss = F.mse_loss(out, step_targets[i])
            if norms[i] is None:
                norms[i] = max(loss.item(), 1e-8)
            total = total + loss / norms[i]
        grads = torch.autograd.grad(total, parts)
        with torch.no_grad():
            stepped = [(p + step * g.sign()).clamp(-eps, eps) for p, g in zip(parts, grads)]
            delta, low = stepped[0], (stepped[1] if low is not None else None)
    with torch.no_grad():
        x_adv = (x + combined(delta, low) * mask).clamp(-1, 1)
        levels = math.floor(eps * 127.5 + 1e-9)
        d = ((x_adv - x) * 127.5).round().clamp(-levels, levels)
        return ((x + 1) * 127.5 + d).clamp(0, 255).round().byte()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True)
    p.add_argument("--side", type=int, default=1260)
    p.add_argument("--photo", help="a portrait to resize to the face region (default: noise)")
    p.add_argument("--preset", default="balanced", choices=PRESETS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--batch", type=int, default=8, help="also time this many faces attacked together (1: skip)")
    p.add_argument("--no-framing", action="store_true", help="as Veil's protect.framing = false")
    p.add_argument("--no-mix", action="store_true", help="as Veil's protect.mix = false: one transform per step")
    p.add_argument("--coarse", type=int, default=2, help="as Veil's protect.coarse (1: one part)")
    p.add_argument("--focus", type=float, default=1.0, help="as Veil's protect.focus (0: normalized by the loss at the start)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    random.seed(1)
    torch.manual_seed(1)
    gens = load(args.models, dev)
    if args.photo:
        from PIL import Image

        img = Image.open(args.photo).convert("RGB").resize((args.side, args.side), Image.BILINEAR)
        x = torch.from_numpy(__import__("numpy").asarray(img, dtype="float32").copy()).permute(2, 0, 1)
        x = (x / 127.5 - 1).unsqueeze(0).to(dev)
    else:
        x = torch.rand(1, 3, args.side, args.side, device=dev) * 2 - 1
    step, iters, families, wide = PRESETS[args.preset]
    transforms = spread(families, wide)
    mask = feather(args.side, args.side, 0.1, dev)

    def timed(xs, masks):
        times = []
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            attack(gens, xs, masks, 0.05, step, iters, transforms, None if args.no_framing else FRAMING, args.focus, not args.no_mix, args.coarse)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}

    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset,
        "side": args.side,
        "generators": [n for n, *_ in gens],
        "attack_one_face": timed(x, mask),
    }
    report["faces_per_second"] = 1 / report["attack_one_face"]["median_s"]
    if args.batch > 1:
        t = timed(x.expand(args.batch, -1, -1, -1).contiguous(), mask)
        report["attack_batch"] = {"faces": args.batch, "timing": t, "faces_per_second": args.batch / t["median_s"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
