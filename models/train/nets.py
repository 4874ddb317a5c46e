"""The architectures of Veil's generator zoo, the discriminators that train them, and the attribute
classifier that judges them. Every generator has the interface Veil attacks:

    forward(x: [N,3,H,W] in [-1,1], c: [N,C] in {0,1}) -> [N,3,H,W] in [-1,1]

Unconditional generators (CycleGAN-style, the face-swap autoencoder) take `c` and ignore it.
`width` scales every model so the same code yields the shipped models and the tiny test fixtures.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(ch: int) -> nn.Module:
    # Instance norm without running statistics: training and inference behave the same.
    return nn.InstanceNorm2d(ch, affine=True, track_running_stats=False)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), norm(ch), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), norm(ch),
        )

    def forward(self, x):
        return x + self.body(x)


def tile(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`[N,C]` -> `[N,C,h,w]`."""
    return c.view(c.shape[0], c.shape[1], 1, 1).expand(-1, -1, h, w)


class ResNetTranslator(nn.Module):
    """StarGAN's generator: the condition tiled and concatenated to the image, two stride-2 downs,
    residual blocks, two ups. With `attention`, the GANimation-style head: a colour image C and an
    attention mask A, output `A*x + (1-A)*C` (A near 1 keeps the input pixel)."""

    def __init__(self, c_dim: int, width: int = 32, blocks: int = 4, attention: bool = False):
        super().__init__()
        self.c_dim = c_dim
        self.attention = attention
        w = width
        layers = [nn.Conv2d(3 + c_dim, w, 7, 1, 3, bias=False), norm(w), nn.ReLU(inplace=True)]
        for i in range(2):
            layers += [nn.Conv2d(w, w * 2, 4, 2, 1, bias=False), norm(w * 2), nn.ReLU(inplace=True)]
            w *= 2
        layers += [ResBlock(w) for _ in range(blocks)]
        for i in range(2):
            layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False), norm(w // 2), nn.ReLU(inplace=True)]
            w //= 2
        self.body = nn.Sequential(*layers)
        self.color = nn.Conv2d(w, 3, 7, 1, 3)
        self.mask = nn.Conv2d(w, 1, 7, 1, 3) if attention else None

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([x, tile(c[:, : self.c_dim], x.shape[2], x.shape[3])], 1))
        color = torch.tanh(self.color(h))
        if self.mask is None:
            return color
        a = torch.sigmoid(self.mask(h))
        return a * x + (1 - a) * color

    def attention_mask(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([x, tile(c[:, : self.c_dim], x.shape[2], x.shape[3])], 1))
        return torch.sigmoid(self.mask(h))


