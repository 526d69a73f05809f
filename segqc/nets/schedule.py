"""A learning-rate schedule that fits its length to a wall-clock budget.

On a laptop CPU a training loop rarely gets through the epochs it was given; a schedule
sized for those epochs and then cut by the clock stops at a high learning rate (a
OneCycle cut at 80 % of its steps ends near a third of its peak), and the network keeps
the noise of its last steps. `BudgetedSchedule` times the first steps, then shortens
the run to what the budget affords, so that the cosine always reaches zero at the last
step the budget allows. Callers may re-fit it later with their own pace (e.g. training
steps only, with time set aside for other work such as predictions between epochs).
After the warm-up a re-fit only shortens the run, so the learning rate never climbs back.
During the warm-up it may also lengthen it again, up to the steps it was given: a slow
start (another job on the cores for a few seconds while the first steps were timed) cut
a Kvasir fold network from 80 epochs to 32, and the run never recovered. Lengthening
there only slows the climb to the peak.
"""

from __future__ import annotations

import math
import time

__all__ = ["BudgetedSchedule", "TIMING_STEPS"]

# steps timed before a loop's length is first fitted to its budget
TIMING_STEPS = 5


class BudgetedSchedule:
    """Step count and learning rate fitted to a wall-clock budget.

    Args:
        max_steps: the run's length if time allows.
        seconds: wall-clock budget from construction.
        lr: peak learning rate.
        warmup: steps of linear warm-up (``cosine``).
        shape: ``cosine`` (linear warm-up, cosine to 0) or ``one_cycle``: torch's
            ``OneCycleLR`` (from ``lr``/25 up to ``lr`` over the first ``pct_start`` of the
            run, then down to ``lr``/25e4, both as cosines; `momentum_now` cycles Adam's β₁
            0.95 → 0.85 → 0.95 the same way), the same numbers as torch's while the run
            keeps its length.
        pct_start: share of the run spent warming up (``one_cycle``).
        timing_steps: steps after which `go_on` fits the run to the budget by the pace so far;
            None leaves the fitting to the caller's `refit`.

    The loop sets ``lr_now()`` before each step, advances ``step`` after it and stops
    when ``go_on()`` says so.
    """

    def __init__(self, max_steps: int, seconds: float, lr: float, warmup: int = 20,
                 timing_steps: int | None = TIMING_STEPS, shape: str = "cosine", pct_start: float = 0.3):
        if shape not in ("cosine", "one_cycle"):
            raise ValueError(f"schedule shape must be cosine or one_cycle, got {shape!r}")
        self.total = self.max_total = max(1, int(max_steps))
        self.budget = float(seconds)
        self.lr = float(lr)
        self.warmup = max(1, int(warmup))
        self.timing_steps = timing_steps
        self.shape, self.pct_start = shape, float(pct_start)
        self.t0 = time.perf_counter()
        self.step = 0
        self.capped = False

    def _one_cycle(self, start: float, peak: float, end: float) -> float:
        """OneCycleLR's two cosine phases at the current step: start → peak, then peak → end."""
        up_end, down_end = float(self.pct_start * self.total) - 1, self.total - 1
        k = min(self.step, down_end)
        if k <= up_end:
            a, b, pct = start, peak, k / up_end if up_end > 0 else 1.0
        else:
            a, b, pct = peak, end, (k - up_end) / max(down_end - up_end, 1e-9)
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    def momentum_now(self) -> float:
        """Adam's β₁ for this step: cycled against the learning rate (``one_cycle``), else 0.9."""
        return self._one_cycle(0.95, 0.85, 0.95) if self.shape == "one_cycle" else 0.9

    def lr_now(self) -> float:
        if self.shape == "one_cycle":
            return self._one_cycle(self.lr / 25, self.lr, self.lr / 25 / 1e4)
        warm = min(1.0, (self.step + 1) / self.warmup)
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * min(self.step, self.total) / self.total))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def warming_up(self) -> bool:
        """Whether the learning rate is still climbing to its peak."""
        if self.shape == "one_cycle":
            return self.step < self.pct_start * self.total - 1
        return self.step < self.warmup

    def refit(self, seconds_per_step: float | None = None, reserve: float = 0.0) -> None:
        """Fit the run to the steps the rest of the budget affords: shorter whenever the budget says so,
        longer (up to the steps it was given) only while `warming_up`.

        Args:
            seconds_per_step: the pace of a step; default: the elapsed time over the steps so far.
            reserve: seconds still needed for other work before the budget ends.
        """
        if self.step == 0:
            return
        elapsed = self.elapsed()
        pace = seconds_per_step if seconds_per_step is not None else elapsed / self.step
        afford = self.step + int(max(0.0, self.budget - elapsed - reserve) / max(pace, 1e-9))
        if afford < self.total:
            self.total, self.capped = max(self.step + 1, afford), True
        elif afford > self.total and self.warming_up():
            self.total = min(self.max_total, afford)
            self.capped = self.total < self.max_total

    def go_on(self) -> bool:
        if self.timing_steps is not None and self.step == self.timing_steps and self.total > self.step:
            self.refit()
        return self.step < self.total and self.elapsed() < self.budget

    def seconds_per_step(self) -> float:
        return self.elapsed() / max(self.step, 1)
