"""How strongly zoo v0's StarGAN responds to changes of its input, per paper condition.

    python bench/condition_gain.py          (from the repository root, with .venv; N images, 20)

On the first N CelebA `val` faces (../shared/data/celeba, read in place; the attacker's 178 px crop
at 128 px), prints per condition (set black / blond / brown hair, flip Male, flip Young) the mean MSE
between G(x', c) and G(x, c) for x' = x blurred (Gaussian k11 σ1.5), x + random ±0.05 per pixel, and
x + a random ±0.05 pattern at 1/8 resolution upsampled, and the share of output values past ±0.95.
A condition with a lower response needs a larger perturbation to pass the 0.05 threshold.
"""
import sys, os, torch, torch.nn.functional as F
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench")); import reference as R
sys.path.insert(0, os.path.join(ROOT, "models", "train")); import data as D
torch.set_num_threads(1); torch.manual_seed(0)
G = [g for g in R.load(os.path.join(ROOT, "models"), "cpu") if g[0] == "stargan"][0][1]
DATA = os.path.join(ROOT, "..", "shared", "data", "celeba")
rows = D.first_rows(DATA, "val", int(os.environ.get("N", "20")))
acc = {k: [] for k in ["blur_in", "noise_hi", "noise_lo8", "sat"]}
with torch.no_grad():
    for r in rows:
        x = D.photo(DATA, r)[:, :, 20:198]
        x = F.interpolate(x, size=(128, 128), mode="bilinear", antialias=True)
        c = D.row_targets(r); xs = x.expand(5, -1, -1, -1); y = G(xs, c)
        m = lambda a, b: (a - b).square().flatten(1).mean(1)
        acc["blur_in"].append(m(G(R.gaussian(xs, 1.5), c), y))
        acc["noise_hi"].append(m(G((xs + 0.05 * torch.randn(1, 3, 128, 128).sign()).clamp(-1, 1), c), y))
        lo = F.interpolate(torch.randn(1, 3, 16, 16), size=(128, 128), mode="bilinear").sign() * 0.05
        acc["noise_lo8"].append(m(G((xs + lo).clamp(-1, 1), c), y))
        acc["sat"].append((y.abs() > 0.95).float().flatten(1).mean(1))
for k, v in acc.items():
    v = torch.stack(v).mean(0)
    print(f"{k:10s} " + " / ".join(f"{x:.4f}" for x in v) + "   (black/blond/brown/male/young)")
