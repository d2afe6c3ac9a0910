"""Device and precision: which device a run uses and whether bf16 autocast is available there."""

from __future__ import annotations

import torch

from harness.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is available; use train.device=cpu or auto")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def apply_threads(threads: int | None) -> None:
    """``train.threads``: torch's intra-op threads for this process (None: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))
