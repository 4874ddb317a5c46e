"""Whether a generator's disruption survives a small change of the attacker's crop:
bench/results/framing-fragility-cpu-2026-11-27.md.

    python bench/framing_probe.py attgan      (from the repository root, with .venv)

Eager PGD (ε 0.05, IT steps of 0.01, random start, plain MSE against the clean output) on the first
N CelebA val photos (../shared/data/celeba, read in place), against one committed generator and the
manifest's attacked conditions. Each step the face is cut from the 178×218 photo and resized
(antialiased bilinear) to 128 px: at the standard aligned crop (rows 20..198) or, with JIT=j, at a
crop whose side and position are drawn up to j of the side away from it, as Veil's aligned framings
are. The adversarial photos are rounded to 8 bits, then judged on the paper's five conditions under
crops that differ from the standard one by a few pixels: mean MSE and the share of face × condition
pairs past 0.05.

Variants of the step (section 4 of the results file), all off by default:
- LOSS=mse (default) | gray (pull the output to mid-grey) | neg (pull it toward the negated clean
  output) | mask (GANimation: MSE plus LAM × lowering its attention mask, so the colour regression
  shows) | feat (AttGAN: MSE plus LAM × its encoder features' relative change). `mask` and `feat`
  load the exported weights into `models/train/nets.py`'s classes to reach those internals.
- TI=k: the gradient smoothed by a Gaussian of radius k px (σ k/2, `reference.gaussian`) before its
  sign (TI-FGSM).
- MU=m: momentum m on the L1-normalized gradient (MI-FGSM).
- COARSE=f: Veil's two-part perturbation (`protect.coarse`): a fine part at full resolution (from 0)
  plus a coarse part at 1/f of it (random start), upsampled bilinearly, their sum clamped to ±ε; each
  part takes its own sign step.
"""
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT + "/bench")
sys.path.insert(0, ROOT + "/models/train")
import data as D  # noqa: E402
import nets  # noqa: E402
import reference as R  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
N = int(os.environ.get("N", "8"))
IT = int(os.environ.get("IT", "10"))
JIT = float(os.environ.get("JIT", "0"))
LOSS = os.environ.get("LOSS", "mse")
LAM = float(os.environ.get("LAM", "1"))
TI = int(os.environ.get("TI", "0"))
MU = float(os.environ.get("MU", "0"))
COARSE = int(os.environ.get("COARSE", "0"))
EPS = 0.05
name = sys.argv[1]
_, G, _, conds = {g[0]: g for g in R.load(ROOT + "/models", "cpu")}[name]
if LOSS not in ("mse", "gray", "neg", "mask", "feat"):
    sys.exit(f"framing_probe: LOSS={LOSS}: expected mse, gray, neg, mask or feat")
OWNER = {"mask": "ganimation", "feat": "attgan"}  # the model whose internals the loss reaches
if LOSS in OWNER and name != OWNER[LOSS]:
    sys.exit(f"framing_probe: LOSS={LOSS} needs {OWNER[LOSS]}'s internals, not {name}'s")
if LOSS in ("mask", "feat"):
    # The same weights in the eager class, for its internals (exports name them `g.<layer>`).
    E = nets.ResNetTranslator(5, 32, 4, attention=True) if LOSS == "mask" else nets.AttGAN(5, 32)
    E.load_state_dict({k[2:]: v.float() for k, v in G.state_dict().items()})
    E.eval().requires_grad_(False)
K = conds.shape[0]
DATA = ROOT + "/../shared/data/celeba"
rows = D.first_rows(DATA, "val", N)
x = torch.cat([D.photo(DATA, r) for r in rows])  # [N,3,218,178] in [-1,1]
paper = torch.cat([D.row_targets(r) for r in rows])  # [N*5,5]: the paper's conditions per face

