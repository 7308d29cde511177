"""The task registry: task name -> ``builder(cfg, seed) -> Task`` (see :mod:`rnnlab.data` for the tasks shipped).

Its own module, below :mod:`rnnlab.data.builtin` (which registers the shipped tasks into it) and the package's
``__init__`` (which imports both), so that no module of the package imports the package itself.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from .base import Task

__all__ = ["TASKS", "register_task", "build_task", "available_tasks"]

Builder = Callable[..., Task]
TASKS: dict[str, Builder] = {}


def register_task(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder(cfg, seed) -> Task`` available as task ``name``."""

    def deco(builder: Builder) -> Builder:
        TASKS[name] = builder
        return builder

    return deco


def available_tasks() -> list[str]:
    return sorted(TASKS)


def build_task(cfg, seed: int) -> Task:
    """Build the task named ``cfg.name`` with the options of ``cfg`` (a :class:`rnnlab.train.config.TaskConfig`).

    Raises:
        UserError: unknown task name, bad option, or missing data package.
    """
    if cfg.name not in TASKS:
        raise UserError(f"unknown task {cfg.name!r}; expected one of {available_tasks()}")
    if cfg.batch_size < 1 or cfg.seq_len < 1:
        raise UserError(f"task {cfg.name}: batch_size and seq_len must be >= 1, got {cfg.batch_size} and "
                        f"{cfg.seq_len}")
    return TASKS[cfg.name](cfg, seed)
