"""How a model runs fastest for training: memory format and convolution kernels, switched in place.

``auto`` choices are made by measurement on the machine that runs them (:mod:`harness.models.autotune`):
the GEMM weight gradient per convolution geometry and, for convnets on a CPU, the memory format;
``on``/``off``/``gemm``/``native`` force them. A :class:`~harness.models.autotune.KernelPlan` says
what was chosen and why; a plan saved with a checkpoint is applied as it is (a resumed run keeps the
kernels its first attempt chose).
"""

from __future__ import annotations

import hashlib
import time

import torch

from harness.models.autotune import (
    ChoiceCache,
    KernelPlan,
    attention_shape,
    attention_trial,
    conv_geometries,
    measure_conv_wgrad,
    memory_format_trial,
)
from harness.models.conv_wgrad import GemmWgradConv2d, use_gemm_wgrad

TRIAL_BATCH = 32      # the memory-format trial's batch: a short forward + backward, not the run's batch
ATTENTION_TRIAL_BATCH = 256   # the attention trial's batch at most (a run's global crops are often 2 x its batch)


def apply_plan(model: torch.nn.Module, plan: KernelPlan) -> KernelPlan:
    """Put ``model`` in the plan's memory format and give its convolutions the plan's weight-gradient kernels."""
    model.to(memory_format=torch.channels_last if plan.channels_last else torch.contiguous_format)
    if plan.mode == "gemm":
        use_gemm_wgrad(model)
    elif plan.mode == "measured":
        use_gemm_wgrad(model, plan.conv_wgrad)
    else:
        for m in model.modules():
            if isinstance(m, GemmWgradConv2d):
                m.wgrad_choices = {}              # every geometry native
    return plan


def prepare_for_training(model: torch.nn.Module, convnet: bool, device: torch.device, precision: str,
                         channels_last: str = "auto", conv_wgrad: str = "auto", attention: str = "auto", *,
                         trial_model: torch.nn.Module | None = None,
                         channels: int = 3, sizes: tuple[int, ...] = (), batch: int = 0,
                         plan: KernelPlan | None = None, cache: ChoiceCache | None = None) -> KernelPlan:
    """Memory format and conv kernels for training, in place; returns the :class:`KernelPlan`.

    ``plan`` (from a checkpoint) is applied as it is. Otherwise: channels-last ``on``/``off``, or ``auto``
    (contiguous for non-convnets; on a GPU channels-last; on a CPU the faster of the two in a timed trial
    of ``trial_model``, the backbone, at the run's view size). The GEMM weight gradient (CPU, bf16,
    channels-last only): ``native``; ``gemm`` = the size rule of :mod:`harness.models.conv_wgrad`;
    ``auto`` = measured per geometry of ``trial_model``'s convolutions on ``sizes`` at ``batch`` (the
    per-process batch). Attention (ViTs): ``flash`` (PyTorch's default kernel) / ``math``, or ``auto`` = on a
    CPU the faster of the two in a timed trial of the backbone's attention shape at the largest view size
    (the plan's :meth:`~harness.models.autotune.KernelPlan.attention_context` applies it to the training
    step). Trials are cached per machine (:class:`ChoiceCache`). Without ``trial_model``
    / ``sizes`` / ``batch`` (callers that cannot say), ``auto`` falls back to the rules: channels-last
    for convnets, the size rule for the weight gradient."""
    if plan is not None:
        return apply_plan(model, plan)
    t0 = time.perf_counter()
    cache = cache or ChoiceCache()
    cpu_bf16 = device.type == "cpu" and precision == "bf16"
    can_measure = trial_model is not None and bool(sizes) and batch > 0 and device.type == "cpu"
    if channels_last == "off" or (channels_last == "auto" and not convnet):
        cl, cl_source = False, "rule"
    elif channels_last == "on" or not can_measure:
        cl, cl_source = True, "rule"
    else:
        cl, cl_source = None, "measured"            # decided below, after the weight-gradient kernels
    mode, choices, timings, source = "native", {}, {}, "rule"
    if cpu_bf16 and cl is not False and conv_wgrad == "gemm":
        mode = "gemm"
    elif cpu_bf16 and cl is not False and conv_wgrad == "auto":
        if can_measure:
            use_gemm_wgrad(trial_model)             # the trial needs the layers' geometry hooks
            choices, timings, _, source = measure_conv_wgrad(trial_model, channels, list(sizes), batch, cache)
            mode = "measured"
        else:
            mode = "gemm"
    plan = KernelPlan(channels_last=bool(cl), conv_wgrad=choices, mode=mode, timings=timings, source=source)
    apply_plan(model, plan)
    if cl is None:                                   # channels-last vs contiguous, timed with the kernels above
        size = max(sizes)
        geo = repr(conv_geometries(trial_model, channels, [size])) + repr(sorted(choices.items()))
        key = f"memfmt {precision} b{min(batch, TRIAL_BATCH)} @{size} {hashlib.sha1(geo.encode()).hexdigest()[:12]}"
        try:
            res, now = cache.get_or_measure(key, lambda: memory_format_trial(trial_model, channels, size,
                                                                             min(batch, TRIAL_BATCH), precision == "bf16"))
            cl_source = "measured" if now else "cache"
        except (RuntimeError, ValueError, AssertionError):   # the backbone does not take this input alone
            res, cl_source = {"choice": "on", "note": "no trial: the backbone alone did not take the views"}, "rule"
        plan.channels_last = res["choice"] == "on"
        plan.timings["memory_format"] = res
        if not plan.channels_last and plan.mode == "measured":
            plan.mode, plan.conv_wgrad = "native", {}   # the GEMM path needs channels-last inputs
        apply_plan(model, plan)
    attn_source = "rule"
    if attention in ("flash", "math"):
        plan.attention = attention
    elif can_measure and (shape := attention_shape(trial_model, max(sizes), min(batch, ATTENTION_TRIAL_BATCH))):
        key = f"attention {precision} {'x'.join(map(str, shape))}"
        try:
            res, now = cache.get_or_measure(key, lambda: attention_trial(shape, precision == "bf16"))
            attn_source = "measured" if now else "cache"
        except RuntimeError:                            # this torch build lacks a kernel: PyTorch's default
            res = {"choice": "flash", "note": "no trial: scaled_dot_product_attention failed on this shape"}
        plan.attention = res["choice"]
        plan.timings["attention"] = res
    sources = (source, cl_source, attn_source)
    plan.source = "measured" if "measured" in sources else ("cache" if "cache" in sources else "rule")
    plan.trial_seconds = time.perf_counter() - t0
    return plan
