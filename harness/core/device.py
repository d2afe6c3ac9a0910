"""Device and precision: which device a run uses and whether bf16 autocast is available there."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

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


# torch's own choice for this process, read before any run sets it: a run with train.threads=None gets
# this even when an earlier run in the same process (a notebook, a sweep, the test session) set another
_DEFAULT_THREADS = torch.get_num_threads()


def apply_threads(threads: int | None) -> None:
    """``train.threads``: torch's intra-op threads for this run (None: torch's default for the process,
    whatever an earlier run in it set; the thread count changes a reduction's order, so a result)."""
    n = int(threads) if threads else _DEFAULT_THREADS
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU as far as a result can tell: its model name, family/model numbers and the vector
    extensions torch dispatches to (two "AMD EPYC" machines, one with AVX-512 BF16 and one with AVX2
    only, differ by 2.4x in a seconds budget)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = " ".join(value.split())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in info:
        name += f" (family {info['cpu family']} model {info.get('model', '?')})"
    try:
        caps = [torch.backends.cpu.get_cpu_capability()]
    except Exception:
        caps = []
    flags = set(info.get("flags", "").split())
    caps += [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return name + (f" [{', '.join(caps)}]" if caps else "")


def hardware(device: torch.device, processes: int = 1) -> str:
    """What a seconds budget buys depends on: the chip, the threads (or GPUs) and the processes.
    A time-budgeted run's identity holds this, so runs on other hardware never share a row."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{processes}"
    return f"{cpu_model()}, {torch.get_num_threads()} threads" + (f" x{processes} processes" if processes > 1 else "")
