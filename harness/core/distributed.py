"""Distributed helpers (torchrun / DDP). The only place that gathers across ranks.

``gather_with_grad`` concatenates a tensor from all ranks such that gradients flow back to
each rank's own slice (losses that need every negative use it). With one process it is the
identity, so methods call it unconditionally.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def broadcast_object(obj):
    """The main process's ``obj`` on every process (a picklable object; the others pass anything)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_from_env(device: str) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        # every rank computed the loss on the full gathered batch: sum their gradients,
        # then keep this rank's slice
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n : (r + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (queues, memory banks, centres)."""
    if not is_distributed() or world_size() == 1:
        return x
    out = [torch.zeros_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


# ----------------------------------------------------------------------------- synchronised BatchNorm


def _all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """SUM all-reduce through which gradients flow (the backward is the SUM all-reduce of the
    incoming gradients: every rank's loss depends on every rank's input)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics run over the global batch of every process.

    What SimCLR, BYOL, Barlow Twins, SwAV and MoCo v3 use under data parallelism
    ("global BN"): with it, N processes holding B/N images each compute the same outputs,
    loss and gradients as one process holding all B. ``torch.nn.SyncBatchNorm`` does this on
    GPUs only; this module works with any backend (gloo on CPU included) through two
    differentiable all-reduces (sum and count for the mean, then the centred sum of squares for
    the biased variance: the two-pass formula, as accurate as single-process BN). Running
    statistics get the unbiased variance, as ``nn.BatchNorm`` does. Outside training, or with
    one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([xf.numel() / c], dtype=torch.float32, device=x.device)
        s = _all_reduce_sum_with_grad(torch.cat([xf.sum(dims), count]))
        n = s[c]
        mean = s[:c] / n
        centred = xf - mean.view(shape)
        var = _all_reduce_sum_with_grad(centred.pow(2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm{1,2,3}d in ``module`` by :class:`GlobalBatchNorm` (same parameters,
    buffers and knobs); returns the module (the root itself if it is a BatchNorm)."""
    bn_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    if isinstance(module, bn_types):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new = new.to(device=module.weight.device if module.affine else None)
        with torch.no_grad():
            if module.affine:
                new.weight = module.weight
                new.bias = module.bias
            if module.track_running_stats:
                new.running_mean = module.running_mean
                new.running_var = module.running_var
                new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_bn(child))
    return module
