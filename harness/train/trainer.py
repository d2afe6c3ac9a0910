"""The trainer: budget, LR schedule over progress, bf16 autocast, DDP, checkpoints, resume.

Determinism: the batch indices and every random draw of step ``s`` (views, masks, dropout)
are seeded from (run seed, s, rank); the LR is a function of progress. A run resumed from
a checkpoint at step s therefore continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.flop_counter import FlopCounterMode

from harness.core import checkpoint as ckpt
from harness.core import distributed as dist
from harness.core.device import bf16_supported, hardware, resolve_device, resolve_precision
from harness.core.errors import CheckpointError, ConfigError, TrainingDiverged
from harness.core.schedules import warmup_cosine
from harness.data.captions import captions_for
from harness.data.dataset import ImageDataset, batch_indices
from harness.data.domains import check_domain_batch, domain_batch_indices, domains_for
from harness.data.store import is_streamed, iter_batches
from harness.data.video import clip_modalities
from harness.method.contract import Batch, OptimPhase, StepInfo
from harness.method.registry import progressive_methods
from harness.models.autotune import KernelPlan
from harness.models.backbones import is_convnet, is_vit
from harness.models.kernels import prepare_for_training
from harness.train.budget import steps_per_epoch, total_steps
from harness.train.build import build_method, data_info, load_weights, method_config_params, read_checkpoint, trajectory_diff
from harness.train.config import RunConfig, to_dict
from harness.train.optim import build_optimizer, effective_optim
from harness.train.progress import TrainingBar

CHECKPOINT_NAME = "checkpoint.pt"


def _smaller_batch(n: int) -> int:
    """A batch size to suggest for ``n`` training images: the largest power of two <= n / 4 (at least 1)."""
    b = 1
    while b * 8 <= n:          # the next power of two still <= n / 4
        b *= 2
    return b


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    images: int
    throughput: float          # source images per second of training
    final_loss: float
    precision: str
    channels_last: bool
    notes: list[str] = field(default_factory=list)


CURVE_POINTS = 200   # train/* points logged per run (at most one per step)


@contextlib.contextmanager
def step_context(autocast, plan: KernelPlan):
    """Around every training forward: bf16 autocast and the kernel plan's attention kernel."""
    with autocast, plan.attention_context():
        yield


def compile_step(model: torch.nn.Module) -> torch.nn.Module:
    """``train.compile``: the training step (the method's forward) through ``torch.compile`` (inductor). A
    graph that cannot compile runs eagerly (dynamo's own fallback), said in one warning line; the method's
    parameters and state dict are the method's own, so checkpoints are the same either way."""
    import torch._dynamo as dynamo

    dynamo.config.suppress_errors = True      # a failed compile falls back to eager instead of failing the run
    print("sslbench: train.compile=true: the training step is compiled on its first steps (inductor); a part "
          "that cannot compile runs eagerly", file=sys.stderr)
    return torch.compile(model)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**62)


def _check_phases(method, phases: list[OptimPhase]) -> list[OptimPhase]:
    """A method's optimiser phases: at least one, distinct names, every trainable parameter in exactly one."""
    names = [ph.name for ph in phases]
    if not phases or len(set(names)) != len(names) or (len(phases) > 1 and not all(names)):
        raise ValueError(f"{type(method).__name__}.optimizer_phases() must name one phase per optimiser, "
                         f"distinct and non-empty when there are several; got {names}")
    owner: dict[int, str] = {}
    for ph in phases:
        for g in ph.groups:
            for q in g["params"]:
                if id(q) in owner:
                    raise ValueError(f"{type(method).__name__}: a parameter is in optimiser phases "
                                     f"'{owner[id(q)]}' and '{ph.name}'; each belongs to one")
                owner[id(q)] = ph.name
    if len(phases) > 1:
        left = [n for n, q in method.named_parameters() if q.requires_grad and id(q) not in owner]
        if left:
            raise ValueError(f"{type(method).__name__}: trainable parameters in no optimiser phase: {left[:3]}")
    return phases


