"""Kernel choices by measurement: a short timed trial on the run's own shapes, cached per machine.

The CPU behind this project changes from day to day, and a kernel tuned on one loses on another:
on an Intel CPU with AMX the im2col GEMM weight gradient of small-map convolutions
(:mod:`harness.models.conv_wgrad`) won 1.3-1.9x per layer, on an AMD EPYC with AVX-512 BF16 and no
AMX another session measured it as a small loss over the whole step, and on a third (this module's
first machine, also an EPYC) oneDNN's native bf16 weight gradient was 4.5x slower than the GEMM for
ResNet-18. So ``train.conv_wgrad=auto`` and ``train.channels_last=auto`` decide on the machine that
runs them:

* **conv weight gradient** (CPU, bf16, channels-last): every convolution geometry the backbone
  meets on the run's views (in/out channels, kernel, stride, padding, input size; found by one
  forward of a 2-image batch) is timed both ways at the run's per-process batch (the native oneDNN
  backward-weights kernel vs the GEMM, the fastest of 3 interleaved runs after a warm-up), and gets the
  faster one;
* **memory format** (convnets): the backbone's forward + backward on a small batch of the run's
  view size, channels-last (with the weight-gradient choice above) vs contiguous.

Results are cached in ``$SSLBENCH_CACHE_DIR`` (default ``~/.cache/sslbench``)
``/kernel_choices.json`` per machine key (CPU model with its vector extensions, torch and oneDNN
versions, threads) and trial shape, so a machine measures a shape once. The decision travels with
the run: the trainer logs it (``train.resolved.conv_wgrad`` / ``train.resolved.channels_last`` params,
the ``sslbench.kernels`` tag with the timings) and keeps it in the checkpoint, so a resumed run uses
the choice its first attempt made (the two kernels differ by bf16 rounding, and a resume must equal
the uninterrupted run bit for bit).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.device import cpu_model
from harness.models.conv_wgrad import GemmWgradConv2d, geometry_key, im2col_weight_grad

CACHE_ENV = "SSLBENCH_CACHE_DIR"
CACHE_FILE = "kernel_choices.json"
MARGIN = 0.95          # the GEMM must beat the native kernel by 5% to be chosen (native is the reference)
REPS = 3


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/sslbench").expanduser()


@functools.lru_cache(maxsize=None)
def onednn_version() -> str:
    for line in torch.__config__.show().splitlines():
        if "DNN v" in line:                       # "Intel(R) MKL-DNN v3.12.0 (Git Hash ...)" / "oneDNN v3..."
            return line.split(" v", 1)[1].split()[0]
    return "none"


def machine_key() -> str:
    """What a kernel's speed depends on: the chip and its vector extensions, torch, oneDNN, threads."""
    return f"{cpu_model()} | torch {torch.__version__} | oneDNN {onednn_version()} | {torch.get_num_threads()} threads"


def machine_summary() -> str:
    """One line for benchmarks and logs: CPU model, cores, torch and oneDNN versions, threads."""
    return (f"CPU: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}; oneDNN {onednn_version()}; "
            f"{torch.get_num_threads()} threads")


