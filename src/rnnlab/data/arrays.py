"""Tasks whose whole data fits in memory as tensors: synthetic problems, classification sets, forecast windows.

:class:`ArrayTask` stores sequences batch-first (``(N, T, I)``) and serves time-major batches. The training order is
a fresh permutation per epoch drawn from ``(seed, epoch)``, so batch ``step`` is a pure function of the seed and
the step (exact resume, no iterator state).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import UserError
from .base import Batch, Task, seeded_generator

__all__ = ["ArrayTask"]


class ArrayTask(Task):
    """A task over fixed tensors.

    Args:
        name, kind: see :class:`rnnlab.data.Task`. per_step: targets at every step or one per sequence.
        x_train, x_val: ``(N, T, I)`` float (or ``(N, T)`` int64 ids).
        y_train, y_val: ``(N, T)`` / ``(N, T, O)`` when ``per_step``, else ``(N,)`` / ``(N, O)``.
        output_size: of the model's head. batch_size, seed: batching.

    Shape of batches: ``x`` ``(T, B, I)``; ``y`` ``(T, B[, O])`` per step, else ``(B[, O])``.
    """

    def __init__(self, name: str, kind: str, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor,
                 output_size: int, batch_size: int, seed: int, per_step: bool) -> None:
        if x_train.size(0) == 0 or x_val.size(0) == 0:
            raise UserError(f"{name}: need at least one training and one validation sequence, got "
                            f"{x_train.size(0)} and {x_val.size(0)}")
        self.name, self.kind, self.per_step = name, kind, per_step
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train, x_val, y_val
        self.input_size = x_train.size(-1) if x_train.dim() == 3 else 1
        self.output_size = output_size
        self.batch_size = min(batch_size, x_train.size(0))
        self.seed = seed
        self.steps_per_epoch = x_train.size(0) // self.batch_size

    def _batch(self, x: Tensor, y: Tensor) -> Batch:
        return Batch(x.transpose(0, 1), y.transpose(0, 1) if self.per_step else y)  # (T, B, ...)

    def train_batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.x_train.size(0), generator=seeded_generator(self.seed, epoch))
        idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
        return self._batch(self.x_train[idx], self.y_train[idx])

    def val_batches(self) -> Iterator[Batch]:
        for start in range(0, self.x_val.size(0), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield self._batch(self.x_val[sl], self.y_val[sl])

    def describe(self) -> str:
        return (f"{self.name}: {self.x_train.size(0):,} training / {self.x_val.size(0):,} validation sequences "
                f"of {self.x_train.size(1)} steps x {self.input_size} features, output {self.output_size}")
