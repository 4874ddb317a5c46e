"""Train one model of Veil's generator zoo and export it as TorchScript.

    python models/train/train.py MODEL --data DIR --out DIR [--tiny] [--iters N] [--batch B] [--width W]

MODEL is one of: stargan, ganimation, attgan, cyclegan, faceswap, stargan_adv, classifier, or `all`
(every model in turn; with --tiny this is how `make test` builds its fixtures), or `manifest` (write
OUT/manifest.toml for the generators already exported in OUT, as gpu.sh does after training them in
parallel). DIR is a CelebA-style
folder (attributes.csv + train/ val/ test/) or a tar made by pack.py; only the `train` split is read.

Each generator is exported to OUT/<model>.pt with the interface
`forward(x: [N,3,S,S] in [-1,1], c: [N,C]) -> [N,3,S,S] in [-1,1]`, weights stored in fp16 (Veil loads
them as fp32 on the CPU). A JSON log with parameters, iterations and seconds goes next to it
(OUT/<model>.json), and with `all` a manifest.toml for the whole folder.

--tiny: small widths, 32 px, a few hundred images and iterations: a fixture that trains on a laptop CPU
in seconds, for tests. It exercises the same code; its outputs are not meant to edit faces well.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import nets  # noqa: E402

GENERATORS = ["stargan", "ganimation", "attgan", "cyclegan", "faceswap", "stargan_adv"]
ALL = GENERATORS + ["classifier"]

# Role in Veil: `ensemble` models are attacked; `holdout` models only judge transfer in `veil eval`.
ROLES = {
    "stargan": "ensemble",
    "ganimation": "ensemble",
    "attgan": "ensemble",
    "faceswap": "ensemble",
    "cyclegan": "holdout",
    "stargan_adv": "holdout",
}

# The condition vectors the protection attacks (order: STARGAN_ATTRS). A user's photo has no labels,
# so the set spans the space: every hair colour, both sexes, both ages.
ATTACKED = [
    [1, 0, 0, 1, 1],
    [0, 1, 0, 0, 1],
    [0, 0, 1, 1, 0],
    [1, 0, 0, 0, 0],
    [0, 1, 0, 1, 0],
]


DEVICE = "cpu"

# The judge trains for this many passes over the split unless --iters says otherwise, its learning
# rate peaking at CLASSIFIER_LR.
CLASSIFIER_EPOCHS = 15
CLASSIFIER_LR = 2e-3


def settings(args) -> dict:
    tiny = args.tiny
    s = {
        "size": args.size or (32 if tiny else 128),
        "width": args.width or (4 if tiny else 32),
        "blocks": 1 if tiny else 4,
        "batch": args.batch or (8 if tiny else 16),
        "iters": args.iters or (30 if tiny else 20000),
        "iters_given": args.iters is not None,
        "limit": 256 if tiny else None,
        "lr": args.lr,
        "n_critic": 1 if tiny else args.n_critic,
        "pgd_iters": 2 if tiny else 10,
        "minutes": args.minutes,
        "adv_warmup": args.adv_warmup,
        "init": args.init,
        "init_dir": args.init_dir,
        "d_warmup": args.d_warmup,
        "attention_weight": args.attention_weight,
        "attention_cap": args.attention_cap,
        "state": args.state,
        "lr_warmup": args.lr_warmup,
        "lr_decay": args.lr_decay,
    }
    return s


def init_path(model: str, s: dict) -> str | None:
    """The exported generator `model` starts from: --init, else --init-dir/<model>.pt when it exists."""
    if s.get("init"):
        return s["init"]
    if s.get("init_dir"):
        path = os.path.join(s["init_dir"], f"{model}.pt")
        if os.path.exists(path):
            return path
    return None


def load_exported(net: nn.Module, path: str) -> None:
    """Loads the weights of an exported generator (TorchScript `Exported` around `net`, possibly
    through `Unconditional`) into `net`: the export's key prefix is whatever makes its keys `net`'s."""
    state = torch.jit.load(path, map_location="cpu").state_dict()
    want = set(net.state_dict())
    for prefix in ("g.", "g.net.", ""):
        stripped = {k.removeprefix(prefix): v.float() for k, v in state.items()}
        if set(stripped) == want:
            net.load_state_dict(stripped)
            print(f"initialized from {path}", flush=True)
            return
    raise SystemExit(f"error: {path} does not hold this architecture's weights (width or size differ?)")


@torch.no_grad()
def changes_nothing(g: nn.Module, x: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether `g` returns its inputs `x` ([B,3,S,S] in [-1,1]) unchanged, to within 1e-3 on average."""
    return (g(x, c) - x).abs().mean().item() < 1e-3


