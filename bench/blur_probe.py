"""The eager-PyTorch probe behind bench/results/eval-mix-coarse-cpu-2026-11-26.md, sections 1 and 2.

    python bench/blur_probe.py VARIANT[,VARIANT...]      (from the repository root, with .venv)

Attacks CelebA val faces (../shared/data/celeba, read in place) with the committed StarGAN (models/;
each result file names the zoo version it ran on) and
reports, per defense (none, Gaussian blur k11 σ1.5, the JPEG q75 approximation, 0.5x resize), the %
of face x paper-condition pairs with MSE >= 0.05 and the mean MSE. A quick way to try attack ideas
before building them into Veil; not a substitute for `veil eval`. Variants: `one` (one transform per
step for all conditions, as before `protect.mix`), `rows` (one per condition, `mix`), `rowsfam`,
`blurw`, `lowpass`, `blur`, `none` (other spreads). Environment: N images (12), T threads (2),
HI=1 attack the 178 px face (else 128 px), FR=1 frame the face each step from the whole photo (AL
the share on the attacker's crop with a 3 % jitter, the rest 0.85-1.25x moved by 0.1), FRROW=1 a
framing per condition, ENS=1 add the other ensemble generators, LF=f a coarse part at 1/f (as
`protect.coarse`), STEP, IT, MU=μ momentum on the L1-normalised gradient (MI-FGSM), TI=k smooth
the fine part's gradient with a Gaussian of k px (k odd, σ k/4: reference.gaussian) before its sign
(TI-FGSM), LF2=f a second coarse part at 1/f, TAU the focused loss's threshold (0.05), FOC its focus
(1), RN=1 give each condition row's gradient (at StarGAN's input) the same norm, CS=i,j attack only
those rows of the manifest's conditions. LUMA=1 makes the fine part grey (one plane, the same
change to R, G and B: luma only, which 4:2:0 chroma subsampling leaves alone), LUMA=2 the coarse part
too. The defenses include real JPEG q75 round trips at the generator's size (Pillow, 4:2:0 and
4:4:4), as `veil eval` runs them.
"""
import sys, random, math, time, os
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "celeba")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import torch, torch.nn.functional as F
import reference as R
sys.path.insert(0, os.path.join(ROOT, "models", "train"))
import data as D

torch.set_num_threads(int(os.environ.get("T", "2")))
N = int(os.environ.get("N", "12"))
variants = sys.argv[1].split(",")
allg = R.load(os.path.join(ROOT, "models"), "cpu")
gens = [g for g in allg if g[0] == "stargan"]
_, G, S, C = gens[0]
others = [g for g in allg if g[0] != "stargan"] if os.environ.get("ENS") else []
rows = D.first_rows(DATA, "val", N)
conds = D.row_targets  # the paper's five conditions for this face, [5,5]
def load(r):
    x = D.photo(DATA, r)
    if not os.environ.get("FR"):
        x = x[:, :, 20:198, :]
    return x if os.environ.get("HI") else F.interpolate(x, size=(S, S), mode="bilinear", antialias=True)
def frame(x):
    if not os.environ.get("FR") or x.shape[2] == 178: return x
    if random.random() < float(os.environ.get("AL", "0")):
        lo, hi, sh = 0.97, 1.03, 0.03
    else:
        lo, hi, sh = 0.85, 1.25, 0.1
    sc = random.uniform(lo, hi); side = min(round(178 * sc), 178)
    cy = 109 + random.uniform(-sh, sh) * 178; cx = 89 + random.uniform(-sh, sh) * 178
    y0 = min(max(round(cy - side / 2), 0), 218 - side); x0 = min(max(round(cx - side / 2), 0), 178 - side)
    return x[:, :, y0:y0 + side, x0:x0 + side]
def crop(x):
    return x[:, :, 20:198, :] if x.shape[2] == 218 else x
def rs(x):
    return F.interpolate(x, size=(S, S), mode="bilinear", antialias=True) if x.shape[-1] != S else x
spreadT = R.spread(["identity", "gaussian", "box", "resize", "jpeg"], False)
DEF = {"none": ("identity", None), "blur": ("gaussian", 1.5), "jpeg": ("jpeg", 75), "resize": ("resize", 0.5),
       "jpeg420": ("pil", 2), "jpeg444": ("pil", 0)}
