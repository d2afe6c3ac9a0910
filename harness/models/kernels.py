"""How a model runs fastest for training: memory format and convolution kernels, switched in place."""

from __future__ import annotations

import torch

from harness.models.conv_wgrad import use_gemm_wgrad


def prepare_for_training(model: torch.nn.Module, convnet: bool, device: torch.device, precision: str,
                         channels_last: str = "auto", conv_wgrad: str = "auto") -> bool:
    """Memory format and conv kernels for training, in place: channels-last for convnets (``auto``), and
    on CPU in bf16 the GEMM weight gradient for small-map convs (harness/models/conv_wgrad.py). Returns whether
    the model is channels-last (its inputs must then be too)."""
    cl = channels_last == "on" or (channels_last == "auto" and convnet)
    if cl:
        model.to(memory_format=torch.channels_last)
    if conv_wgrad == "gemm" or (conv_wgrad == "auto" and device.type == "cpu" and precision == "bf16" and cl):
        use_gemm_wgrad(model)
    return cl