# The attacker's crops judged: (top, left, side) in the 178×218 photo.
VIEWS = {
    "standard crop": (20, 0, 178),
    "2 px lower": (22, 0, 178),
    "5 px lower": (25, 0, 178),
    "side 172 (−3.4 %)": (23, 3, 172),
    "side 166 (−6.7 %)": (26, 6, 166),
}


def view(img, top, left, side):
    """`[N,3,side,side]` cut at (top, left), resized to the generator's `[N,3,128,128]`."""
    return F.interpolate(img[:, :, top : top + side, left : left + side], size=(128, 128), mode="bilinear", antialias=True)


def drawn_crop():
    if JIT == 0:
        return VIEWS["standard crop"]
    u = lambda: 2 * torch.rand(()).item() - 1  # noqa: E731
    side = min(178, int(round(178 * (1 + JIT * u()))))
    top = 20 + (178 - side) // 2 + int(round(JIT * 178 * u()))
    return max(0, min(218 - side, top)), (178 - side) // 2, side


def loss_of(xc, xa):
    """The step's objective for clean and perturbed crops `[N·K,3,128,128]` in [-1,1]."""
    with torch.no_grad():
        target = G(xc, c_rows)
    out = G(xa, c_rows)
    if LOSS == "gray":
        return -(out**2).mean()
    if LOSS == "neg":
        return -((out + target) ** 2).mean()
    mse = ((out - target) ** 2).mean()
    if LOSS == "mask":
        return mse - LAM * E.attention_mask(xa, c_rows).mean()
    if LOSS == "feat":
        with torch.no_grad():
            fc = E.encode(xc)
        return mse + LAM * sum(((a - b) ** 2).mean() / (b**2).mean() for a, b in zip(E.encode(xa), fc))
    return mse


c_rows = conds.repeat(N, 1)
H, W = x.shape[2], x.shape[3]


def smooth(g):
    return R.gaussian(g, TI / 2, 2 * TI + 1) if TI > 0 else g  # radius TI, σ TI/2, reflected edges


def delta(fine, coarse):
    """δ `[N,3,218,178]` in [-ε,ε] from its parts."""
    if coarse is None:
        return fine
    return (fine + F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)).clamp(-EPS, EPS)


if COARSE > 1:
    d = torch.zeros_like(x)
    dc = (torch.rand(N, 3, -(-H // COARSE), -(-W // COARSE)) * 2 - 1) * EPS
else:
    d, dc = (torch.rand_like(x) * 2 - 1) * EPS, None
mom = torch.zeros_like(x)
for _ in range(IT):
    d.requires_grad_(True)
    if dc is not None:
        dc.requires_grad_(True)
    crop = drawn_crop()
    xa = (x + delta(d, dc)).clamp(-1, 1)
    loss = loss_of(view(x, *crop).repeat_interleave(K, 0), view(xa, *crop).repeat_interleave(K, 0))
    if dc is None:
        (g,) = torch.autograd.grad(loss, d)
    else:
        g, gc = torch.autograd.grad(loss, [d, dc])
        dc = (dc.detach() + 0.01 * gc.sign()).clamp(-EPS, EPS)
    g = smooth(g)
    if MU > 0:
        mom = MU * mom + g / g.abs().mean(dim=(1, 2, 3), keepdim=True)
        g = mom
    d = (d.detach() + 0.01 * g.sign()).clamp(-EPS, EPS)
d = delta(d, dc)
adv = ((x + d).clamp(-1, 1) * 127.5).round() / 127.5
for label, crop in VIEWS.items():
    a, c = view(adv, *crop).repeat_interleave(5, 0), view(x, *crop).repeat_interleave(5, 0)
    with torch.no_grad():
        m = ((G(a, paper) - G(c, paper)) ** 2).flatten(1).mean(1)
    print(f"{name} IT={IT} JIT={JIT} LOSS={LOSS} LAM={LAM} TI={TI} MU={MU} COARSE={COARSE} | {label} | {m.mean().item():.4f} | {100 * (m >= 0.05).float().mean().item():.0f} %")
