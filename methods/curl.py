"""CURL (Laskin, Srinivas & Abbeel, 2020), "CURL: Contrastive Unsupervised Representations for
Reinforcement Learning".

CURL learns the encoder of a pixel-based agent with a contrastive objective on its own observations.
From a batch of observations o (stacks of consecutive frames), two random crops give a query view
o_q and a key view o_k of each. The query encoder f_q (the encoder, then a small projection) maps
o_q to q = f_q(o_q); the key encoder f_k, an exponential moving average of the query encoder,

    theta_k <- m theta_k + (1 - m) theta_q       (``EMATeacher``, after every step)

maps o_k to k = f_k(o_k), with no gradient. Similarity is bilinear, q^T W k, with a learned W, and the
loss is InfoNCE over the batch: the key of the same observation is the positive, the keys of the
other observations are the negatives (``methods.losses.curl_loss``):

    L = -1/N sum_i log( exp(q_i^T W k_i) / sum_j exp(q_i^T W k_j) )

In the agent, L is an auxiliary loss beside the reinforcement-learning loss, both training the
shared encoder (``sslbench rl``, ``harness.rl``); as a pretraining method on collected frames
(``data.name=atari``) it is the only loss.

Settings: the paper's Atari agent (its code, curl_rainbow, built on data-efficient Rainbow): views by
CURL's Atari crop -- a random 80x80 crop of the 84x84 frames, replicate-padded by 4 and randomly cropped
back to 84 (``ViewRecipe.shifted``: a shift of at most 4 px, the frames keep their size, so the encoder
sees the evaluation's and the agent's 84x84 observations; the DMControl agent's 84-from-100 crop
needs larger renders than the standard Atari frames); projection Linear(D, 256) - LayerNorm - ReLU -
Linear(256, 128) - LayerNorm (LayerNorms without parameters, as there); W (128 x 128) initialised
uniformly in [0, 1); the logits scaled by 0.1 (curl_rainbow; Eq. 5 of the paper has no scale, its
DMControl code neither: ``logit_scale=1``); key momentum m = 0.999 per step; Adam at 1e-4 with batch 32
(8e-4 at the harness's reference batch 256, linear scaling), no weight decay. The encoder the
evaluator scores is f_q's encoder (the run's backbone: ``dqn_der`` is the paper's Atari encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness import EMATeacher, Method, OptimDefaults, Requirements, ViewRecipe, at_least, between, mlp, positive, register_method
from methods.losses import curl_loss


@dataclass
class CURLConfig:
    proj_hidden: int = positive(256)          # the projection's hidden width
    proj_dim: int = positive(128)             # q, k: 128-d
    momentum: float = between(0.999, 0, 1)    # the key encoder's EMA momentum, per step
    logit_scale: float = positive(0.1)        # logits = logit_scale * q^T W k
    shift: int = at_least(4, 1)               # crop S - shift, pad shift, crop S (80 / 4 / 84 on Atari frames)


@register_method("curl", family="applications", paper="Laskin, Srinivas & Abbeel, 2020 (CURL)",
                 venue="ICML 2020, arXiv:2004.04136")
class CURL(Method):
    Config = CURLConfig
    requires = Requirements(any_channels=True)
    optim = OptimDefaults("adamw", base_lr=8e-4, weight_decay=0.0)

    def __init__(self, backbone, cfg: CURLConfig, info):
        super().__init__(backbone, cfg, info)
        self.projection = mlp(backbone.num_features, cfg.proj_hidden, cfg.proj_dim, layers=2, bn=False, ln=True,
                              last_ln=True)
        self.W = nn.Parameter(torch.rand(cfg.proj_dim, cfg.proj_dim))
        self.key_encoder = EMATeacher(self._query_encoder())   # f_k: in the state_dict, so checkpoints carry it

    def _query_encoder(self) -> nn.Sequential:
        # built on the fly (not a registered submodule), so weights are not listed twice
        return nn.Sequential(self.backbone, self.projection)

    def view_recipe(self, info):
        return ViewRecipe.shifted(info.image_size, self.cfg.shift)

    def training_step(self, batch, step):
        o_q, o_k = batch.views.images[:2]
        q = self.projection(self.backbone(o_q))
        with torch.no_grad():
            k = self.key_encoder(o_k)
        return {"loss": curl_loss(q, k, self.W, self.cfg.logit_scale)}

    @torch.no_grad()
    def on_step_end(self, step):
        self.key_encoder.update(self._query_encoder(), self.cfg.momentum)

    def projector(self):
        return self._query_encoder()
