"""Weight gradients of small-map convolutions as one GEMM (CPU, bf16).

Measured on this project's reference CPU (AMX, 2 cores, torch 2.14): oneDNN's bf16
backward-weights convolution kernel is fast on large feature maps but slow where the map is
small and the channels are many -- e.g. ResNet-18's last stage at 32 px input (512 -> 512, 3x3,
4x4 map, batch 256): 150-180 ms, against ~30 ms for the forward kernel at the same FLOPs. The
same gradient written as one matrix product,

    dL/dW[o, c, i, j] = sum_{b, y, x} g[b, o, y, x] * x_pad[b, c, y*s + i, x*s + j]
                      = (G^T @ cols)[o, (i, j, c)],

with G the output gradient as a (B*Ho*Wo, C_out) matrix and ``cols`` the (B*Ho*Wo, kh*kw*C_in)
im2col matrix of the input, runs on AMX through oneDNN's matmul. Its overhead (the im2col copy)
is 1/C_out of its FLOPs, and the native kernel's weakness grows with the weight's size per map
position, so the GEMM is used where ``C_in * C_out >= 1024 * Ho * Wo``. Layer forward + backward,
batch 256, native vs GEMM (``python benchmarks/conv_wgrad.py``): 512->512 at 4x4 1.89x faster,
256->512 stride 2 (to 4x4) 1.93x, 256->256 at 8x8 1.27x, cnn4's 128->256 at 4x4 1.65x. Below
the threshold the GEMM loses (64->128 at 8x8 0.92x, 128->128 at 16x16 0.75x, 64->64 at 32x32
0.56x), except 128->256 stride 2 (to 8x8), 1.11x, which the conservative threshold leaves native.

Only the weight gradient changes; the forward pass and the input gradient are the native ones,
so the numbers differ from the native path by bf16 rounding only (tests compare both against
an fp32 reference). The channels-last im2col buffer is reused across steps, one per shape and
thread: a fresh 38-150 MB allocation per call costs more in page faults than the copy itself.

``use_gemm_wgrad(model)`` switches a model's plain ``nn.Conv2d`` layers; parameters, buffers and
state-dict keys are unchanged, so checkpoints are interchangeable with the native path.
"""

from __future__ import annotations

import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

_local = threading.local()


def _cols_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    cache = getattr(_local, "cols", None)
    if cache is None:
        cache = _local.cols = {}
    key = (shape, dtype)
    if key not in cache:
        if len(cache) >= 8:        # shapes of a new model / crop size: drop the old buffers
            cache.clear()
        cache[key] = torch.empty(shape, dtype=dtype)
    return cache[key]


def im2col_weight_grad(x: torch.Tensor, g: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW of ``conv2d(x, W, stride, padding)`` (groups 1, dilation 1) given the output gradient ``g``,
    as one GEMM over a channels-last im2col matrix. Returns (C_out, C_in, kh, kw) in ``g``'s dtype."""
    b, c = x.shape[:2]
    co, ho, wo = g.shape[1:]
    kh, kw = kernel
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).permute(0, 2, 3, 1)   # B, Hp, Wp, C
    cols = _cols_buffer((b, ho, wo, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + stride[0] * (ho - 1) + 1:stride[0], j:j + stride[1] * (wo - 1) + 1:stride[1], :]
    g2 = g.permute(0, 2, 3, 1).reshape(-1, co)                                           # B*Ho*Wo, C_out
    return (g2.t() @ cols.view(-1, kh * kw * c)).view(co, kh, kw, c).permute(0, 3, 1, 2)


class _ConvGemmWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(g, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1],
                                                     False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = im2col_weight_grad(x, g, weight.shape[2:], ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3), dtype=torch.float32).to(g.dtype)
        return gx, gw, gb, None, None


def geometry_key(geo: tuple[int, ...]) -> str:
    """A convolution's geometry (c_in, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w, h, w) as the key of a
    measured kernel choice (``harness.models.autotune``)."""
    ci, co, kh, kw, sh, sw, ph, pw, h, w = geo
    return f"{ci}->{co} k{kh}x{kw} s{sh} p{ph} @{h}x{w}"


class GemmWgradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight gradient is the im2col GEMM when it runs on CPU under bf16 autocast
    (or on bf16 tensors), channels-last, with grad enabled, and either (``wgrad_choices`` is None, the
    size rule of ``train.conv_wgrad=gemm``) ``C_in * C_out >= weight_per_position * Ho * Wo``, or (a dict
    from ``train.conv_wgrad=auto``'s timed trial, :mod:`harness.models.autotune`) the trial chose the GEMM
    for this geometry; the native convolution everywhere else (a geometry the trial never saw included)."""

    weight_per_position = 1024
    wgrad_choices: dict[str, str] | None = None     # per instance when measured: {geometry_key: "gemm" | "native"}

    def _eligible(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.dim() != 4 or not torch.is_grad_enabled() or not self.weight.requires_grad:
            return False
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        bf16 = (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16) or \
            (x.dtype == torch.bfloat16 and self.weight.dtype == torch.bfloat16)
        if not bf16 or not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if self.wgrad_choices is not None:
            geo = (self.in_channels, self.out_channels, *self.kernel_size, *self.stride, *self.padding, x.shape[2], x.shape[3])
            return self.wgrad_choices.get(geometry_key(geo)) == "gemm"
        ho = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return self.in_channels * self.out_channels >= self.weight_per_position * ho * wo

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._eligible(x):
            return super()._conv_forward(x, weight, bias)
        dt = torch.bfloat16
        return _ConvGemmWeightGrad.apply(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt),
                                         self.stride, self.padding)


def use_gemm_wgrad(model: nn.Module, choices: dict[str, str] | None = None) -> int:
    """Switch every plain ``nn.Conv2d`` of ``model`` to :class:`GemmWgradConv2d` in place (subclasses such
    as timm's same-padding convs are left alone) and give every such layer ``choices`` (None: the size
    rule; a dict: the measured choice per geometry). Returns how many layers use the GEMM path."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = GemmWgradConv2d
        if isinstance(m, GemmWgradConv2d):
            m.wgrad_choices = None if choices is None else dict(choices)
            n += 1
    return n
