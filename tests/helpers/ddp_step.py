"""One training step of each given method, for the distributed-equivalence test.

    python tests/helpers/ddp_step.py OUT_DIR simclr moco_v3 ...            (one process)
    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_step.py ...  (two processes, gloo)

Each method trains for one step on the same synthetic data and global batch (32 images) with the
real Trainer (DDP wrapper, global BatchNorm, gathers); rank 0 writes OUT_DIR/<method>.pt holding
the step's loss and every parameter's gradient (after DDP's all-reduce).
"""

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from harness.core import distributed as dist  # noqa: E402
from harness.data.sources import synthetic  # noqa: E402
from harness.run.plugins import load_plugins  # noqa: E402
from harness.train.config import resolve  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402

load_plugins()

# knobs that keep a one-step comparison meaningful: no frozen layers or empty queues at step 0
EXTRA = {
    "swav": {"method_cfg.queue_size": 0, "method_cfg.freeze_prototypes": 0.0, "method_cfg.n_local": 2},
}


def main() -> None:
    out_dir, methods = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_from_env("cpu")
    ds = synthetic(n_train=128, n_test=32, image_size=16, channels=3, num_classes=4)
    for m in methods:
        cfg = resolve({"method": m, "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                       "budget.value": 4, "optim.batch_size": 32, "optim.name": "sgd", "optim.lr": 0.1,
                       "train.precision": "fp32", "train.progress": False, "train.device": "cpu",
                       "method_cfg.proj_hidden": 64, **EXTRA.get(m, {})})
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(cfg, ds, tmp)
            tr.fit(stop_after=1)
        if dist.is_main():
            grads = {n: p.grad.detach().clone() for n, p in tr.method.named_parameters() if p.grad is not None}
            torch.save({"loss": tr.last_loss, "grads": grads, "world": dist.world_size(),
                        "global_bn": any(type(x).__name__ == "GlobalBatchNorm" for x in tr.method.modules())},
                       os.path.join(out_dir, f"{m}.pt"))
    if dist.is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