def critic_warmup(s: dict) -> int:
    """Critic-only iterations before the generator trains: a generator started from trained weights
    should not be pushed around by a critic that has not learned anything yet (a critic resumed with
    it from --state has)."""
    if s.get("d_warmup") is not None:
        return s["d_warmup"]
    return 200 if s.get("started_from") and not s.get("resumed") else 0


def lr_warmup(s: dict) -> int:
    """Iterations over which the learning rate ramps up from 0 when training goes on from trained
    weights (a --state or an exported generator); 0 for a model trained afresh. Adam starts with empty
    moments, so its first steps move every weight by about the learning rate whatever the gradient:
    506 iterations on from a trained StarGAN without a ramp took its edit success on val from 41.0 %
    to 19.7 % (models/README.md)."""
    if s.get("lr_warmup") is not None:
        return s["lr_warmup"]
    return 500 if s.get("resumed") or s.get("started_from") else 0


def decay(it: int, s: dict) -> float:
    """The --lr-decay factor for iteration `it`: 1 until the last fraction F of the run (of its
    --minutes when it has a deadline, else of its --iters), then linear down to 0.1 at the end. A
    lower learning rate at the end settles what a constant one leaves jittering: 3,399 more
    iterations of the face-swap autoencoder at a quarter of its rate took its val L1 from 0.0747 to
    0.0682 (models/README.md)."""
    f = s.get("lr_decay") or 0.0
    if f <= 0:
        return 1.0
    if s["deadline"] != float("inf"):
        left = (s["deadline"] - time.time()) / (s["deadline"] - s["started"])
    else:
        left = 1.0 - it / s["iters"]
    return 0.1 + 0.9 * min(1.0, max(0.0, left) / f)


def ramp(optimizers: list, it: int, s: dict) -> None:
    """Sets each optimizer's learning rate for iteration `it` (from 1): the --lr-warmup ramp, then
    the --lr-decay tail."""
    n = lr_warmup(s)
    factor = (min(1.0, it / n) if n > 0 else 1.0) * decay(it, s)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor


def state_path(model: str, s: dict) -> str | None:
    return os.path.join(s["state"], f"{model}.state.pt") if s.get("state") else None


def resume(model: str, s: dict, parts: dict[str, nn.Module]) -> bool:
    """Loads every network of `model`'s training (generator, critics, CycleGAN's second translator)
    from --state DIR/<model>.state.pt when it exists, so a GPU session goes on where the last one
    stopped, critics included. Returns whether it did; records the iterations done before."""
    path = state_path(model, s)
    if not path or not os.path.exists(path):
        return False
    saved = torch.load(path, map_location="cpu")
    if set(saved.get("nets", {})) != set(parts):
        raise SystemExit(f"error: {path} holds {sorted(saved.get('nets', {}))}, {model} trains {sorted(parts)}")
    for name, net in parts.items():
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["nets"][name].items()})
        except RuntimeError as e:
            raise SystemExit(f"error: {path}: {name} does not fit this architecture (width or size differ?): {e}")
    s["resumed"] = path
    s["iterations_before"] = int(saved.get("iterations", 0))
    print(f"resumed {model} from {path} ({s['iterations_before']} iterations before)", flush=True)
    return True


