"""A small text tower and its tokenizer, for methods that learn from captions (CLIP).

* :class:`BPETokenizer`: a byte-level BPE tokenizer of the ``tokenizers`` library, trained on a run's
  captions (:meth:`BPETokenizer.train`; lower-cased and NFKC-normalised as CLIP's, any text encodes:
  the 256 byte symbols are always in the vocabulary). It serialises to its JSON (``to_json``), which a
  method keeps in a uint8 buffer of its ``state_dict`` (so a checkpoint holds it and stays
  ``torch.load(weights_only=True)``-loadable, and a resumed run does not retrain it).
* :class:`TextTransformer`: CLIP's text encoder (Radford et al., 2021, sec. 2.4) scaled down: token
  embedding + learned positions, pre-norm transformer blocks (torch's ``TransformerEncoderLayer``)
  with causal (masked) self-attention, a final LayerNorm, and the feature at the [EOT] token linearly
  projected into the joint embedding space.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"   # ids 0, 1, 2
SPECIALS = (PAD, SOT, EOT)
MIN_VOCAB = 256 + len(SPECIALS)             # the byte alphabet and the special tokens


class BPETokenizer:
    """Byte-level BPE (``tokenizers``): ``encode(texts, context)`` -> int64 (N, context) of
    ``<sot> tokens <eot> <pad>...``; a text longer than ``context - 2`` tokens is cut, keeping its <eot>."""

    def __init__(self, tok):
        self.tok = tok
        self.pad_id, self.sot_id, self.eot_id = (tok.token_to_id(t) for t in SPECIALS)
        if None in (self.pad_id, self.sot_id, self.eot_id):
            raise ValueError("not an sslbench BPE tokenizer (no <pad>/<sot>/<eot> tokens)")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> "BPETokenizer":
        """Trained on ``texts`` (deterministic: the same texts give the same tokenizer, in any process).
        The vocabulary has at most ``vocab_size`` entries (fewer when the texts have fewer merges)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIALS)} special tokens)")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tok.to_str()

    def to_buffer(self) -> torch.Tensor:
        """The tokenizer's JSON as a uint8 tensor (a buffer of a method's state_dict)."""
        return torch.frombuffer(bytearray(self.to_json().encode("utf-8")), dtype=torch.uint8).clone()

    @classmethod
    def from_buffer(cls, t: torch.Tensor) -> "BPETokenizer":
        return cls.from_json(t.detach().cpu().numpy().tobytes().decode("utf-8"))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: list[str], context: int) -> torch.Tensor:
        out = torch.full((len(texts), context), self.pad_id, dtype=torch.int64)
        for i, enc in enumerate(self.tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.sot_id, *enc.ids[: context - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


class TextTransformer(nn.Module):
    """tokens (B, L) int64 -> (B, out_dim): the projected feature at each row's [EOT] token (``eot_id``)."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, out_dim: int,
                 eot_id: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        self.context_length, self.eot_id = context_length, eot_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, out_dim, bias=False)
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)
        self._init(width, layers)

    def _init(self, width: int, layers: int) -> None:
        """CLIP's initialisation (its ``initialize_parameters``)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        for b in self.blocks:
            nn.init.normal_(b.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(b.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(b.linear1.weight, std=fc_std)
            nn.init.normal_(b.linear2.weight, std=proj_std)
        nn.init.normal_(self.projection.weight, std=width ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.context_length}")
        eot = (tokens == self.eot_id).int().argmax(dim=1)    # the first [EOT] of each row
        # attention is causal: positions after the batch's last [EOT] never reach a feature that is read
        n = int(eot.max()) + 1 if len(tokens) else tokens.shape[1]
        tokens = tokens[:, :n]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        mask = self.causal_mask[:n, :n].to(x.dtype)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        x = self.ln_final(x)
        return self.projection(x[torch.arange(len(tokens), device=tokens.device), eot])
