"""LR schedules in closed form: the LR of optimizer step ``n`` depends on ``n`` and the planned length only.

Every schedule is a function ``step -> factor`` of each parameter group's base LR (and, for one-cycle,
``step -> momentum``). Nothing is carried from step to step, so a checkpoint holds a step count and a
resumed run, even one resumed with another ``--epochs``, sets the LR of that step on the line it would
have followed had it been planned for that length from the start.

The formulas are those of torch's OneCycleLR (cosine annealing, div_factor 25, final_div_factor 1e4,
momentum cycled 0.95 -> 0.85 -> 0.95), CosineAnnealingLR (eta_min 0), MultiStepLR and airbench's
triangle; ``tests/test_engine.py`` checks them step for step against torch's own schedulers.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch

from training.recipes import Recipe

ONE_CYCLE_DIV = 25.0  # one-cycle starts at peak / 25 ...
ONE_CYCLE_FINAL_DIV = 1e4  # ... and ends at that start / 1e4
ONE_CYCLE_MOMENTUM = (0.85, 0.95)  # momentum (or Adam's beta1) falls to the low value at the LR peak


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)


def one_cycle(total: int, warmup_fraction: float) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """(LR factor, momentum) of a step: cosine up from 1/25 to 1 over the warm-up, then down to 1/25e4."""
    peak_step = warmup_fraction * total - 1  # torch's phase boundary, to the step
    last_step = total - 1
    low_momentum, high_momentum = ONE_CYCLE_MOMENTUM
    start = 1 / ONE_CYCLE_DIV
    end = start / ONE_CYCLE_FINAL_DIV

    def phase(step: int) -> tuple[float, float, float, float, float]:
        if step <= peak_step:
            return step / peak_step, start, 1.0, high_momentum, low_momentum
        return (step - peak_step) / (last_step - peak_step), 1.0, end, low_momentum, high_momentum

    def factor(step: int) -> float:
        fraction, lr_from, lr_to, _, _ = phase(step)
        return _cosine(lr_from, lr_to, fraction)

    def momentum(step: int) -> float:
        fraction, _, _, m_from, m_to = phase(step)
        return _cosine(m_from, m_to, fraction)

    return factor, momentum


def cosine(total: int) -> Callable[[int], float]:
    return lambda step: _cosine(1.0, 0.0, min(step, total) / max(total, 1))


def multi_step(milestones: list[int], gamma: float) -> Callable[[int], float]:
    ordered = sorted(milestones)
    return lambda step: gamma ** bisect.bisect_right(ordered, step)


def triangle(total: int, warmup_fraction: float, start: float, end: float) -> Callable[[int], float]:
    """airbench's: linear from ``start`` up to 1 over the warm-up, then linear down to ``end``."""
    total = max(total, 1)
    peak = warmup_fraction * total

    def factor(step: int) -> float:
        if step < peak:
            return start + (1 - start) * step / peak
        return 1 + (end - 1) * min(1.0, (step - peak) / max(total - peak, 1e-9))

    return factor


class Schedule:
    """Sets each parameter group's LR to base LR x ``factor(step)`` (and its momentum, if ``momentum`` is
    given) at construction and after every ``step()``: torch's scheduler calling convention."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                 factor: Callable[[int], float], momentum: Callable[[int], float] | None = None):
        self.optimizer, self.kind, self.total_steps = optimizer, kind, total_steps
        self.factor, self.momentum = factor, momentum
        # torch's convention: a group's base LR is kept as "initial_lr", so an optimizer restored from a
        # checkpoint (whose "lr" is mid-schedule) still knows it.
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        step = min(self.step_count, self.total_steps)
        factor = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
            if self.momentum is not None:
                if "betas" in group:
                    group["betas"] = (self.momentum(step), *group["betas"][1:])
                else:
                    group["momentum"] = self.momentum(step)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step_count, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = saved_step(state)
        self._apply()


def saved_step(state: dict) -> int:
    """The optimizer steps a saved schedule had taken: ours, or a torch scheduler's from older checkpoints."""
    return int(state["step"] if "step" in state else state["last_epoch"])


def saved_total(state: dict) -> int | None:
    """The length a saved schedule was planned for, where it recorded one."""
    if "total_steps" in state:
        return int(state["total_steps"])
    if "T_max" in state:  # torch's CosineAnnealingLR
        return int(state["T_max"])
    lambdas = state.get("lr_lambdas") or [None]
    return int(lambdas[0]["total"]) if isinstance(lambdas[0], dict) and "total" in lambdas[0] else None


def build_schedule(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Schedule:
    """The recipe's schedule, stepped once per optimizer step (so epochs and steps agree for every kind)."""
    total = recipe.epochs * steps_per_epoch
    kind = recipe.schedule
    if kind == "onecycle":
        factor, momentum = one_cycle(total, recipe.warmup_fraction)
        return Schedule(optimizer, kind, total, factor, momentum)
    if kind == "cosine":
        return Schedule(optimizer, kind, total, cosine(total))
    if kind == "step":
        return Schedule(optimizer, kind, total, multi_step([m * steps_per_epoch for m in recipe.milestones],
                                                           recipe.gamma))
    if kind == "triangle":
        return Schedule(optimizer, kind, total, triangle(total, recipe.warmup_fraction, recipe.lr_start_factor,
                                                         recipe.lr_end_factor))
    return Schedule(optimizer, kind, total, lambda step: 1.0)


def restore_schedule(schedule: Schedule, state: dict) -> str | None:
    """Continue ``schedule`` (built for this run's length) at the saved step; a line for the log when the
    planned length changed, else None."""
    schedule.load_state_dict(state)
    old_total = saved_total(state)
    if old_total is None or old_total == schedule.total_steps or schedule.kind in ("constant", "step"):
        return None
    name = {"onecycle": "one-cycle"}.get(schedule.kind, schedule.kind)
    return (f"{name} schedule rebuilt for {schedule.total_steps} steps (was {old_total}); "
            f"LR now {schedule.get_last_lr()[0]:.3e}")