class Trainer:
    def __init__(self, cfg: RunConfig, dataset: ImageDataset, run_dir: str | Path,
                 log_fn: Callable[[dict[str, float], int], None] | None = None):
        self.cfg = cfg
        self.ds = dataset
        self.run_dir = Path(run_dir)
        self.log_fn = log_fn or (lambda metrics, step: None)
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if self.precision == "bf16" and not bf16_supported(self.device):
            raise ConfigError(f"train.precision=bf16 but this {self.device.type} has no bf16 support; use fp32 or auto")
        self.info = data_info(dataset)
        if cfg.optim.batch_size > len(dataset.x_train):
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} exceeds the {len(dataset.x_train)} training images; "
                              f"pass a smaller batch, e.g. optim.batch_size={_smaller_batch(len(dataset.x_train))}")
        self.world = dist.world_size()
        if cfg.optim.batch_size % self.world:
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by the {self.world} processes")
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg, self.info).to(self.device)
        self.uses_labels = type(self.method).uses_labels
        captions = captions_for(cfg.method, type(self.method).requires.captions, cfg.data, dataset)
        if captions is not None:                 # data (re-read on resume); the tokenizer is the method's state
            self.method.attach_captions(captions)
        # two image domains (translation): data handed over on every start and resume; batches half A, half B
        self.domains = domains_for(cfg.method, type(self.method).requires.domains, cfg.data, dataset)
        if self.domains is not None:
            check_domain_batch(self.domains, cfg.optim.batch_size, self.world)
            self.method.attach_domains(self.domains)
        if type(self.method).requires.clips:     # the clips' optical flow: data (computed once, cached), not state
            self.method.attach_clips(clip_modalities(dataset, Path(cfg.out_dir) / "flow-cache"))
        self.recipe = (self.method.view_recipe(self.info).with_background(cfg.views)   # views.* options
                       .with_frames(self.info.frames))                                # clips: per-clip draws
        self.recipe.check(self.info.channels, self.info.image_size, cfg.method)
        if cfg.views.resolution:                 # progressive resizing (views.resolution)
            if not type(self.method).progressive_views or is_vit(self.method.backbone):
                raise ConfigError(f"views.resolution (progressive resizing) needs a method whose views go straight "
                                  f"into a convnet backbone; '{cfg.method}' on '{cfg.backbone}' is not one (methods "
                                  f"that take it: {', '.join(progressive_methods())})")
            if max(cfg.views.resolution) > self.info.image_size:
                raise ConfigError(f"views.resolution={list(cfg.views.resolution)} goes above the images' "
                                  f"{self.info.image_size} px; end at {self.info.image_size}")
        self.recipe = self.recipe.with_resolution(cfg.views.resolution, self.info.image_size)
        self.kernels = self._prepare_kernels()
        self.channels_last = self.kernels.channels_last
        self.model = self.method
        if dist.is_distributed():
            if type(self.method).global_bn and self.world > 1:
                dist.convert_to_global_bn(self.method)

            self.model = DDP(self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=type(self.method).unused_parameters)
        if cfg.train.compile:
            self.model = compile_step(self.model)
        # the method's declared optimiser (its paper's) unless a preset or override says otherwise; a method
        # with several (a GAN's discriminator and generator) declares one phase per optimiser, stepped in order
        self.optim = effective_optim(type(self.method).optim, cfg.optim)
        self.base_lr = self.optim.lr
        self.phases = _check_phases(self.method, self.method.optimizer_phases())
        self.phase_optims = [effective_optim(ph.optim, cfg.optim) if ph.optim is not None else self.optim
                             for ph in self.phases]
        self.optimizers = [build_optimizer(o, ph.groups) for o, ph in zip(self.phase_optims, self.phases)]
        self.optimizer = self.optimizers[0]       # the one optimiser of a single-phase method
        self.total = total_steps(cfg, len(dataset.x_train))
        self.flops_per_step: float | None = None   # flops budgets: measured on the first step
        self.step = 0
        self.elapsed = 0.0
        self.last_loss = float("nan")
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self._pending: list[tuple[dict[str, float], int]] = []
        self._restored: bool | None = None
        self._batches = None       # the training batches of a fit in progress (closed when it ends)

    def _prepare_kernels(self, plan: KernelPlan | None = None) -> KernelPlan:
        """Memory format and conv kernels (``train.channels_last`` / ``train.conv_wgrad``; ``auto`` = a timed
        trial on this run's view sizes and per-process batch, cached per machine: harness.models.autotune).
        Under DDP every process applies the main process's choice (one set of kernels, one result)."""
        cfg = self.cfg
        if plan is None and dist.is_distributed() and not dist.is_main():
            plan = KernelPlan.from_state(dist.broadcast_object(None))
        plan = prepare_for_training(self.method, is_convnet(self.method.backbone), self.device, self.precision,
                                    cfg.train.channels_last, cfg.train.conv_wgrad, cfg.train.attention,
                                    trial_model=self.method.backbone,
                                    channels=self.info.channels, sizes=tuple(self.recipe.sizes()),
                                    batch=cfg.optim.batch_size // self.world, plan=plan)
        if plan.source != "checkpoint" and dist.is_distributed() and dist.is_main():
            dist.broadcast_object(plan.to_state())
        if plan.source == "measured" and dist.is_main():
            print(f"sslbench: kernels measured on this CPU in {plan.trial_seconds:.1f} s (not counted in the budget; cached "
                  f"for this machine): conv weight gradient {plan.summary()}, channels-last {plan.channels_last}, "
                  f"attention {plan.attention}",
                  file=sys.stderr)
        return plan

    def kernel_tag(self) -> str:
        """The ``sslbench.kernels`` tag: what was chosen, how (measured now, from the machine's cache, the
        checkpoint, or a rule), the trial's seconds (not counted in a seconds budget) and its timings."""
        k = self.kernels
        text = {"channels_last": k.channels_last, "conv_wgrad": k.summary(), "attention": k.attention, "source": k.source,
                "trial_s": round(k.trial_seconds, 2), "timings": k.timings}
        return json.dumps(text, sort_keys=True)[:5000]

    # ------------------------------------------------------------------ state
    def state_dict(self, finished: bool) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT_VERSION,
            "kernels": self.kernels.to_state(),
            "model": self.method.state_dict(),
            # one optimiser: its state; several: {phase name: state}
            "optimizer": self.optimizer.state_dict() if len(self.optimizers) == 1 else
            {ph.name: o.state_dict() for ph, o in zip(self.phases, self.optimizers)},
            "step": self.step,
            "elapsed": self.elapsed,
            "finished": finished,
            "last_loss": self.last_loss,
            "flops_per_step": self.flops_per_step,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": to_dict(self.cfg),
            "method": self.cfg.method,
            "backbone": self.cfg.backbone,
            "data_info": dataclasses.asdict(self.info),
        }

    def load_state(self, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
        diff = trajectory_diff(state["config"], to_dict(self.cfg))
        if diff:
            shown = ", ".join(diff[:4])
            raise CheckpointError(f"cannot resume: the checkpoint was written with another config ({shown}); "
                                  "rerun without --resume to start over")
        saved = state["data_info"]
        now = dataclasses.asdict(self.info)
        if {k: saved.get(k) for k in ("channels", "image_size", "num_train")} != \
                {k: now[k] for k in ("channels", "image_size", "num_train")}:
            raise CheckpointError(f"cannot resume: {path} was trained on other data ({saved.get('channels')} channels, "
                                  f"{saved.get('image_size')} px, {saved.get('num_train')} images; this dataset: "
                                  f"{now['channels']}, {now['image_size']} px, {now['num_train']}); rerun without --resume")
        if "kernels" in state:      # the kernels the first attempt chose (they differ by bf16 rounding only)
            self.kernels = self._prepare_kernels(KernelPlan.from_state(state["kernels"]))
            self.channels_last = self.kernels.channels_last
        load_weights(self.method, state, path)
        try:
            if len(self.optimizers) == 1:
                self.optimizer.load_state_dict(state["optimizer"])
            else:
                saved_phases = sorted(state["optimizer"]) if isinstance(state["optimizer"], dict) else []
                if saved_phases != sorted(ph.name for ph in self.phases):
                    raise ValueError(f"optimiser phases {saved_phases or 'none'}, this method has "
                                     f"{sorted(ph.name for ph in self.phases)}")
                for ph, o in zip(self.phases, self.optimizers):
                    o.load_state_dict(state["optimizer"][ph.name])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"cannot resume: {path} holds another optimiser's state ({str(e)[:120]}); "
                                  "rerun without --resume") from None
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        if state.get("flops_per_step"):
            self._set_flops_per_step(float(state["flops_per_step"]))
        torch.set_rng_state(state["rng"]["torch"])

    def save(self, finished: bool = False) -> None:
        """Write the checkpoint atomically, then hand the metrics of the steps it covers to ``log_fn``:
        a run killed between checkpoints re-logs those steps once after resuming, never twice."""
        if dist.is_main():
            ckpt.save_atomic(self.state_dict(finished), self.checkpoint_path)
        pending, self._pending = self._pending, []
        for metrics, step in pending:
            self.log_fn(metrics, step)

    def run_params(self) -> dict[str, Any]:
        """What the run resolved at start, as params: the method's full config, the optimiser it got,
        device / precision / kernels, and the dataset's content fingerprint (the run's identity uses them)."""
        own = {f"optim.effective.{ph.name}.{k.split('.')[-1]}": v for ph, o in zip(self.phases, self.phase_optims)
               if ph.optim is not None for k, v in o.params().items()}   # phases with their own optimiser
        out = {**method_config_params(self.method), **self.method.resolved_params(), **self.optim.params(), **own,
               "train.resolved.device": self.device.type, "train.resolved.precision": self.precision,
               "train.resolved.channels_last": self.channels_last, "train.resolved.conv_wgrad": self.kernels.summary(),
               "data.fingerprint": self.ds.fingerprint()}
        if self.kernels.attention != "flash":     # PyTorch's default kernel, the one every earlier record ran, is left out
            out["train.resolved.attention"] = self.kernels.attention
        if self.domains is not None:              # two image domains: how they were chosen (classes = label-using)
            out.update({"domains.mode": self.domains.mode, "domains.A": self.domains.names[0],
                        "domains.B": self.domains.names[1]})
        if self.cfg.budget.kind == "seconds":     # what a second buys is the hardware's: part of the identity
            out["train.resolved.hardware"] = hardware(self.device, dist.world_size())
        return out

    # ------------------------------------------------------------------ loop
    def progress(self) -> float:
        if self.total is not None:
            return self.step / self.total
        if self.cfg.budget.kind == "flops":
            return 0.0  # before the first step is measured
        return self.elapsed / self.cfg.budget.value

    def _set_flops_per_step(self, flops: float) -> None:
        """A flops budget becomes a step count: floor(budget / FLOPs of one step), at least 1."""
        self.flops_per_step = flops
        self.total = max(1, int(self.cfg.budget.value // max(flops, 1.0)))

    def restore(self) -> bool:
        """Continue from the run folder's checkpoint (once; checked: keys, weights, optimiser, data, config).
        Returns whether there was one to continue from."""
        if self._restored is None:
            self._restored = self.checkpoint_path.exists()
            if self._restored:
                self.load_state(read_checkpoint(self.checkpoint_path, str(self.device), resume=True), self.checkpoint_path)
            else:
                print(f"sslbench: no checkpoint at {self.checkpoint_path}; starting from scratch", file=sys.stderr)
        return self._restored

    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train until the budget is spent (or, for tests and preemption drills, until step ``stop_after``)."""
        try:
            return self._fit(resume, stop_after)
        finally:
            if self._batches is not None:     # stops a streamed folder's decoding workers
                self._batches.close()
                self._batches = None

    def _fit(self, resume: bool, stop_after: int | None) -> TrainResult:
        if resume:
            self.restore()
        cfg = self.cfg
        x_all = self.ds.x_train        # an image store: a tensor in memory, or a folder streamed from disk
        if self.device.type == "cuda" and not is_streamed(x_all):
            x_all = x_all.to(self.device)
        n = len(x_all)
        bs_local = cfg.optim.batch_size // self.world
        rank = dist.rank()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        amp = functools.partial(step_context, autocast, self.kernels)
        self.method.train()
        bar = self._bar()
        last_ckpt_time = time.monotonic()
        last_ckpt_step = self.step
        images_per_step = cfg.optim.batch_size
        # curves dense enough to plot: ~CURVE_POINTS points per run (every step when it has fewer), by step
        # count when the budget is one, else by progress (seconds, flops); logging never touches the RNGs
        log_every = max(1, (self.total or 0) // CURVE_POINTS) if self.total is not None else None
        if self.step == 0 and self.method.wants_prepare_pass():
            self._prepare_pass(x_all, amp)
        next_mark = (int(self.progress() * CURVE_POINTS) + 1) / CURVE_POINTS
        last_log = (self.elapsed, self.step)   # img/s per interval of training time, as pretrain/throughput
        spe = steps_per_epoch(n, cfg.optim.batch_size, cfg.train.max_steps_per_epoch)

        def step_indices(step: int) -> torch.Tensor:   # the batch of step `step`: a pure function of the step
            if self.domains is not None:               # two domains: half A, half B, interleaved
                return domain_batch_indices(self.domains, cfg.optim.batch_size, step, cfg.seed)
            epoch, i = divmod(step, spe)
            return batch_indices(n, cfg.optim.batch_size, epoch * max(1, n // cfg.optim.batch_size) + i, cfg.seed)

        # batches of steps s, s+1, ... in order (a streamed folder's workers decode ahead of the loop)
        self._batches = iter_batches(x_all, map(step_indices, itertools.count(self.step)),
                                     pin_memory=self.device.type == "cuda")
        while self.progress() < 1.0 and (stop_after is None or self.step < stop_after):
            t0 = time.perf_counter()
            p = self.progress()
            lr_factor = warmup_cosine(p, cfg.optim.warmup, 1.0, 0.0)
            for opt, resolved in zip(self.optimizers, self.phase_optims):
                for g in opt.param_groups:
                    # a group flagged fixed_lr keeps its base LR: no warm-up, no decay (SimSiam's predictor)
                    g["lr"] = resolved.lr * (1.0 if g.get("fixed_lr") else lr_factor) * g.get("base_lr_scale", 1.0)
            # views come from one generator shared by every process: each process augments the whole
            # global batch and keeps its slice, so N processes see exactly the views one process would
            # (augmenting is ~0.4% of a step); torch's global RNG (dropout, drop-path) stays per process
            torch.manual_seed(_step_seed(cfg.seed, self.step, rank))
            gen = torch.Generator(device=self.device).manual_seed(_step_seed(cfg.seed, self.step, 0))
            idx, x = next(self._batches)
            x = x.to(self.device, non_blocking=True)
            views = self.recipe.at(p)(x, gen, self.ds.mean, self.ds.std)   # at(p): progressive resizing
            if self.world > 1:
                lo, hi = rank * bs_local, (rank + 1) * bs_local
                idx, views = idx[lo:hi], views.slice(lo, hi)
            if self.channels_last:
                views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
            counter = None
            if cfg.budget.kind == "flops" and self.flops_per_step is None:
                counter = FlopCounterMode(display=False)  # counts this step's forward and backward passes
                counter.__enter__()
            labels = self.ds.y_train[idx].to(self.device) if self.uses_labels else None
            batch = Batch(views, idx.to(self.device), labels)
            out: dict[str, Any] = {}
            step_loss = None
            for k, (phase, opt) in enumerate(zip(self.phases, self.optimizers)):   # one phase per optimiser
                info = StepInfo(self.step, p, self.total, gen, phase.name)
                with amp():
                    phase_out = self.model(batch, info)
                loss = phase_out["loss"]
                # the global batch's loss (the mean over processes: losses are means over each process's
                # share); every process sees the same value, so all stop together on a NaN
                global_loss = dist.all_reduce_mean(loss.detach().float()) if self.world > 1 else loss.detach()
                if not torch.isfinite(global_loss):
                    what = f"{phase.name} loss" if phase.name else "loss"
                    raise TrainingDiverged(
                        f"{what} became {global_loss.item()} at step {self.step} ({cfg.method}, lr "
                        f"{self.phase_optims[k].lr * lr_factor:.3g}); "
                        "the run is marked FAILED: lower optim.lr, set optim.grad_clip, or use train.precision=fp32"
                    )
                self.method.zero_grad(set_to_none=True)
                loss.backward()
                if counter is not None and k == len(self.phases) - 1:
                    counter.__exit__(None, None, None)
                    self._set_flops_per_step(float(counter.get_total_flops()) * self.world)
                    bar.close()
                    bar = self._bar()
                if cfg.optim.grad_clip:
                    clipped = self.method.parameters() if len(self.phases) == 1 else \
                        [q for g in opt.param_groups for q in g["params"]]
                    torch.nn.utils.clip_grad_norm_(clipped, cfg.optim.grad_clip)
                opt.step()
                out.update(phase_out)
                if len(self.phases) > 1:
                    out[f"loss_{phase.name}"] = global_loss
                step_loss = global_loss if step_loss is None else step_loss + global_loss
            global_loss = step_loss
            self.method.on_step_end(StepInfo(self.step, p, self.total, gen))
            self.step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            if self.world > 1 and cfg.budget.kind == "seconds":   # one clock for every rank: all stop at one step
                self.elapsed = float(dist.all_reduce_max(torch.tensor([self.elapsed], dtype=torch.float64, device=self.device))[0])
            self.last_loss = float(global_loss)
            due = self.step % log_every == 0 if log_every else self.progress() >= next_mark
            if due or self.step == 1 or self.progress() >= 1.0:     # the curve always ends at the last step
                if not log_every and self.progress() >= next_mark:
                    # one mark per point: a step that passed several marks (a slow or stalled step) leaves
                    # the next steps due until the points catch up, so a run still gets ~CURVE_POINTS points
                    next_mark += 1 / CURVE_POINTS
                rate = (self.step - last_log[1]) * images_per_step / max(self.elapsed - last_log[0], 1e-9)
                last_log = (self.elapsed, self.step)
                metrics = {"train/loss": self.last_loss, "train/lr": self.base_lr * lr_factor,
                           "train/progress": self.progress(), "train/img_per_s": rate}
                # the method's extra scalars: schedules (BYOL's tau, DINO's teacher_temp and momentum,
                # MoCo v3's momentum) and diagnostics (accuracies, queue use)
                for k, v in out.items():
                    if k != "loss" and (torch.is_tensor(v) and v.numel() == 1 or
                                        isinstance(v, (int, float)) and not isinstance(v, bool)):
                        metrics[f"train/{k}"] = float(v)
                self._pending.append((metrics, self.step))   # logged once the next checkpoint holds this step
            bar.update(self.step, self.elapsed, dt, self.last_loss, images_per_step)
            now = time.monotonic()
            every_steps = cfg.train.checkpoint_every_steps
            if (every_steps and self.step - last_ckpt_step >= every_steps) or now - last_ckpt_time >= cfg.train.checkpoint_every_seconds:
                self.save(finished=False)
                last_ckpt_time, last_ckpt_step = time.monotonic(), self.step
        bar.close()
        self.save(finished=self.progress() >= 1.0)
        images = self.step * images_per_step
        return TrainResult(self.checkpoint_path, self.step, self.elapsed, images,
                           images / max(self.elapsed, 1e-9), self.last_loss, self.precision,
                           self.channels_last, self.recipe.notes())

    @torch.no_grad()
    def _prepare_pass(self, x_all, amp) -> None:
        """One pass over the training set, in index order, before the first step (the method's
        ``prepare_batch``; e.g. InstDisc's bank of real features). Views come from a generator
        seeded by the run's seed alone. Under DDP every process runs the whole pass on the same
        batches (one forward epoch, no gather needed: all processes end with the same state).
        The time counts in a seconds budget (it is the method's compute); a run killed during
        the pass restarts it (the first checkpoint is written after it)."""
        t0 = time.perf_counter()
        n, bs = len(x_all), self.cfg.optim.batch_size
        gen = torch.Generator(device=self.device).manual_seed(_step_seed(self.cfg.seed, 2**40, 0))
        order = (torch.arange(lo, min(lo + bs, n)) for lo in range(0, n, bs))
        for idx, x in iter_batches(x_all, order, pin_memory=self.device.type == "cuda"):
            views = self.recipe(x.to(self.device), gen, self.ds.mean, self.ds.std, keep_source=True)
            if self.channels_last:
                views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
            with amp():
                self.method.prepare_batch(Batch(views, idx.to(self.device), None))
        self.elapsed += time.perf_counter() - t0

    def _bar(self) -> TrainingBar:
        return TrainingBar(f"{self.cfg.method}/{self.cfg.backbone} seed {self.cfg.seed}", self.total,
                           self.cfg.budget.value, self.step, self.elapsed,
                           enabled=self.cfg.train.progress and dist.is_main())



