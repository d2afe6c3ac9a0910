"""Networks of unpaired image-to-image translation: the ResNet generator (Johnson et al., 2016, as CycleGAN
and CUT use it) split into its encoder and decoder, and the PatchGAN discriminator (Isola et al., 2017).

The generator G = G_dec o G_enc (CUT's notation, Park et al., 2020, sec. 3):

* :class:`ResnetEncoder` (registered as the backbones ``cut_encoder`` / ``cut_encoder_small``): reflection
  pad 3, conv 7x7 to ``ngf`` channels, instance norm, ReLU; two downsampling stages (conv 3x3 to twice the
  channels, instance norm, ReLU, anti-aliased blur-pool with stride 2, :class:`BlurDownsample`); then
  ``n_blocks`` residual blocks at ``4 ngf`` channels. Its layers are one ``nn.Sequential`` indexed as in the
  official code (0 = the padded input, 4 = the first downsampling conv, 8 = the second, 12 = the first
  residual block, 16 = the fifth), so CUT's PatchNCE layers ``0,4,8,12,16`` name the same tensors
  (:meth:`ResnetEncoder.taps`). As a backbone its output is the last layer averaged over a 4x4 grid of
  cells (``POOL_GRID``; 16 x 4 ngf features): every residual block adds an instance-normalised, hence
  zero-mean, map to its input, so a *global* average of the last layer is the same for almost every
  image (measured on CIFAR-10 cat/dog, random init: kNN@20 60.0 with the global mean vs 65.0 with the
  grid), while the cells keep where things are.
* :class:`ResnetDecoder`: the remaining residual blocks, two upsampling stages (anti-aliased transposed
  blur, :class:`BlurUpsample`, then conv 3x3 halving the channels, instance norm, ReLU), reflection pad 3,
  conv 7x7 to the image channels, tanh.
* :class:`PatchDiscriminator`: the 70x70 PatchGAN (``n_layers`` = 3): conv 4x4 + LeakyReLU 0.2 stages
  whose stride-2 steps are blur-pools, instance norm from the second stage, a 1-channel map of logits.

Instance norm has no affine parameters and no running statistics; convolutions before it carry a bias
(as in the official code). Weights start from Xavier-normal with gain 0.02, biases 0 (:func:`gan_init`,
CUT's ``init_type=xavier``, ``init_gain=0.02``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def gan_init(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Xavier-normal weights (gain ``gain``) and zero biases for every conv and linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _binomial(taps: int) -> torch.Tensor:
    row = {3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0]}[taps]
    k = torch.tensor(row)
    k = k[:, None] * k[None, :]
    return k / k.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling (Zhang, 2019): reflection pad 1, a 3x3 binomial blur per channel, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", _binomial(3).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Anti-aliased x2 upsampling: replicate pad 1, a transposed 4x4 binomial blur per channel (times 4), cropped
    to exactly twice the input size."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", (_binomial(4) * 4).expand(channels, 1, 4, 4).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype), stride=2,
                               padding=2, groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]


def _norm(c: int) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [reflect pad 1, conv 3x3, IN, ReLU, reflect pad 1, conv 3x3, IN](x)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _norm(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _norm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


POOL_GRID = 4     # the encoder's pooled output: the last layer averaged over POOL_GRID x POOL_GRID cells


class ResnetEncoder(nn.Module):
    """G_enc: stem, two anti-aliased downsampling stages, ``n_blocks`` residual blocks (see the module docstring)."""

    def __init__(self, in_chans: int = 3, ngf: int = 64, n_blocks: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_chans, ngf, 7), _norm(ngf), nn.ReLU(True)]
        c = ngf
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 3, padding=1), _norm(2 * c), nn.ReLU(True), BlurDownsample(2 * c)]
            c *= 2
        layers += [ResnetBlock(c) for _ in range(n_blocks)]
        self.layers = nn.Sequential(*layers)
        self.ngf, self.n_blocks, self.in_chans = ngf, n_blocks, in_chans
        self.channels = c
        self.num_features = c * POOL_GRID ** 2
        gan_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(x), POOL_GRID).flatten(1)

    def taps(self, x: torch.Tensor, layers: list[int] | tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of the given layers (indices into ``self.layers``, ascending), running only as deep as the last."""
        out, want = [], set(layers)
        for i, layer in enumerate(self.layers[: max(layers) + 1]):
            x = layer(x)
            if i in want:
                out.append(x)
        return out

    def tap_channels(self, layers) -> list[int]:
        """The channel count of each tapped layer's output (for the heads built on them)."""
        with torch.no_grad():
            probe = torch.zeros(1, self.in_chans, 16, 16)
            return [t.shape[1] for t in self.taps(probe, layers)]


class ResnetDecoder(nn.Module):
    """G_dec: ``n_blocks`` residual blocks at ``4 ngf`` channels, two anti-aliased upsampling stages, conv 7x7, tanh."""

    def __init__(self, out_chans: int = 3, ngf: int = 64, n_blocks: int = 4):
        super().__init__()
        c = 4 * ngf
        layers: list[nn.Module] = [ResnetBlock(c) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [BlurUpsample(c), nn.Conv2d(c, c // 2, 3, padding=1), _norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_chans, 7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        gan_init(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator: a map of real/fake logits, one per overlapping patch (70x70 at ``n_layers=3``)."""

    def __init__(self, in_chans: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, ndf, 4, padding=1), nn.LeakyReLU(0.2, True), BlurDownsample(ndf)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _norm(ndf * mult), nn.LeakyReLU(0.2, True),
                       BlurDownsample(ndf * mult)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, padding=1)]
        self.layers = nn.Sequential(*layers)
        gan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
