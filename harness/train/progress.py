"""The training progress bar: steps for step-counted budgets, seconds for wall-clock budgets."""

from __future__ import annotations

import sys


class TrainingBar:
    """A tqdm bar on stderr (a no-op when ``enabled`` is False): ``total_steps`` steps when the budget
    is a step count, else ``budget_seconds`` seconds of training; loss and img/s in the postfix."""

    def __init__(self, desc: str, total_steps: int | None, budget_seconds: float, step: int = 0,
                 elapsed: float = 0.0, enabled: bool = True):
        self.bar = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.by_steps = total_steps is not None
        # a terminal redraws every second; a log file (CI, a cluster job) gets a line every 30 s
        every = 1.0 if getattr(sys.stderr, "isatty", lambda: False)() else 30.0
        if self.by_steps:
            self.bar = tqdm(total=total_steps, initial=step, desc=desc, unit="step", mininterval=every,
                            dynamic_ncols=True, file=sys.stderr)
        else:
            self.bar = tqdm(total=float(budget_seconds), initial=elapsed, desc=desc, unit="s", mininterval=every,
                            dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s budget [{elapsed}<{remaining}{postfix}]")

    def update(self, step: int, elapsed: float, dt: float, loss: float, images_per_step: int) -> None:
        """After optimisation step ``step`` (1-based count), which took ``dt`` seconds."""
        bar = self.bar
        if bar is None:
            return
        if self.by_steps:
            bar.update(1)
        else:  # never past the total: tqdm drops a total that n overshoots, and its format then fails
            bar.update(max(0.0, min(dt, bar.total - bar.n)))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{step * images_per_step / max(elapsed, 1e-9):.0f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
