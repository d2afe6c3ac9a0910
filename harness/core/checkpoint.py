"""Checkpoints: written atomically (temp file + fsync + rename), loaded with ``weights_only=True``.

A crash or a kill during a save leaves the previous checkpoint intact. Loading never runs
pickle code: ``torch.load(weights_only=True)`` refuses any payload that is not tensors and
plain containers, and we turn that refusal into a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from harness.core.errors import CheckpointError
from harness.core.interrupts import protected

FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with protected():   # Ctrl-C / SIGTERM wait for the write; a SIGKILL leaves only a *.tmp, swept later
        _save(obj, path)


def _save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and _is_write_failure(e):
            reason = "no space left on device" if getattr(e, "errno", None) == errno.ENOSPC or "space" in str(e).lower() \
                else (getattr(e, "strerror", None) or "the write failed (disk full or read-only?)")
            raise CheckpointError(f"cannot write the checkpoint {path}: {reason}; the previous checkpoint is intact; "
                                  "free space (or fix the folder) and continue with --resume") from None
        raise


def _is_write_failure(e: BaseException) -> bool:
    """An OSError, or torch's C++ stream writer failing ('file write failed', 'unexpected pos')."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    return "PytorchStreamWriter" in text or "write failed" in text or "unexpected pos" in text


def load(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' not found; pass the path of a .pt file written by 'sslbench pretrain'")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe payload"
        if "Weights only load failed" in first or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load, the checkpoint carries a pickle payload that is not plain tensors "
                "(loaded with weights_only=True); only load checkpoints you trust and that sslbench wrote"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({first[:100]})") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not an sslbench checkpoint (no 'model' entry)")
    return obj
