"""DeepMIM (Ren, Wei, Albanie, Zhang & Hu, 2023), "DeepMIM: Deep Supervision for Masked Image Modeling".

MAE (``methods.mae``: random 75% masking, an encoder of the visible patches, a decoder with mask
tokens, norm-pix MSE on the masked patches) plus deep supervision: the outputs of intermediate
encoder blocks feed decoders of their own, each reconstructing the same target, and the losses are
added with equal weight:

    L = L_MAE(decoder_0(z_L)) + sum_{l in taps} L_MAE(decoder_l(z_l))

Following the official code, the intermediate outputs go to their decoder without a normalisation
(the last block's output goes through the encoder's final norm, as in MAE), every decoder has its
own weights and mask token (only the fixed sin-cos positions are shared), and the taps of a 12-block
ViT-B are blocks 6, 8 and 10 (``tap_fractions`` 1/2, 2/3, 5/6 of the depth: blocks 3, 4, 5 of a
6-block ViT). The released code's target is a frozen CLIP's features; a CLIP checkpoint is not
available offline, so the target here is MAE's normalised pixels (the paper's pixel variant).

``encoder()`` is the ViT backbone (MAE's). Paper defaults: mask ratio 0.75, four decoders of width
512 and depth 4 (16 heads), AdamW (0.9, 0.95), base LR 1.5e-4 x batch/256, weight decay 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from harness import ConfigError, patchify, register_method
from methods.losses import mae_loss
from methods.mae import MAE, MAEConfig, MAEDecoder, encode_visible


def taps_of(fractions, depth: int, what: str, allow_last: bool = False) -> list[int]:
    """Block numbers (1-based) at ``fractions`` of a ViT's ``depth``: round(f * depth), distinct, in order."""
    taps = sorted({max(1, round(f * depth)) for f in fractions})
    hi = depth if allow_last else depth - 1
    if not taps or taps[-1] > hi:
        raise ConfigError(f"{what}: tap fractions {list(fractions)} give blocks {taps} of a {depth}-block ViT; "
                          f"choose fractions that land on blocks 1..{hi}")
    return taps


@dataclass
class DeepMIMConfig(MAEConfig):
    decoder_depth: int = 4
    tap_fractions: list[float] = field(default_factory=lambda: [1 / 2, 2 / 3, 5 / 6],
                                       metadata={"min": 0, "max": 1, "strict": True})
    deep_weight: float = 1.0           # weight of every intermediate decoder's loss (paper: 1)


@register_method("deepmim", family="masked image modelling", paper="Ren et al., 2023 (DeepMIM)",
                 venue="WACV 2025, arXiv:2303.08817")
class DeepMIM(MAE):
    Config = DeepMIMConfig

    def __init__(self, backbone, cfg: DeepMIMConfig, info):
        super().__init__(backbone, cfg, info)
        self.taps = taps_of(cfg.tap_fractions, len(backbone.blocks), "deepmim")
        out = self.patch * self.patch * info.channels
        self.deep_decoders = nn.ModuleList([
            MAEDecoder(backbone.embed_dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, self.grid,
                       self.num_prefix, out) for _ in self.taps])

    def training_step(self, batch, step):
        imgs = batch.views.images[0]
        latent, deep, mask, ids_restore = encode_visible(self.backbone, imgs, self.cfg.mask_ratio, step.generator,
                                                         self.taps)
        target = patchify(imgs, self.patch)
        main = mae_loss(self.forward_decoder(latent, ids_restore), target, mask, norm_pix=self.cfg.norm_pix_loss)
        out = {"main_loss": main.detach()}
        loss = main
        for tap, z, dec in zip(self.taps, deep, self.deep_decoders):
            l_tap = mae_loss(dec(z, ids_restore), target, mask, norm_pix=self.cfg.norm_pix_loss)
            out[f"loss_block{tap}"] = l_tap.detach()
            loss = loss + self.cfg.deep_weight * l_tap
        out["loss"] = loss
        return out
