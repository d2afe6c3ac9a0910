"""CLIP (Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger &
Sutskever, 2021), "Learning Transferable Visual Models From Natural Language Supervision".

An image encoder and a text encoder are trained jointly to tell which caption of a batch goes with
which image. The image tower is the run's backbone f and a linear projection W_i; the text tower is a
small transformer (``harness.TextTransformer``: token + position embeddings, pre-norm blocks with
causal self-attention, the [EOT] token's feature, a linear projection W_t). With L2-normalised
embeddings I = norm(W_i f(x)) and T = norm(W_t g(c)) of N pairs and a learnable temperature
(``logit_scale`` t, initialised to log(1 / 0.07) and clipped so that exp(t) <= 100), the loss is
the symmetric cross-entropy over the N x N cosine similarities (``methods.losses.clip_loss``):

    logits = exp(t) I T^T,   L = ( CE(logits, [0..N-1]) + CE(logits^T, [0..N-1]) ) / 2

Captions come from ``data.captions`` (``harness.data.captions``): a CSV / JSONL file of (image or
index, caption) rows, or ``templated`` (``a photo of a {class}.``, from the labels: the run is then
label-using and marked so). An image with several captions gets one at random per step
(``step.generator``). The tokenizer is a byte-level BPE (``harness.BPETokenizer``, the ``tokenizers``
library) trained on the run's distinct captions at its first step and kept in the checkpoint as a
uint8 buffer (``tokenizer_json``): a resumed run or ``sslbench eval`` reuses it, never retrains it.

Augmentation: a random square crop of the image is the only one in the paper (no flip by default).
Evaluation: ``encoder()`` is the backbone (kNN, linear); ``projector()`` is the image tower
(backbone + W_i); ``zero_shot_classifier(class_names)`` scores images against the prompts'
embeddings (``prompt_templates``, averaged over templates as the paper's prompt ensembling), the
``zero_shot`` protocol.

Paper defaults (ViT-B/32 text side): embed 512, text width 512, 12 layers, 8 heads, context 77,
BPE vocabulary 49152 (+ specials), Adam with decoupled weight decay 0.2, betas (0.9, 0.98),
LR 5e-4 at batch 32768 (here declared at batch 256 by linear scaling), cosine schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    BPETokenizer,
    ConfigError,
    Method,
    OptimDefaults,
    Requirements,
    TextTransformer,
    ViewRecipe,
    ViewSpec,
    at_least,
    between,
    gather_with_grad,
    positive,
    register_method,
)
from methods.losses import clip_loss


@dataclass
class CLIPConfig:
    embed_dim: int = positive(512)            # the joint embedding space
    vocab_size: int = at_least(49408, 259)    # BPE vocabulary, at most (256 bytes + 3 specials + merges)
    context_length: int = at_least(77, 3)     # tokens per caption, <sot> and <eot> included
    text_width: int = positive(512)
    text_layers: int = positive(12)
    text_heads: int = positive(8)
    temperature_init: float = positive(0.07)  # logit scale starts at log(1 / 0.07)
    max_logit_scale: float = positive(100.0)  # exp(logit_scale) is clipped to this
    learn_temperature: bool = True
    crop_min_scale: float = between(0.5, 0, 1, open_lo=True)   # random square crop (area fraction)
    flip: float = between(0.0, 0, 1)
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of a {class}."])   # zero-shot prompts

    checks = ((lambda c: c.text_width % c.text_heads == 0, "text_width divisible by text_heads"),
              (lambda c: bool(c.prompt_templates) and all("{class}" in t for t in c.prompt_templates),
               "prompt_templates non-empty, each containing {class}"),
              (lambda c: c.temperature_init >= 1 / c.max_logit_scale, "1 / temperature_init <= max_logit_scale"))


class ZeroShotHead(nn.Module):
    """Images -> cosine similarities with fixed class embeddings (C, D) of the text tower."""

    def __init__(self, image_tower: nn.Module, class_embeddings: torch.Tensor):
        super().__init__()
        self.image_tower = image_tower
        self.register_buffer("class_embeddings", F.normalize(class_embeddings.float(), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.image_tower(x).float(), dim=1)
        return z @ self.class_embeddings.t()


@register_method("clip", family="contrastive", paper="Radford et al., 2021 (CLIP)", venue="ICML 2021, arXiv:2103.00020")
class CLIP(Method):
    Config = CLIPConfig
    optim = OptimDefaults("adamw", base_lr=5e-4 * 256 / 32768, weight_decay=0.2, betas=(0.9, 0.98))
    requires = Requirements(captions=True)

    def __init__(self, backbone, cfg: CLIPConfig, info):
        super().__init__(backbone, cfg, info)
        self.image_proj = nn.Linear(backbone.num_features, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=backbone.num_features ** -0.5)
        self.text = TextTransformer(cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers,
                                    cfg.text_heads, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature_init)),
                                        requires_grad=cfg.learn_temperature)
        # the tokenizer's JSON (empty until it is trained at the first step; restored from checkpoints)
        self.register_buffer("tokenizer_json", torch.zeros(0, dtype=torch.uint8))
        self._captions = None
        self._tokens: torch.Tensor | None = None      # the distinct captions, tokenized (derived, not state)
        self._tokenizer: BPETokenizer | None = None
        self.tokenizer_trainings = 0                  # how often this process trained a tokenizer (tests)

    # ---------------------------------------------------------------- captions and tokenizer
    def attach_captions(self, captions) -> None:
        self._captions = captions
        self._tokens = None

    def resolved_params(self):
        c = self._captions
        return {"captions.mode": c.mode, "captions.fingerprint": c.fingerprint()} if c is not None else {}

    def tokenizer(self) -> BPETokenizer | None:
        """The run's tokenizer: trained on the captions the first time (then kept in ``tokenizer_json``),
        else read from the buffer; None before training when no captions are attached."""
        if self._tokenizer is None:
            if self.tokenizer_json.numel() == 0:
                if self._captions is None:
                    return None
                tok = BPETokenizer.train(self._captions.texts, self.cfg.vocab_size)
                self.tokenizer_trainings += 1
                self.tokenizer_json = tok.to_buffer().to(self.tokenizer_json.device)
            self._tokenizer = BPETokenizer.from_buffer(self.tokenizer_json)
        return self._tokenizer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "tokenizer_json"
        if key in state_dict:     # the saved tokenizer's length, whatever this one's
            self.tokenizer_json = torch.zeros_like(state_dict[key], device=self.tokenizer_json.device)
            self._tokenizer, self._tokens = None, None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def caption_tokens(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Tokens (B, context) of one caption per image (drawn with ``generator`` among its captions)."""
        if self._captions is None:
            raise ConfigError("clip needs captions: pass data.captions=FILE.csv|FILE.jsonl or data.captions=templated")
        tok = self.tokenizer()
        if self._tokens is None:
            self._tokens = tok.encode(self._captions.texts, self.cfg.context_length)
        c = self._captions
        idx = indices.cpu()
        lo, count = c.starts[idx], c.starts[idx + 1] - c.starts[idx]
        u = torch.rand(len(idx), generator=generator, device=generator.device).cpu()
        pick = lo + (u * count).long().clamp_(max=count - 1)
        return self._tokens[c.ids[pick]].to(indices.device)

    # ---------------------------------------------------------------- training
    def view_recipe(self, info):
        return ViewRecipe([ViewSpec(info.image_size, scale=(self.cfg.crop_min_scale, 1.0), ratio=(1.0, 1.0),
                                    flip=self.cfg.flip, jitter_p=0.0, gray_p=0.0)])

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.backbone(x))

    def training_step(self, batch, step):
        tokens = self.caption_tokens(batch.indices, step.generator)
        img = self.image_embedding(batch.views.images[0])
        txt = self.text(tokens)
        loss = clip_loss(gather_with_grad(img), gather_with_grad(txt), self.logit_scale, self.cfg.max_logit_scale)
        scale = self.logit_scale.detach().exp().clamp(max=self.cfg.max_logit_scale)
        return {"loss": loss, "logit_scale": scale}

    @torch.no_grad()
    def on_step_end(self, step):
        # the paper clips the logit scale at 100 (its code clamps the parameter after each step)
        self.logit_scale.clamp_(max=math.log(self.cfg.max_logit_scale))

    # ---------------------------------------------------------------- evaluation
    def projector(self):
        return nn.Sequential(self.backbone, self.image_proj)

    @torch.no_grad()
    def class_embeddings(self, class_names: list[str]) -> torch.Tensor | None:
        """(C, D) text embeddings of the class prompts: each template's normalised embedding, averaged
        over the templates and renormalised (the paper's prompt ensembling)."""
        tok = self.tokenizer()
        if tok is None:
            return None
        was = self.text.training
        self.text.eval()
        device = self.logit_scale.device
        try:
            per_template = []
            for template in self.cfg.prompt_templates:
                prompts = [template.replace("{class}", name) for name in class_names]
                emb = self.text(tok.encode(prompts, self.cfg.context_length).to(device)).float()
                per_template.append(F.normalize(emb, dim=1))
            return F.normalize(torch.stack(per_template).mean(0), dim=1)
        finally:
            self.text.train(was)

    def zero_shot_classifier(self, class_names):
        w = self.class_embeddings(list(class_names))
        return None if w is None else ZeroShotHead(self.projector(), w)
