"""Learning-rate schedules as a pure function of the step (plus the plateau rule's small state).

The trainer sets every parameter group's ``lr`` to :meth:`LRSchedule.lr_at` before each optimizer step, so a
resumed run needs only the step (and, for ``plateau``, :meth:`LRSchedule.state_dict`) to continue exactly.

* ``constant``: ``lr``.
* ``cosine``: ``min_lr + (lr - min_lr) (1 + cos(pi s / S)) / 2`` over the ``S`` steps after warm-up
  (Loshchilov & Hutter 2017, without restarts).
* ``step``: ``lr * gamma ** floor(s / step_size)``.
* ``plateau``: ``lr`` times ``gamma`` for each ``plateau_patience`` evaluations without improvement, floored at
  ``min_lr`` (as torch's ReduceLROnPlateau, driven by the validation metric).

All of them start with ``warmup_steps`` of linear warm-up from ``lr / warmup_steps``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserError

__all__ = ["LRSchedule", "SCHEDULES"]

SCHEDULES = ("constant", "cosine", "step", "plateau")


class LRSchedule:
    """Learning rate at each step for one :class:`rnnlab.train.config.OptimConfig`.

    Example:
        >>> from rnnlab.train.config import OptimConfig
        >>> s = LRSchedule(OptimConfig(lr=1.0, min_lr=0.0, schedule="cosine"), max_steps=100)
        >>> s.lr_at(0), round(s.lr_at(50), 3), s.lr_at(100)
        (1.0, 0.5, 0.0)
    """

    def __init__(self, cfg, max_steps: int) -> None:
        if cfg.schedule not in SCHEDULES:
            raise UserError(f"optim: unknown schedule {cfg.schedule!r}; expected one of {list(SCHEDULES)}")
        if cfg.lr <= 0:
            raise UserError(f"optim: lr must be > 0, got {cfg.lr}")
        if cfg.schedule == "step" and cfg.step_size < 1:
            raise UserError(f"optim: step_size must be >= 1, got {cfg.step_size}")
        self.cfg = cfg
        self.max_steps = max(1, max_steps)
        self.plateau_scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        s = step - cfg.warmup_steps
        if cfg.schedule == "constant":
            return cfg.lr
        if cfg.schedule == "cosine":
            span = max(1, self.max_steps - cfg.warmup_steps)
            frac = min(1.0, s / span)
            return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        if cfg.schedule == "step":
            return cfg.lr * cfg.gamma ** (s // cfg.step_size)
        return max(cfg.min_lr, cfg.lr * self.plateau_scale)

    def on_eval(self, value: float) -> None:
        """Feed a validation metric (lower is better); only ``plateau`` reacts."""
        if self.cfg.schedule != "plateau":
            return
        if self.best is None or value < self.best:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.gamma
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = state["plateau_scale"]
        self.best = state["best"]
        self.bad_evals = state["bad_evals"]
