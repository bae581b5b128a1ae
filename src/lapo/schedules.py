"""Learning-rate schedules: the warm-ups and decays of every stage, as fractions of a base rate.

- Stages 1 and 2 (:func:`lr_scale`): a linear warm-up from ``warmup_start`` to 1 over
  ``warmup_steps``, then linear to ``final_scale`` (0 for stage 2) at ``steps``.
- Online decoding (:func:`linear_ramp`): each parameter group's rate leaves 0 at some frame
  count and ramps linearly to its peak, all under a linear decay to 0.
"""

from __future__ import annotations

from typing import Protocol

import torch


class WarmupConfig(Protocol):
    """The fields :func:`lr_scale` reads (``LAMConfig`` and ``BCConfig`` have them)."""

    steps: int
    warmup_steps: int
    warmup_start: float


def lr_scale(
    step: int, cfg: WarmupConfig, final_scale: float = 0.0, time_fraction: float = 0.0
) -> float:
    """Scale of the base rate at ``step``: warm-up from ``warmup_start`` to 1 over
    ``warmup_steps``, then linear to ``final_scale`` at ``steps``.

    With a time budget, ``time_fraction`` of it spent: once that is further along than
    ``step / steps`` (the budget will end the run before its steps do), the decay follows the
    clock, as if ``time_fraction x steps`` steps were done. A run on course to end by its steps
    follows its steps alone, so its seed repeats on a busier machine."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / cfg.warmup_steps
    done = max(step, time_fraction * cfg.steps)  # steps, or the clock's equivalent
    frac = (done - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return 1.0 + (final_scale - 1.0) * min(frac, 1.0)


def linear_ramp(x: float, begin: float, end: float) -> float:
    """0 up to ``begin``, 1 from ``end`` on, linear between."""
    return min(max((x - begin) / (end - begin), 0.0), 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for g in optimizer.param_groups:
        g["lr"] = lr
