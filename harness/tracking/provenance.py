"""Where a number comes from: the git commit, package versions and device of the process."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path

import torch

from harness.core.device import cpu_model


def package_version(name: str) -> str:
    try:
        return _version(name)
    except PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, str]:
    """The commit and dirty flag of the checkout, read ONCE per process: a process runs the code it
    imported at its start, so a suite that runs for an hour while someone commits keeps
    reporting the commit it started from."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"git.commit": "unknown", "git.dirty": "unknown"}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git.commit": commit.stdout.strip(), "git.dirty": str(bool(dirty.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def environment_tags(device: str) -> dict[str, str]:
    tags = {"sslbench.version": package_version("sslbench"), "torch.version": torch.__version__, "python.version": platform.python_version(),
            "device": device, "host.cpu_count": str(os.cpu_count())}
    try:
        import timm

        tags["timm.version"] = timm.__version__
    except ImportError:
        pass
    try:
        import faiss

        tags["faiss.version"] = getattr(faiss, "__version__", "unknown")
    except ImportError:
        tags["faiss.version"] = "not installed"
    if device.startswith("cuda"):
        tags["device.name"] = torch.cuda.get_device_name(0)
    else:
        tags["device.name"] = cpu_model()
    tags.update(git_info())
    return tags
