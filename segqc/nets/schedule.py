"""A learning-rate schedule that fits its length to a wall-clock budget.

On a laptop CPU a training loop rarely gets through the epochs it was given; a schedule
sized for those epochs and then cut by the clock stops at a high learning rate (a
OneCycle cut at 80 % of its steps ends near a third of its peak), and the network keeps
the noise of its last steps. `BudgetedSchedule` times the first steps, then shortens
the run to what the budget affords, so that the cosine always reaches zero at the last
step the budget allows. Callers may re-fit it later with their own pace (e.g. training
steps only, with time set aside for other work such as predictions between epochs);
a re-fit only ever shortens the run, so the learning rate never climbs back.
"""

from __future__ import annotations

import math
import time

__all__ = ["BudgetedSchedule", "TIMING_STEPS"]

# steps timed before a loop's length is first fitted to its budget
TIMING_STEPS = 5


class BudgetedSchedule:
    """Step count and cosine learning rate (linear warm-up) fitted to a wall-clock budget.

    Args:
        max_steps: the run's length if time allows.
        seconds: wall-clock budget from construction.
        lr: peak learning rate.
        warmup: steps of linear warm-up.
        timing_steps: steps after which `go_on` fits the run to the budget by the pace so far;
            None leaves the fitting to the caller's `refit`.

    The loop sets ``lr_now()`` before each step, advances ``step`` after it and stops
    when ``go_on()`` says so.
    """

    def __init__(self, max_steps: int, seconds: float, lr: float, warmup: int = 20,
                 timing_steps: int | None = TIMING_STEPS):
        self.total = max(1, int(max_steps))
        self.max_steps = self.total
        self.budget = float(seconds)
        self.lr = float(lr)
        self.warmup = max(1, int(warmup))
        self.timing_steps = timing_steps
        self.t0 = time.perf_counter()
        self.step = 0
        self.capped = False

    def lr_now(self) -> float:
        warm = min(1.0, (self.step + 1) / self.warmup)
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * min(self.step, self.total) / self.total))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def refit(self, seconds_per_step: float | None = None, reserve: float = 0.0) -> None:
        """Shorten the run (never lengthen it) to the steps the rest of the budget affords.

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

    def go_on(self) -> bool:
        if self.timing_steps is not None and self.step == self.timing_steps and self.total > self.step:
            self.refit()
        return self.step < self.total and self.elapsed() < self.budget

    def seconds_per_step(self) -> float:
        return self.elapsed() / max(self.step, 1)