class ChoiceCache:
    """{machine key: {trial key: result}} in one JSON file, read and written under a file lock (two runs
    starting at once on one machine), written atomically (a kill mid-write leaves the old file)."""

    def __init__(self, root: Path | None = None):
        self.path = (root or cache_dir()) / CACHE_FILE

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}                              # missing or corrupt: measured again

    def get(self, key: str) -> dict | None:
        try:
            return self._read().get(machine_key(), {}).get(key)
        except OSError:
            return None

    def get_or_measure(self, key: str, measure) -> tuple[dict, bool]:
        """The cached result for ``key``, or ``measure()``'s, cached; returns (result, measured now).

        The trial runs under the file lock: runs that start together on one machine (a sweep, the kill
        tests' eight processes) wait for the first one's measurement and read it, instead of each timing
        the kernels against the others' load and the last writer's choice differing from the rest's. A
        cache folder that cannot be locked or written (read-only, full) measures without caching."""
        res = None
        try:
            with self._locked():
                cached = self.get(key)
                if cached is not None:
                    return cached, False
                res = measure()
                self._write(key, res)
                return res, True
        except OSError:                            # no lock or no write: this run's measurement, once
            return (res if res is not None else measure()), True

    def _write(self, key: str, value: dict) -> None:
        data = self._read()
        data.setdefault(machine_key(), {})[key] = value
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _best_times(fns: dict, reps: int = REPS) -> dict[str, float]:
    """Each candidate's fastest of ``reps`` runs after a warm-up (oneDNN primitive creation, buffers),
    the candidates interleaved: another process's load only ever adds time, and it hits every candidate
    alike instead of whichever happened to run while it lasted."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def wgrad_trial(geometry: tuple[int, ...], batch: int) -> dict:
    """Time the native bf16 backward-weights kernel and the im2col GEMM for one conv geometry
    (c_in, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w, h, w) at ``batch`` (channels-last, bf16)."""
    ci, co, kh, kw, sh, sw, ph, pw, h, w = geometry
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(batch, ci, h, w, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
    gy = torch.randn(batch, co, ho, wo, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
    wt = torch.randn(co, ci, kh, kw, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)

    def native():
        torch.ops.aten.convolution_backward(gy, x, wt, None, [sh, sw], [ph, pw], [1, 1], False, [0, 0], 1,
                                            [False, True, False])

    def gemm():
        im2col_weight_grad(x, gy, (kh, kw), (sh, sw), (ph, pw))

    with torch.no_grad():
        t = _best_times({"native": native, "gemm": gemm})
    t_native, t_gemm = t["native"], t["gemm"]
    return {"native_ms": round(1e3 * t_native, 3), "gemm_ms": round(1e3 * t_gemm, 3),
            "choice": "gemm" if t_gemm < MARGIN * t_native else "native"}


def input_channels(model: nn.Module, channels: int) -> int:
    """The channels ``model`` takes: its first convolution's (CMC's per-view encoders take the view's 1 or 2
    Lab channels, not the dataset's 3), else ``channels``."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None and first.groups == 1 else channels


def conv_geometries(model: nn.Module, channels: int, sizes: list[int]) -> list[tuple[int, ...]]:
    """The geometries of ``model``'s :class:`GemmWgradConv2d` layers on inputs of each side in ``sizes``
    (one no-grad, eval-mode forward of a 2-image batch per size; the model's state is left as it was)."""
    seen: list[tuple[int, ...]] = []

    def hook(mod, args):
        x = args[0]
        geo = (mod.in_channels, mod.out_channels, *mod.kernel_size, *mod.stride, *mod.padding, x.shape[2], x.shape[3])
        if geo not in seen and mod.groups == 1 and mod.dilation == (1, 1) and not isinstance(mod.padding, str):
            seen.append(geo)

    layers = [m for m in model.modules() if isinstance(m, GemmWgradConv2d)]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was = model.training
    model.eval()
    channels = input_channels(model, channels)
    try:
        with torch.no_grad():
            for s in dict.fromkeys(sizes):
                try:
                    model(torch.zeros(2, channels, s, s))
                except (RuntimeError, ValueError, AssertionError):
                    continue               # a size this model does not take: its convs stay on the native kernel
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return seen


@dataclass
class KernelPlan:
    """What the trainer chose for this run and why: logged, and saved in the checkpoint."""

    channels_last: bool = False
    conv_wgrad: dict[str, str] = field(default_factory=dict)     # geometry key -> "gemm" | "native"
    mode: str = "native"                                         # native | gemm (the size rule) | measured
    timings: dict[str, dict] = field(default_factory=dict)       # what the trials measured (or the cache held)
    trial_seconds: float = 0.0
    source: str = ""                                             # measured | cache | checkpoint | rule
    attention: str = "flash"                                     # flash (PyTorch's default) | math

    def attention_context(self):
        """The context the training step runs in: the math attention path where the plan chose it
        (its backward is the math path's too: autograd records the ops the forward ran)."""
        if self.attention == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def summary(self) -> str:
        """The ``train.resolved.conv_wgrad`` param: which kernel the weight gradients use."""
        if self.mode != "measured":
            return self.mode
        n = sum(v == "gemm" for v in self.conv_wgrad.values())
        if n == 0:
            return "native"
        if n == len(self.conv_wgrad):
            return f"gemm ({n} shapes, measured)"
        chosen = ",".join(k for k, v in sorted(self.conv_wgrad.items()) if v == "gemm")   # the set, in a short hash
        return f"gemm on {n}/{len(self.conv_wgrad)} shapes ({hashlib.sha1(chosen.encode()).hexdigest()[:8]})"

    def to_state(self) -> dict:
        return {"channels_last": self.channels_last, "conv_wgrad": dict(self.conv_wgrad), "mode": self.mode,
                "attention": self.attention}

    @classmethod
    def from_state(cls, state: dict) -> "KernelPlan":
        # a checkpoint from before the attention choice ran PyTorch's default (flash) kernel
        return cls(bool(state["channels_last"]), dict(state.get("conv_wgrad", {})), str(state.get("mode", "native")),
                   source="checkpoint", attention=str(state.get("attention", "flash")))