class AttGAN(nn.Module):
    """AttGAN-style encoder-decoder: four stride-2 convs down, the attributes tiled and injected at the
    bottleneck and again at the first decoder layer, skip connections from the encoder."""

    def __init__(self, c_dim: int, width: int = 32):
        super().__init__()
        self.c_dim = c_dim
        w = width
        chans = [w, w * 2, w * 4, w * 8]
        self.enc = nn.ModuleList()
        prev = 3
        for ch in chans:
            self.enc.append(nn.Sequential(nn.Conv2d(prev, ch, 4, 2, 1, bias=False), norm(ch), nn.LeakyReLU(0.2, True)))
            prev = ch
        self.dec = nn.ModuleList()
        # dec[0]: bottleneck + attrs -> chans[2]; dec[1]: + skip chans[2] + attrs -> chans[1]; ...
        ins = [chans[3] + c_dim, chans[2] * 2 + c_dim, chans[1] * 2, chans[0] * 2]
        outs = [chans[2], chans[1], chans[0], w // 2]
        for i, o in zip(ins, outs):
            self.dec.append(nn.Sequential(nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), norm(o), nn.ReLU(True)))
        self.out = nn.Conv2d(w // 2, 3, 3, 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features of `x: [N,3,S,S]`, `[N,w·2^i,S/2^(i+1),S/2^(i+1)]` for i = 0..3."""
        feats = []
        h = x
        for layer in self.enc:
            h = layer(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c[:, : self.c_dim]
        feats = self.encode(x)
        h = feats[-1]
        h = self.dec[0](torch.cat([h, tile(c, h.shape[2], h.shape[3])], 1))
        h = self.dec[1](torch.cat([h, feats[2], tile(c, h.shape[2], h.shape[3])], 1))
        h = self.dec[2](torch.cat([h, feats[1]], 1))
        h = self.dec[3](torch.cat([h, feats[0]], 1))
        return torch.tanh(self.out(h))


class Unconditional(nn.Module):
    """Wraps an image-to-image net so it takes (x, c) and ignores c."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleTranslator(nn.Module):
    """CycleGAN's ResNet generator (no condition)."""

    def __init__(self, width: int = 32, blocks: int = 4):
        super().__init__()
        self.inner = ResNetTranslator(0, width, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, x.new_zeros(x.shape[0], 0))


class FaceSwapAE(nn.Module):
    """The classic deepfake autoencoder: conv encoder, dense bottleneck, conv decoder. A face-swap tool
    trains one shared encoder with a decoder per identity; Veil ships the reconstruction path, which is
    what a swap pushes a face through."""

    def __init__(self, size: int = 128, width: int = 32, code: int = 256):
        super().__init__()
        w = width
        self.side = size // 16
        self.enc = nn.Sequential(
            nn.Conv2d(3, w, 5, 2, 2), nn.LeakyReLU(0.1, True),
            nn.Conv2d(w, w * 2, 5, 2, 2), nn.LeakyReLU(0.1, True),
            nn.Conv2d(w * 2, w * 4, 5, 2, 2), nn.LeakyReLU(0.1, True),
            nn.Conv2d(w * 4, w * 8, 5, 2, 2), nn.LeakyReLU(0.1, True),
        )
        self.top = w * 8
        # A 1x1 squeeze to 32 channels keeps the dense bottleneck (and the file) small.
        self.squeeze = nn.Conv2d(self.top, 32, 1)
        self.fc_in = nn.Linear(32 * self.side * self.side, code)
        self.fc_out = nn.Linear(code, 32 * self.side * self.side)
        self.expand = nn.Conv2d(32, self.top, 1)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(w * 8, w * 4, 4, 2, 1), nn.LeakyReLU(0.1, True),
            nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1), nn.LeakyReLU(0.1, True),
            nn.ConvTranspose2d(w * 2, w, 4, 2, 1), nn.LeakyReLU(0.1, True),
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(w, 3, 5, 1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.squeeze(self.enc(x)).flatten(1)
        h = self.fc_out(self.fc_in(h)).view(-1, 32, self.side, self.side)
        return torch.tanh(self.dec(self.expand(h)))


class Discriminator(nn.Module):
    """PatchGAN critic with StarGAN's attribute head: `(src [N,1,h,w], cls [N,C])`."""

    def __init__(self, size: int, c_dim: int, width: int = 32, depth: int = 5):
        super().__init__()
        layers, ch, prev = [], width, 3
        for _ in range(depth):
            layers += [nn.Conv2d(prev, ch, 4, 2, 1), nn.LeakyReLU(0.01, True)]
            prev, ch = ch, ch * 2
        self.body = nn.Sequential(*layers)
        self.src = nn.Conv2d(prev, 1, 3, 1, 1)
        k = size // 2**depth
        self.cls = nn.Conv2d(prev, c_dim, k, 1, 0) if c_dim else None

    def forward(self, x):
        h = self.body(x)
        cls = self.cls(h).flatten(1) if self.cls is not None else None
        return self.src(h), cls


class AttributeClassifier(nn.Module):
    """A small CNN that predicts the five StarGAN attributes (logits `[N,5]`) from `[N,3,S,S]` in
    [-1,1]; it judges whether a generator performed its edit."""

    def __init__(self, c_dim: int = 5, width: int = 16):
        super().__init__()
        w = width
        layers, prev = [], 3
        for ch in [w, w * 2, w * 4, w * 8, w * 8]:
            layers += [nn.Conv2d(prev, ch, 3, 2, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
            prev = ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, c_dim)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
