"""Metric names as MLflow stores them (its keys cannot hold '@' or '%')."""

from __future__ import annotations

import re


def to_mlflow_key(name: str) -> str:
    """MLflow keys may not contain '@' or '%': ``knn/top1@20`` is stored as ``knn/top1_k20``,
    ``linear@1%/top1`` as ``linear_1pct/top1``."""
    name = re.sub(r"@(\d+)$", r"_k\1", name)
    return re.sub(r"@([\d.]+)%", r"_\1pct", name)


def from_mlflow_key(key: str) -> str:
    key = re.sub(r"^(knn/top\d+)_k(\d+)$", r"\1@\2", key)
    return re.sub(r"^(\w+)_([\d.]+)pct/", r"\1@\2%/", key)
