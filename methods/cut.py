"""CUT (Park, Efros, Zhang & Zhu, 2020), "Contrastive Learning for Unpaired Image-to-Image Translation".

A generator G = G_dec o G_enc maps an image x of domain A (the source) to y_hat = G(x) that should look
like domain B (the target) while keeping x's content. Two losses train it, with no paired data:

* an adversarial loss: a PatchGAN discriminator D tells real B images from translated ones
  (least-squares GAN, the official code's default for CUT; ``methods.losses.gan_loss``);
* PatchNCE (sec. 3.1-3.2): the encoder G_enc, applied to the input x and to the output y_hat, gives
  features at several of its layers l (the padded input, both downsampling convs, the 1st and 5th
  residual block: ``nce_layers`` 0, 4, 8, 12, 16); a 2-layer MLP H_l per layer maps each sampled
  location (``num_patches`` = 256 locations per layer, the same for x and y_hat) to a 256-d vector;
  the output's feature at a location must pick the input's feature at the *same* location among the
  input's features at the other sampled locations of the same image (InfoNCE with tau = 0.07,
  ``methods.losses.patch_nce``; the input side gets no gradient, as in the official code). The loss is
  the mean over layers, times lambda_NCE.

CUT adds the same PatchNCE loss on target images, G(y) against y (identity PatchNCE, ``nce_idt``), and
weighs the two PatchNCE terms half each; lambda_NCE = 1. FastCUT (``mode=fastcut``) drops the identity
term, takes lambda_NCE = 10 and adds flip-equivariance (the input is flipped at random, the output's
features are flipped back before they are compared). Each step trains D, then G and the MLP heads
(two optimiser phases of the trainer: ``optimizer_phases``), both Adam(2e-4, betas 0.5 / 0.999);
D's phase translates its batch again without gradients (the same output G's phase computes:
instance norm, no dropout), so no graph is kept between phases.

Data: two image domains (``data.domains=[cat,dog]`` on a labelled dataset, or the unpaired
``trainA/ trainB/ testA/ testB/`` layout: ``harness.data.domains``); every batch is half A, half B.
Images stay in the harness's normalisation: G reads normalised views, its tanh output is mapped to
pixels in [0, 1] and normalised again, so D, G_enc and the evaluator all see one input space.
Augmentation: the official "resize to 286, random 256 crop, flip" is a random square crop of
(256/286)^2 of the area, resized back, and a horizontal flip.

Evaluation: ``encoder()`` is G_enc (the run's backbone ``cut_encoder`` / ``cut_encoder_small``,
average-pooled), scored by kNN / linear beside a random-init encoder of the same architecture;
``translator()`` is G, judged by the ``translation`` protocol (``evals.translation``).

Paper defaults (official code): ngf 64 with 9 residual blocks (5 in G_enc, ``decoder_blocks`` 4 in
G_dec), ndf 64 with 3 PatchGAN layers, instance norm, anti-aliased down/upsampling, Xavier init with
gain 0.02, Adam(2e-4, 0.5, 0.999) at batch 1 (declared here as 2e-4 x 256 at batch 256 by the
harness's linear scaling rule; the small preset sets the LR itself). Not reproduced: the paper's LR
schedule (constant for 200 epochs, then linear decay over 200): the harness's warm-up + cosine over the
budget applies to both optimisers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from harness import (
    ConfigError,
    Method,
    OptimDefaults,
    OptimPhase,
    PatchDiscriminator,
    Requirements,
    ResnetDecoder,
    ResnetEncoder,
    ViewRecipe,
    ViewSpec,
    at_least,
    between,
    choices,
    gan_init,
    mlp,
    positive,
    register_method,
)
from methods.losses import gan_loss, patch_nce


@dataclass
class CUTConfig:
    mode: str = choices("cut", "fastcut", default="cut")
    lambda_gan: float = positive(1.0, allow_zero=True)
    lambda_nce: float | None = positive(None, allow_zero=True)   # None: 1 (CUT) or 10 (FastCUT)
    nce_idt: bool | None = None                 # identity PatchNCE on target images; None: CUT yes, FastCUT no
    flip_equivariance: bool | None = None       # None: CUT no, FastCUT yes
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16], metadata={"min": 0})
    num_patches: int = positive(256)            # sampled locations per layer and image
    nce_temperature: float = positive(0.07)
    head_dim: int = positive(256)               # the MLP heads' width and output (netF_nc)
    decoder_blocks: int = at_least(4, 0)        # G_dec's residual blocks (resnet_9blocks: 9 - G_enc's 5)
    ndf: int = positive(64)                     # discriminator base width
    d_layers: int = positive(3)                 # PatchGAN stride-2 stages (3: 70x70 patches)
    gan_mode: str = choices("lsgan", "nonsaturating", default="lsgan")
    crop_scale: float = between((256 / 286) ** 2, 0, 1, open_lo=True)   # random square crop, area fraction
    flip: float = between(0.5, 0, 1)

    checks = ((lambda c: len(set(c.nce_layers)) == len(c.nce_layers) and len(c.nce_layers) > 0,
               "nce_layers non-empty and distinct"),)


class Translator(nn.Module):
    """G as a module: normalised source images -> normalised translated images (what ``translator()`` returns)."""

    def __init__(self, method: "CUT"):
        super().__init__()
        self.encoder, self.decoder = method.backbone, method.decoder
        self._method = [method]           # not a submodule: its weights are the two above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._method[0].generate(x)


@register_method("cut", family="applications", paper="Park, Efros, Zhang & Zhu, 2020 (CUT)",
                 venue="ECCV 2020, arXiv:2007.15651")
class CUT(Method):
    Config = CUTConfig
    optim = OptimDefaults("adamw", base_lr=2e-4 * 256, weight_decay=0.0, betas=(0.5, 0.999))
    requires = Requirements(backbone="cut_encoder", domains=True)
    unused_parameters = True      # each optimiser phase trains one part (D, or G and the heads)

    def __init__(self, backbone, cfg: CUTConfig, info):
        super().__init__(backbone, cfg, info)
        if not isinstance(backbone, ResnetEncoder):
            raise ConfigError(f"cut trains its ResNet generator's encoder; got backbone {type(backbone).__name__}: "
                              f"use backbone=cut_encoder (the paper's) or cut_encoder_small")
        fast = cfg.mode == "fastcut"
        self.lambda_nce = cfg.lambda_nce if cfg.lambda_nce is not None else (10.0 if fast else 1.0)
        self.nce_idt = cfg.nce_idt if cfg.nce_idt is not None else not fast
        self.flip_equivariance = cfg.flip_equivariance if cfg.flip_equivariance is not None else fast
        depth = len(backbone.layers)
        if max(cfg.nce_layers) >= depth:
            raise ConfigError(f"method_cfg.nce_layers={cfg.nce_layers}: the encoder {type(backbone).__name__} has "
                              f"layers 0..{depth - 1} (the official 0,4,8,12,16 need 5 residual blocks: cut_encoder)")
        self.nce_layers = sorted(cfg.nce_layers)
        self.decoder = ResnetDecoder(info.channels, backbone.ngf, cfg.decoder_blocks)
        self.heads = nn.ModuleList(gan_init(mlp(c, cfg.head_dim, cfg.head_dim, layers=2, bn=False))
                                   for c in backbone.tap_channels(self.nce_layers))
        self.discriminator = PatchDiscriminator(info.channels, cfg.ndf, cfg.d_layers)
        self._domains = None
        try:                                          # too small for the networks: refused before training
            with torch.no_grad():
                self.discriminator(self.generate(torch.zeros(1, info.channels, info.image_size, info.image_size)))
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"cut: {info.image_size} px images are too small for its networks "
                              f"({str(e).splitlines()[0][:100]}); lower method_cfg.d_layers (PatchGAN stages, now "
                              f"{cfg.d_layers}) or use larger images (data.image_size)") from None

    # ---------------------------------------------------------------- data
    def attach_domains(self, domains) -> None:
        self._domains = domains

    def resolved_params(self):
        return {"cut.lambda_nce": self.lambda_nce, "cut.nce_idt": self.nce_idt,
                "cut.flip_equivariance": self.flip_equivariance}

    def view_recipe(self, info):
        s = self.cfg.crop_scale
        return ViewRecipe([ViewSpec(info.image_size, scale=(s, s), ratio=(1.0, 1.0), flip=self.cfg.flip,
                                    jitter_p=0.0, gray_p=0.0)])

    # ---------------------------------------------------------------- the generator
    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """G(x): normalised images in, normalised images out (tanh -> [0, 1] pixels -> the views' normalisation)."""
        t = self.decoder(self.backbone.forward_features(x))
        return self.info.normalize((t.float() + 1) / 2).to(t.dtype)

    def translator(self):
        return Translator(self)

    def patch_nce_loss(self, source: torch.Tensor, output: torch.Tensor, gen: torch.Generator,
                       flipped: bool) -> torch.Tensor:
        """PatchNCE between an input and its output: mean over the layers of patch_nce, times lambda_NCE."""
        feats_q = self.backbone.taps(output, self.nce_layers)
        if flipped:                                  # FastCUT: the output of a flipped input, flipped back
            feats_q = [f.flip(3) for f in feats_q]
        with torch.no_grad():                        # the input side is a fixed target (detached in the official code)
            feats_k = self.backbone.taps(source, self.nce_layers)
        total = 0.0
        for f_q, f_k, head in zip(feats_q, feats_k, self.heads):
            hw = f_k.shape[2] * f_k.shape[3]
            ids = torch.randperm(hw, generator=gen, device=gen.device)[: self.cfg.num_patches].to(f_k.device)
            with torch.no_grad():
                k = head(f_k.flatten(2).transpose(1, 2)[:, ids])
            q = head(f_q.flatten(2).transpose(1, 2)[:, ids])
            total = total + patch_nce(q, k, self.cfg.nce_temperature)
        return total * self.lambda_nce / len(self.nce_layers)

    # ---------------------------------------------------------------- training
    def optimizer_phases(self):
        return [OptimPhase("discriminator", self.param_groups(self.discriminator)),
                OptimPhase("generator", self.param_groups(self.backbone, self.decoder, self.heads))]

    def training_step(self, batch, step):
        if self._domains is None:
            raise ConfigError("cut needs two image domains: pass data.domains=[A,B] or data.name=unpaired")
        x = batch.views.images[0]
        dom = self._domains.train[batch.indices.cpu()].to(x.device)
        real_a, real_b = x[dom == 0], x[dom == 1]
        mode = self.cfg.gan_mode
        if step.phase == "discriminator":
            with torch.no_grad():
                fake = self.generate(real_a)
            d_fake = gan_loss(self.discriminator(fake), False, mode)
            d_real = gan_loss(self.discriminator(real_b), True, mode)
            return {"loss": (d_fake + d_real) * 0.5, "d_fake": d_fake.detach(), "d_real": d_real.detach()}
        # the generator and the MLP heads
        real = torch.cat([real_a, real_b]) if self.nce_idt else real_a
        flipped = self.flip_equivariance and bool(torch.rand((), generator=step.generator,
                                                             device=step.generator.device) < 0.5)
        if flipped:
            real = real.flip(3)
        out = self.generate(real)
        fake, idt = out[: len(real_a)], out[len(real_a):]
        g_gan = gan_loss(self.discriminator(fake), True, mode) * self.cfg.lambda_gan
        nce = self.patch_nce_loss(real_a, fake, step.generator, flipped) if self.lambda_nce > 0 else fake.new_zeros(())
        logs = {"g_gan": g_gan.detach(), "nce": nce.detach()}
        if self.nce_idt and self.lambda_nce > 0:
            nce_idt = self.patch_nce_loss(real_b, idt, step.generator, flipped)
            logs["nce_idt"] = nce_idt.detach()
            nce = (nce + nce_idt) * 0.5
        return {"loss": g_gan + nce, **logs}