def measure_conv_wgrad(model: nn.Module, channels: int, sizes: list[int], batch: int,
                       cache: ChoiceCache | None = None) -> tuple[dict[str, str], dict[str, dict], float, str]:
    """Per geometry of ``model``'s convolutions: the faster weight-gradient kernel at ``batch``. Returns
    ({geometry: choice}, {geometry: timings}, seconds spent measuring, 'measured' | 'cache')."""
    cache = cache or ChoiceCache()
    choices, timings, measured = {}, {}, False
    t0 = time.perf_counter()
    for geo in conv_geometries(model, channels, sizes):
        key = f"wgrad {geometry_key(geo)} b{batch}"
        res, now = cache.get_or_measure(key, functools.partial(wgrad_trial, geo, batch))
        measured = measured or now
        choices[geometry_key(geo)] = res["choice"]
        timings[geometry_key(geo)] = res
    spent = time.perf_counter() - t0
    return choices, timings, spent, "measured" if measured else "cache"


def attention_shape(vit: nn.Module, size: int, batch: int) -> tuple[int, int, int, int] | None:
    """(batch, heads, tokens, head dim) of a timm ViT's self-attention on ``size``-px views, or None when
    ``vit`` has no such blocks."""
    blocks = getattr(vit, "blocks", None)
    attn = getattr(blocks[0], "attn", None) if blocks is not None and len(blocks) else None
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    if attn is None or not hasattr(attn, "num_heads") or patch is None:
        return None
    heads = int(attn.num_heads)
    dim = getattr(attn, "head_dim", None)
    if not dim:
        return None
    tokens = int(getattr(vit, "num_prefix_tokens", 1)) + (size // patch[0]) * (size // patch[1])
    return batch, heads, tokens, int(dim)


def attention_trial(shape: tuple[int, int, int, int], bf16: bool) -> dict:
    """Self-attention forward + backward at ``shape`` (B, heads, L, d), PyTorch's fused flash kernel vs the
    math path (QK^T, softmax, AV: under bf16 autocast, bf16 matmuls); the fastest of 3 interleaved runs
    each. The math path must win by 5% to be chosen (flash is PyTorch's default)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=g).requires_grad_() for _ in range(3))

    def step(backend):
        def run():
            with sdpa_kernel(backend), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            out.float().sum().backward()
            for t in (q, k, v):
                t.grad = None
        return run

    times = _best_times({"flash": step(SDPBackend.FLASH_ATTENTION), "math": step(SDPBackend.MATH)})
    return {"flash_ms": round(1e3 * times["flash"], 2), "math_ms": round(1e3 * times["math"], 2),
            "shape": list(shape), "choice": "math" if times["math"] < MARGIN * times["flash"] else "flash"}


def memory_format_trial(model: nn.Module, channels: int, size: int, batch: int, bf16: bool) -> dict:
    """The model's forward + backward (sum of outputs) on ``batch`` random images, channels-last vs
    contiguous; its state (BatchNorm statistics), the RNG and its gradients are restored, its memory format
    is not (the caller applies the chosen one: :func:`harness.models.kernels.prepare_for_training`)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, input_channels(model, channels), size, size, generator=g)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}   # BN statistics move in train mode
    rng = torch.get_rng_state()
    def step(fmt):
        def run():
            model.to(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x.contiguous(memory_format=fmt))
            out.float().sum().backward()
        return run

    try:
        times = _best_times({"channels_last": step(torch.channels_last), "contiguous": step(torch.contiguous_format)})
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
        torch.set_rng_state(rng)
        for p in model.parameters():
            p.grad = None
    return {"channels_last_ms": round(1e3 * times["channels_last"], 2), "contiguous_ms": round(1e3 * times["contiguous"], 2),
            "choice": "on" if times["channels_last"] < times["contiguous"] else "off"}
