"""A run's name, tags and state file, and the one-line progress log of the run layer."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from harness.tracking.provenance import environment_tags
from harness.train.config import RunConfig


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.method}-{cfg.backbone}-{cfg.data.name}-{cfg.budget.label}-s{cfg.seed}"


def run_tags(cfg: RunConfig, device: str) -> dict[str, str]:
    tags = environment_tags(device)

    argv = [os.path.basename(sys.argv[0]) if i == 0 else a for i, a in enumerate(sys.argv)]
    tags["command"] = "sslbench " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else ""
    tags.update({"method": cfg.method, "backbone": cfg.backbone, "dataset": cfg.data.name,
                 "budget": f"{cfg.budget.kind}={cfg.budget.value}", "seed": str(cfg.seed)})
    return tags


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"sslbench: {msg}", file=sys.stderr, flush=True)