def save_state(model: str, s: dict, parts: dict[str, nn.Module]) -> None:
    """Writes `parts` (fp16) and the iterations done so far to --state DIR/<model>.state.pt. Adam's
    moments are not kept: fp16 would flush its second moments to zero, and fp32 doubles the size."""
    path = state_path(model, s)
    if not path or not parts:
        return
    os.makedirs(s["state"], exist_ok=True)
    half = {
        name: {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in net.state_dict().items()}
        for name, net in parts.items()
    }
    total = s.get("iterations_before", 0) + s["iters_done"]
    tmp = path + ".tmp"
    torch.save({"model": model, "iterations": total, "size": s["size"], "width": s["width"], "nets": half}, tmp)
    os.replace(tmp, path)
    print(f"[{model}] training state: {path} ({os.path.getsize(path)} bytes, {total} iterations in all)", flush=True)


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    src, _ = critic(mix)
    (grad,) = torch.autograd.grad(src.sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def pgd(g_frozen: nn.Module, x: torch.Tensor, c: torch.Tensor, eps=0.05, step=0.01, iters=10) -> torch.Tensor:
    """The paper's attack on a frozen generator: L-inf PGD from a random start, maximizing
    MSE(G(x_adv, c), G(x, c)). x `[B,3,S,S]` in [-1,1]."""
    with torch.no_grad():
        target = g_frozen(x, c)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(-1, 1)
    for _ in range(iters):
        x_adv.requires_grad_(True)
        loss = F.mse_loss(g_frozen(x_adv, c), target)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x + (x_adv + step * grad.sign() - x).clamp(-eps, eps)
            x_adv = x_adv.clamp(-1, 1)
    return x_adv.detach()


def train_conditional(model: str, train: D.Split, s: dict, log) -> tuple[nn.Module, dict[str, nn.Module]]:
    """StarGAN, GANimation-style, AttGAN-style and adversarially trained StarGAN: WGAN-GP critic with an
    attribute head, classification and reconstruction losses. Returns the generator and the networks
    whose state --state keeps."""
    c_dim = len(D.STARGAN_ATTRS)

    def new_generator() -> nn.Module:
        if model == "attgan":
            return nets.AttGAN(c_dim, s["width"])
        return nets.ResNetTranslator(c_dim, s["width"], s["blocks"], attention=(model == "ganimation"))

    g = new_generator()
    d = nets.Discriminator(s["size"], c_dim, s["width"], depth=5 if s["size"] >= 64 else 3)
    resumed = resume(model, s, {"g": g, "d": d})
    if not resumed and s.get("started_from"):
        # Start from an exported generator of the same architecture (e.g. stargan.pt for stargan_adv).
        load_exported(g, s["started_from"])
        x, c = train.batch(torch.arange(min(len(train), 16)))
        if changes_nothing(g, x.cpu(), D.random_targets(c).cpu()):
            # A generator stuck at the identity (zoo v0's GANimation, whose attention mask saturated at
            # 1) has no gradient to learn from: going on from it teaches nothing.
            print(f"{s['started_from']} returns its input unchanged: training {model} afresh", flush=True)
            s["started_from"] = None
            g = new_generator()
    g, d = g.to(DEVICE), d.to(DEVICE)
    g_from = critic_warmup(s)
    opt_g = torch.optim.Adam(g.parameters(), s["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), s["lr"], betas=(0.5, 0.999))
    adversarial = model == "stargan_adv"
    frozen = copy.deepcopy(g).eval().requires_grad_(False) if adversarial else None
    # The adversarial phase starts after a warm-up of plain StarGAN training (a fraction of the time
    # budget, or of the iterations): PGD against an untrained G teaches nothing, and each adversarial
    # iteration costs ~20 plain ones.
    if s["minutes"]:
        adv_from_time, adv_from_iter = s["started"] + 60 * s["minutes"] * s["adv_warmup"], 0
    else:
        adv_from_time, adv_from_iter = 0.0, int(s["iters"] * s["adv_warmup"])
    adv_since = None
    attention_mean = None  # ganimation: the mask's mean at the last generator step, for the log
    for it in range(1, s["iters"] + 1):
        if time.time() > s["deadline"]:
            s["iters_done"] = it - 1
            break
        if adversarial and adv_since is None and time.time() >= adv_from_time and it > adv_from_iter:
            adv_since = it
            s["adversarial_from_iter"] = it
        ramp([opt_g, opt_d], it, s)
        x, c_org = train.sample(s["batch"])
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        c_trg = D.random_targets(c_org)
        x_in = x
        if adv_since is not None:
            # G+D adversarial training: G learns to translate adversarial inputs, D sees their outputs.
            if (it - adv_since) % 50 == 0:
                frozen.load_state_dict(g.state_dict())
            x_in = pgd(frozen, x, c_trg, iters=s["pgd_iters"])

        # Critic.
        src_real, cls_real = d(x)
        fake = g(x_in, c_trg).detach()
        src_fake, _ = d(fake)
        loss_d = (
            src_fake.mean() - src_real.mean()
            + 10.0 * gradient_penalty(d, x, fake)
            + F.binary_cross_entropy_with_logits(cls_real, c_org)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        if it % s["n_critic"] == 0 and it > g_from:
            fake = g(x_in, c_trg)
            src, cls = d(fake)
            if model == "attgan":
                # AttGAN reconstructs with the image's own attributes instead of a cycle.
                rec = F.l1_loss(g(x_in, c_org), x)
            else:
                back_in = pgd(frozen, fake.detach(), c_org, iters=s["pgd_iters"]) if adv_since else fake
                rec = F.l1_loss(g(back_in, c_org), x)
            loss_g = -src.mean() + F.binary_cross_entropy_with_logits(cls, c_trg) + 10.0 * rec
            if model == "ganimation":
                a = g.attention_mask(x_in, c_trg)
                tv = (a[:, :, 1:] - a[:, :, :-1]).abs().mean() + (a[..., 1:] - a[..., :-1]).abs().mean()
                # GANimation's attention loss: A = 1 keeps the input pixel, and A saturates to 1 (a
                # generator that changes nothing) unless A itself is penalized; plus smoothness.
                loss_g = loss_g + s["attention_weight"] * a.mean() + 1e-4 * tv
                if s["attention_cap"] is not None:
                    # Keeping the input everywhere (A = 1) is where short trainings end up (zoo v0):
                    # past the cap, the colour branch must be used.
                    loss_g = loss_g + 10.0 * F.relu(a.mean() - s["attention_cap"])
                attention_mean = a.mean().detach()  # read at log time: .item() waits for the GPU
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        if it % max(1, s["iters"] // 20) == 0 or it == s["iters"]:
            extra = {"attention_mean": attention_mean.item()} if attention_mean is not None else {}
            log(it, loss_d=loss_d.item(), loss_g=loss_g.item() if it > g_from and it >= s["n_critic"] else float("nan"), **extra)
    return g, {"g": g, "d": d}


def train_cyclegan(train: D.Split, s: dict, log) -> tuple[nn.Module, dict[str, nn.Module]]:
    """CycleGAN between not-Young (A) and Young (B), LSGAN critics, cycle and identity losses.
    Returns the A->B translator (makes a face look younger)."""
    young = train.labels[:, D.STARGAN_ATTRS.index("Young")] > 0.5
    idx_a, idx_b = torch.nonzero(~young).flatten(), torch.nonzero(young).flatten()
    g_ab, g_ba = (nets.CycleTranslator(s["width"], s["blocks"]) for _ in range(2))
    d_a, d_b = (nets.Discriminator(s["size"], 0, s["width"], depth=3) for _ in range(2))
    parts = {"g_ab": g_ab, "g_ba": g_ba, "d_a": d_a, "d_b": d_b}
    if not resume("cyclegan", s, parts) and s.get("started_from"):
        # The export holds the A->B translator only; B->A starts afresh.
        load_exported(g_ab, s["started_from"])
    g_from = critic_warmup(s)
    d_a, d_b = d_a.to(DEVICE), d_b.to(DEVICE)
    g_ab, g_ba = g_ab.to(DEVICE), g_ba.to(DEVICE)
    opt_g = torch.optim.Adam(list(g_ab.parameters()) + list(g_ba.parameters()), s["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(d_a.parameters()) + list(d_b.parameters()), s["lr"], betas=(0.5, 0.999))
    bs = s["batch"]
    loss_g = torch.tensor(float("nan"))
    for it in range(1, s["iters"] + 1):
        if time.time() > s["deadline"]:
            s["iters_done"] = it - 1
            break
        ramp([opt_g, opt_d], it, s)
        a, _ = train.sample(bs, idx_a)
        b, _ = train.sample(bs, idx_b)
        fake_b, fake_a = g_ab(a), g_ba(b)
        if it > g_from:
            loss_g = (
                ((d_b(fake_b)[0] - 1) ** 2).mean() + ((d_a(fake_a)[0] - 1) ** 2).mean()
                + 10.0 * (F.l1_loss(g_ba(fake_b), a) + F.l1_loss(g_ab(fake_a), b))
                + 5.0 * (F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a))
            )
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        loss_d = 0.5 * (
            ((d_b(b)[0] - 1) ** 2).mean() + (d_b(fake_b.detach())[0] ** 2).mean()
            + ((d_a(a)[0] - 1) ** 2).mean() + (d_a(fake_a.detach())[0] ** 2).mean()
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if it % max(1, s["iters"] // 20) == 0 or it == s["iters"]:
            log(it, loss_d=loss_d.item(), loss_g=loss_g.item())
    return nets.Unconditional(g_ab), parts


def train_faceswap(train: D.Split, s: dict, log) -> tuple[nn.Module, dict[str, nn.Module]]:
    ae = nets.FaceSwapAE(s["size"], s["width"], code=64 if s["size"] < 64 else 512)
    if not resume("faceswap", s, {"ae": ae}) and s.get("started_from"):
        load_exported(ae, s["started_from"])
    ae = ae.to(DEVICE)
    opt = torch.optim.Adam(ae.parameters(), s["lr"] * 2.5, betas=(0.5, 0.999))
    for it in range(1, s["iters"] + 1):
        if time.time() > s["deadline"]:
            s["iters_done"] = it - 1
            break
        ramp([opt], it, s)
        x, _ = train.sample(s["batch"])
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        loss = F.l1_loss(ae(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % max(1, s["iters"] // 20) == 0 or it == s["iters"]:
            log(it, l1=loss.item())
    return nets.Unconditional(ae), {"ae": ae}


def classifier_settings(train: D.Split, s: dict) -> dict:
    """The judge's own run: 3/4 of --width, four times --batch, CLASSIFIER_EPOCHS passes over the split
    unless --iters is given, AdamW under a one-cycle schedule peaking at CLASSIFIER_LR."""
    batch = s["batch"] * 4
    iters = s["iters"] if s["iters_given"] else max(1, CLASSIFIER_EPOCHS * len(train) // batch)
    return dict(s, width=max(4, s["width"] * 3 // 4), batch=batch, iters=iters, lr=CLASSIFIER_LR,
                schedule="one-cycle")


def jitter(x: torch.Tensor) -> torch.Tensor:
    """Random scale (±6 %) and shift (±5 % of the side) of `[N,3,S,S]` in [-1,1], reflecting at the
    borders: an aligner's crop is never exact, and the judge must not learn where CelebA puts the hair."""
    n = x.shape[0]
    scale = 1 + (torch.rand(n, device=x.device) - 0.5) * 0.12
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device) - 0.5) * 0.1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def train_classifier(train: D.Split, s: dict, log) -> nn.Module:
    """The judge of `evaluate.py`. Positives are weighted by (1 - p) / p, p each attribute's frequency
    in the split, so a rare attribute (blond hair, 15 %) is not learned as "never": the judge is chosen
    for balanced accuracy, since edit success is scored on the attribute's rare side as often as not."""
    clf = nets.AttributeClassifier(len(D.STARGAN_ATTRS), width=s["width"]).to(DEVICE)
    batch = s["batch"]
    frac = train.labels.float().mean(0).clamp(0.01, 0.99)
    pos_weight = ((1 - frac) / frac).to(DEVICE)
    opt = torch.optim.AdamW(clf.parameters(), s["lr"] / 2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=s["iters"], pct_start=0.1)
    for it in range(1, s["iters"] + 1):
        if time.time() > s["deadline"]:
            s["iters_done"] = it - 1
            break
        x, y = train.sample(batch)
        if torch.rand(()) < 0.5:
            x = x.flip(3)
        loss = F.binary_cross_entropy_with_logits(clf(jitter(x)), y, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % max(1, s["iters"] // 20) == 0 or it == s["iters"]:
            log(it, bce=loss.item())
    return clf.eval()


class Exported(nn.Module):
    """The interface Veil attacks: forward(x, c) -> image, for every generator."""

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g = g

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.g(x, c)


def export(module: nn.Module, path: str, size: int, c_dim: int, takes_condition: bool = True) -> None:
    module = module.eval().cpu()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        if takes_condition:
            traced = torch.jit.trace(Exported(module), (x, torch.zeros(1, c_dim)))
        else:
            traced = torch.jit.trace(module, (x,))
    traced = traced.half()
    tmp = path + ".tmp"
    torch.jit.save(traced, tmp)
    os.replace(tmp, path)


def train_one(model: str, train: D.Split, s: dict, out: str) -> dict:
    torch.manual_seed(0)
    started = time.time()
    deadline = started + 60 * s["minutes"] if s["minutes"] else float("inf")
    if model == "classifier":
        s = classifier_settings(train, s)
    s = dict(s, started=started, deadline=deadline, iters_done=s["iters"])
    s["started_from"] = init_path(model, s) if model != "classifier" else None
    history = []

    def log(it, **values):
        history.append({"iter": it, **values})
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(f"[{model}] {it}/{s['iters']} {shown} ({time.time() - started:.0f}s)", flush=True)

    parts: dict[str, nn.Module] = {}
    if model == "classifier":
        net = train_classifier(train, s, log)
    elif model == "cyclegan":
        net, parts = train_cyclegan(train, s, log)
    elif model == "faceswap":
        net, parts = train_faceswap(train, s, log)
    else:
        net, parts = train_conditional(model, train, s, log)
    seconds = time.time() - started
    save_state(model, s, parts)
    path = os.path.join(out, f"{model}.pt")
    if model == "classifier":
        export(net, path, s["size"], 0, takes_condition=False)
    else:
        export(net, path, s["size"], len(D.STARGAN_ATTRS))
    info = {
        "model": model,
        "file": f"{model}.pt",
        "parameters": nets.param_count(net),
        "iterations": s["iters_done"],
        "batch": s["batch"],
        "size": s["size"],
        "width": s["width"],
        "seconds": round(seconds, 1),
        "device": torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "bytes": os.path.getsize(path),
        **({"adversarial_from_iter": s.get("adversarial_from_iter")} if model == "stargan_adv" else {}),
        **({"init": s["started_from"]} if s["started_from"] and not s.get("resumed") else {}),
        **({"critic_warmup_iters": critic_warmup(s)} if s["started_from"] and model != "faceswap" else {}),
        **({"resumed": s["resumed"], "iterations_in_all": s["iterations_before"] + s["iters_done"]} if s.get("resumed") else {}),
        **({"lr_warmup_iters": lr_warmup(s)} if lr_warmup(s) else {}),
        "lr": s["lr"],
        **({"schedule": s["schedule"]} if s.get("schedule") else {}),
        **({"lr_decay": s["lr_decay"]} if s.get("lr_decay") else {}),
        "history": history,
    }
    with open(os.path.join(out, f"{model}.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"[{model}] wrote {path}: {info['parameters']} parameters, {info['bytes']} bytes, {seconds:.0f}s")
    return info


def manifest(models: list[str], size: int) -> str:
    attrs = ", ".join(f'"{a}"' for a in D.STARGAN_ATTRS)
    conds = ", ".join("[" + ", ".join(str(v) for v in c) + "]" for c in ATTACKED)
    parts = ["# Written by models/train/train.py.\n"]
    for m in models:
        if m == "classifier":
            continue
        conditional = m not in ("cyclegan", "faceswap")
        parts.append(
            f'\n[[model]]\nname = "{m}"\nfile = "{m}.pt"\nrole = "{ROLES[m]}"\ninput_size = {size}\n'
            + (f"attributes = [{attrs}]\nconditions = [{conds}]\n" if conditional else "")
        )
    return "".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=ALL + ["all", "manifest"])
    p.add_argument("--data", help="CelebA-style folder or tar (train split is used)")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="test fixtures: seconds on a CPU")
    p.add_argument("--iters", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--minutes", type=float, help="stop each model after this many minutes (iterations run are logged)")
    p.add_argument("--n-critic", type=int, default=1)
    p.add_argument("--init", help="start the generator from this exported one (same architecture and width)")
    p.add_argument("--init-dir", help="start each generator from DIR/<model>.pt when it exists (e.g. models/, "
                   "to go on training the committed zoo)")
    p.add_argument("--d-warmup", type=int,
                   help="critic-only iterations before the generator trains (default: 200 when started from "
                   "an exported generator, else 0)")
    p.add_argument("--adv-warmup", type=float, default=0.4,
                   help="stargan_adv: fraction of the budget trained plainly before adversarial training")
    p.add_argument("--attention-weight", type=float, default=0.1,
                   help="ganimation: weight of the attention-mask penalty (GANimation's 0.1)")
    p.add_argument("--attention-cap", type=float,
                   help="ganimation: penalize (weight 10) a mean attention above this, so the mask cannot "
                   "settle on keeping the whole input")
    p.add_argument("--state", help="keep each model's whole training state (generator, critics; fp16) in "
                   "DIR/<model>.state.pt and go on from it when it is there, ahead of --init / --init-dir")
    p.add_argument("--lr-warmup", type=int,
                   help="iterations over which the learning rate ramps up from 0 (default: 500 when going on "
                   "from --state or an exported generator, else 0)")
    p.add_argument("--lr-decay", type=float, default=0.0,
                   help="generators: the last fraction of the run (of --minutes, else of --iters) over which the "
                   "learning rate falls linearly to a tenth (default 0: constant)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    s = settings(args)
    if args.model == "manifest":
        done = [m for m in GENERATORS if os.path.exists(os.path.join(args.out, f"{m}.pt"))]
        if not done:
            p.error(f"no exported generator in {args.out}")
        with open(os.path.join(args.out, "manifest.toml"), "w") as f:
            f.write(manifest(done, s["size"]))
        print(f"{args.out}/manifest.toml: {', '.join(done)}")
        return
    if not args.data:
        p.error("--data is required for training")
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Tiny fixtures train on one thread: on a busy machine (CI building in parallel) several OpenMP
    # threads spin against each other and run many times slower than one.
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    os.makedirs(args.out, exist_ok=True)
    train = D.load_split(args.data, "train", s["size"], limit=s["limit"]).to(DEVICE)
    print(f"train split: {len(train)} images at {s['size']} px; settings {s}", flush=True)
    models = ALL if args.model == "all" else [args.model]
    for m in models:
        train_one(m, train, s, args.out)
    if args.model == "all":
        with open(os.path.join(args.out, "manifest.toml"), "w") as f:
            f.write(manifest(models, s["size"]))


if __name__ == "__main__":
    main()
