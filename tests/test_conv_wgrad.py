"""The GEMM weight gradient of small-map convolutions (harness/models/conv_wgrad.py)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.device import bf16_supported
from harness.models.conv_wgrad import GemmWgradConv2d, im2col_weight_grad, use_gemm_wgrad

BF16 = bf16_supported(torch.device("cpu"))


@pytest.mark.parametrize("cin,cout,size,kernel,stride,padding", [
    (5, 7, 4, 3, 1, 1), (6, 4, 8, 3, 2, 1), (3, 5, 7, 3, 2, 1), (4, 6, 6, 1, 2, 0), (3, 2, 5, 3, 1, 0), (2, 3, 9, 5, 2, 2),
])
def test_im2col_weight_grad_equals_autograd_in_float64(cin, cout, size, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, size, size, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, kernel, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, stride=stride, padding=padding)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, w, gy)
    mine = im2col_weight_grad(x, gy.contiguous(memory_format=torch.channels_last), (kernel, kernel), (stride, stride),
                              (padding, padding))
    assert mine.shape == ref.shape
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-10)


def _grads(conv: nn.Module, x: torch.Tensor, gy: torch.Tensor, bf16: bool):
    x = x.clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.backward(gy)
    return y.float(), x.grad.float(), conv.weight.grad.clone(), conv.bias.grad.clone(), y.grad_fn


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 support")
@pytest.mark.parametrize("size,stride", [(4, 1), (8, 2)])
def test_gemm_wgrad_conv_matches_the_native_bf16_path_and_fp32(size, stride):
    torch.manual_seed(0)
    native = nn.Conv2d(128, 144, 3, stride=stride, padding=1).to(memory_format=torch.channels_last)
    gemm = nn.Conv2d(128, 144, 3, stride=stride, padding=1).to(memory_format=torch.channels_last)
    gemm.load_state_dict(native.state_dict())
    assert use_gemm_wgrad(gemm) == 1 and type(gemm) is GemmWgradConv2d
    x = torch.randn(16, 128, size, size).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(16, 144, 4, 4).contiguous(memory_format=torch.channels_last)
    y_n, gx_n, gw_n, gb_n, _ = _grads(native, x, gy, bf16=True)
    y_g, gx_g, gw_g, gb_g, fn = _grads(gemm, x, gy, bf16=True)
    assert "ConvGemmWeightGrad" in type(fn).__name__        # the GEMM path ran
    assert gw_g.dtype == torch.float32                        # the fp32 master weight gets an fp32 grad
    torch.testing.assert_close(y_g, y_n, rtol=0, atol=0)    # same forward kernel
    torch.testing.assert_close(gx_g, gx_n, rtol=0, atol=0)  # same input-gradient kernel
    _, _, gw_ref, gb_ref, _ = _grads(native, x, gy, bf16=False)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # bf16 rounding only: both bf16 paths are equally close to fp32 and very close to each other
    assert rel(gw_g, gw_ref) < 1e-2 and rel(gw_n, gw_ref) < 1e-2
    assert rel(gw_g, gw_n) < 1e-2
    assert rel(gb_g, gb_ref) < 1e-2 and rel(gb_n, gb_ref) < 1e-2


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 support")
def test_gemm_wgrad_only_where_eligible():
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False).to(memory_format=torch.channels_last)   # 16384 = 1024 * 4 * 4
    use_gemm_wgrad(conv)

    def fn_name(x, bf16=True, grad=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(grad):
            y = conv(x)
        return type(y.grad_fn).__name__ if y.grad_fn is not None else None

    small = torch.randn(2, 128, 4, 4).contiguous(memory_format=torch.channels_last)
    large = torch.randn(2, 128, 5, 5).contiguous(memory_format=torch.channels_last)   # 16384 < 1024 * 25
    assert "ConvGemmWeightGrad" in fn_name(small)
    assert "ConvGemmWeightGrad" not in fn_name(large)
    assert "ConvGemmWeightGrad" not in fn_name(small, bf16=False)     # fp32: native
    assert "ConvGemmWeightGrad" not in fn_name(small.contiguous())    # NCHW: native
    assert fn_name(small, grad=False) is None                          # inference: native, no graph
    with torch.no_grad():
        y = conv(small)   # also fine under no_grad / for evaluation
    assert y.shape == (2, 128, 4, 4)


def test_use_gemm_wgrad_keeps_parameters_and_state_dict_keys():
    from harness.models.backbones import build_backbone

    a = build_backbone("resnet18_cifar", 3, 32)
    keys = list(a.state_dict())
    n_convs = sum(type(m) is nn.Conv2d for m in a.modules())
    assert use_gemm_wgrad(a) == n_convs > 0
    assert list(a.state_dict()) == keys
    assert not any(type(m) is nn.Conv2d for m in a.modules())


@pytest.mark.parametrize("setting,expected", [("auto", True), ("native", False)])
def test_trainer_switches_small_map_convs_in_bf16_on_cpu(synthetic, tmp_path, setting, expected):
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    precision = "bf16" if BF16 else "fp32"
    cfg = resolve({"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
                   "train.progress": False, "train.precision": precision, "train.conv_wgrad": setting,
                   "budget.kind": "steps", "budget.value": 1})
    t = Trainer(cfg, synthetic, tmp_path)
    switched = any(isinstance(m, GemmWgradConv2d) for m in t.method.modules())
    assert switched == (expected and BF16)
