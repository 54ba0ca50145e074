"""Training for a wall-clock budget (`--max_train_minutes`), with the learning-rate schedule sized to it.

How many steps fit in a budget is not known in advance, so the schedule follows the *fraction of the budget spent*
instead of the step count: warm-up over the first `warmup_ratio` of the time, then linear or cosine decay that reaches
zero as the budget runs out, when training stops. The clock counts training time only (evaluation and checkpoints
pause it) and is saved in checkpoints, so a resumed run spends what is left. Across processes the clock is the
slowest process's, shared every step, so every process takes the same number of steps and the same learning rates.
"""

import math
import time

import torch

TIME_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


class TrainingClock:
    """Seconds of training so far (`spent`, carried over on resume) against `budget_seconds`."""

    def __init__(self, budget_seconds: float, spent: float = 0.0):
        self.budget, self.spent = budget_seconds, spent
        self._since = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            self.spent += time.perf_counter() - self._since
            self._since = None

    def stop_and_sync(self, accelerator=None) -> None:
        """Stop the clock (until `start`) and bring `spent` up to now, as the slowest process sees it."""
        self.pause()
        if accelerator is not None and accelerator.num_processes > 1:
            spent = torch.tensor([self.spent], dtype=torch.float64, device=accelerator.device)
            self.spent = float(accelerator.reduce(spent, reduction="max")[0])

    @property
    def fraction(self) -> float:
        return min(1.0, self.spent / self.budget)

    @property
    def done(self) -> bool:
        return self.spent >= self.budget


def time_schedule(optimizer, kind: str, warmup_ratio: float, clock: TrainingClock, frozen_towers_ratio: float = 0.0):
    """A `LambdaLR` whose multipliers are read from `clock.fraction` at every `scheduler.step()`."""
    if kind not in TIME_SCHEDULES:
        raise ValueError(
            f"lr_scheduler_type={kind!r} cannot follow a time budget; with --max_train_minutes use one of "
            f"{', '.join(TIME_SCHEDULES)}."
        )
    return progress_schedule(optimizer, kind, warmup_ratio, lambda _step: clock.fraction, frozen_towers_ratio)


def progress_schedule(optimizer, kind: str, warmup_ratio: float, progress, frozen_towers_ratio: float = 0.0):
    """A `LambdaLR` with one multiplier per parameter group, from `progress(step)`, the share of training done.

    WavLink's new parts (groups marked `new_parameters`) follow the schedule over the whole run. With
    `frozen_towers_ratio` R > 0 the towers are held still (multiplier 0) for the first R of the run, a warm start in
    which only the new parts learn on the pretrained towers, then follow the same schedule shape (warm-up, decay)
    over what is left, so both end at zero together."""

    def new_parts(step: int) -> float:
        return time_multiplier(kind, warmup_ratio, progress(step))

    def towers(step: int) -> float:
        return tower_multiplier(kind, warmup_ratio, progress(step), frozen_towers_ratio)

    lambdas = [new_parts if group.get("new_parameters") else towers for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def tower_multiplier(kind: str, warmup_ratio: float, fraction: float, frozen_ratio: float) -> float:
    """The towers' multiplier: 0 during the warm start, then the schedule's shape over the rest of the run."""
    if fraction < frozen_ratio:
        return 0.0
    return time_multiplier(kind, warmup_ratio, (fraction - frozen_ratio) / (1.0 - frozen_ratio))


def time_multiplier(kind: str, warmup_ratio: float, fraction: float) -> float:
    """The schedule's multiplier at `fraction` of the budget (the step-based schedules' shapes, in time)."""
    if kind == "constant":
        return 1.0
    if fraction < warmup_ratio:
        return fraction / warmup_ratio
    if kind == "constant_with_warmup":
        return 1.0
    progress = (fraction - warmup_ratio) / max(1e-12, 1.0 - warmup_ratio)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