LUMA = int(os.environ.get("LUMA", "0"))
def pil_jpeg(x, subsampling):
    """x [1,3,S,S] in [-1,1] through Pillow's JPEG at quality 75 and back."""
    import io
    import numpy as np
    from PIL import Image
    a = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=75, subsampling=subsampling)
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(b.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
def defend(t, x):
    return pil_jpeg(x, t[1]) if t[0] == "pil" else R.apply(t, x)

MU = float(os.environ.get("MU", "0"))
FOC = float(os.environ.get("FOC", "1"))
RN = int(os.environ.get("RN", "0"))
if os.environ.get("CS"):  # attack only these rows of the manifest's conditions
    C = C[[int(i) for i in os.environ["CS"].split(",")]]
R.THRESHOLD = float(os.environ.get("TAU", R.THRESHOLD))
TI = int(os.environ.get("TI", "0"))
def attack(x, variant, eps=0.05, step=float(os.environ.get('STEP', '0.01')), iters=int(os.environ.get('IT', '10'))):
    K = C.shape[0]
    xs = x.expand(K, -1, -1, -1)
    LF = int(os.environ.get("LF", "0"))
    H, W = x.shape[2], x.shape[3]
    dlo = torch.empty(1, 1 if LUMA >= 2 else 3, max(1, H // LF), max(1, W // LF)).uniform_(-eps, eps) if LF else None
    delta = torch.empty(1, 1 if LUMA else 3, H, W).uniform_(-eps, eps)
    if LF: delta = delta * 0
    LF2 = int(os.environ.get("LF2", "0"))
    dlo2 = torch.empty(1, 3, max(1, H // LF2), max(1, W // LF2)).uniform_(-eps, eps) if LF2 else None
    mom = [0.0, 0.0, 0.0]
    def total(delta, dlo):
        out = delta.expand(1, 3, H, W)
        if dlo is not None: out = out + F.interpolate(dlo, size=(H, W), mode="bilinear")
        if dlo2 is not None: out = out + F.interpolate(dlo2, size=(H, W), mode="bilinear")
        return out.clamp(-eps, eps)
    for it in range(iters):
        if variant == "one":
            ts = [R.draw(spreadT)] * K
        elif variant == "rows":
            ts = [R.draw(spreadT) for _ in range(K)]
        elif variant == "rowsfam":  # each row a different family, cycled
            fams = sorted({t[0] for t in spreadT}); off = it
            ts = [random.choice([t for t in spreadT if t[0] == fams[(k + off) % len(fams)]]) for k in range(K)]
        elif variant == "blurw":  # families weighted: gaussian x2, box x2
            fams = ["identity", "gaussian", "gaussian", "box", "box", "resize", "jpeg"]
            ts = [random.choice([t for t in spreadT if t[0] == random.choice(fams)]) for _ in range(K)]
        elif variant == "lowpass":
            ts = [random.choice([t for t in spreadT if t[0] in ("gaussian", "box")]) for _ in range(K)]
        elif variant == "blur":
            ts = [("gaussian", random.choice([1.0,1.5,2.0,2.5,3.0]))] * K
        elif variant == "none":
            ts = [("identity", None)] * K
        delta.requires_grad_(True)
        if dlo is not None: dlo.requires_grad_(True)
        if dlo2 is not None: dlo2.requires_grad_(True)
        xa = (x + total(delta, dlo)).clamp(-1, 1)
        if os.environ.get("FRROW"):
            fas, fcs = [], []
            for _ in range(K):
                st = random.getstate(); fas.append(frame(xa)); random.setstate(st); fcs.append(frame(x))
        else:
            st = random.getstate(); fa = frame(xa); random.setstate(st); fc = frame(x)
            fas, fcs = [fa] * K, [fc] * K
        fa, fc = fas[0], fcs[0]
        ins = torch.cat([R.apply(t, rs(f)) for t, f in zip(ts, fas)]); cl = torch.cat([R.apply(t, rs(f)) for t, f in zip(ts, fcs)])
        out = G(ins, C)
        with torch.no_grad(): tgt = G(cl, C)
        loss = R.focused(out, tgt, FOC)
        if RN:  # each condition row's gradient at the generator's input scaled to one norm
            (gi,) = torch.autograd.grad(loss, ins, retain_graph=True)
            gn = gi / gi.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, 1, 1, 1)
            gn = gn * (gi.norm() / gn.norm().clamp_min(1e-20))
            loss = (ins * gn.detach()).sum()
        for _, g2, _, c2 in others:
            k2 = c2.shape[0]
            i2 = torch.stack([R.apply(ts[j % K], rs(fa))[0] for j in range(k2)])
            t2 = torch.stack([R.apply(ts[j % K], rs(fc))[0] for j in range(k2)])
            o2 = g2(i2, c2)
            with torch.no_grad(): tt2 = g2(t2, c2)
            loss = loss + R.focused(o2, tt2, 1.0)
        parts = [delta] + ([dlo] if dlo is not None else []) + ([dlo2] if dlo2 is not None else [])
        gs = list(torch.autograd.grad(loss, parts))
        with torch.no_grad():
            if TI: gs[0] = R.gaussian(gs[0], TI / 4, TI)
            if MU:
                for j in range(len(gs)):
                    mom[j] = MU * mom[j] + gs[j] / gs[j].abs().mean().clamp_min(1e-20); gs[j] = mom[j]
            delta = (delta + step * gs[0].sign()).clamp(-eps, eps)
            if dlo is not None: dlo = (dlo + step * gs[1].sign()).clamp(-eps, eps)
            if dlo2 is not None: dlo2 = (dlo2 + step * gs[-1].sign()).clamp(-eps, eps)
    with torch.no_grad():
        d = ((x + total(delta, dlo)).clamp(-1, 1) - x) * 127.5
        return x + d.round().clamp(-6, 6) / 127.5

res = {v: {d: [] for d in DEF} for v in variants}
t0 = time.time()
for r in rows:
    x = load(r); c = conds(r)
    for v in variants:
        random.seed(1); torch.manual_seed(1)
        xa = attack(x, v)
        with torch.no_grad():
            for dn, t in DEF.items():
                a = G(defend(t, rs(crop(xa))).expand(5, -1, -1, -1), c); b = G(defend(t, rs(crop(x))).expand(5, -1, -1, -1), c)
                res[v][dn].append((a - b).square().flatten(1).mean(1))
print(f"{time.time()-t0:.0f}s", file=sys.stderr)
for v in variants:
    line = [v]
    for dn in DEF:
        m = torch.stack(res[v][dn])
        line.append(f"{dn}: {100*(m>=0.05).float().mean():.0f}% mse {m.mean():.4f}")
    print(" | ".join(line))
    print("   per condition (black/blond/brown/male/young): " + " | ".join(
        dn + " " + "/".join(f"{100*v:.0f}" for v in (torch.stack(res[v][dn]) >= 0.05).float().mean(0)) for dn in DEF))
