"""What a task gives the trainer: batches, a loss, and scores.

A :class:`Task` owns its data and the loss; the :class:`rnnlab.train.Trainer` owns the loop and knows nothing
about either beyond this interface. Every batch is time-major, the library's canonical layout:

* ``x``: ``(T, B)`` int64 token ids for a character model, else ``(T, B, I)`` float;
* ``y``: per-step targets ``(T, B)`` (class ids) or ``(T, B, O)`` (values) when :attr:`Task.per_step` is true,
  else one target per sequence, ``(B,)`` or ``(B, O)``, scored on the model's output at the last step.

Training batches are a pure function of ``(seed, step)`` (:meth:`Task.train_batch`), so resuming at a step
reproduces the exact data order with no iterator state to save, and a rank of a data-parallel run can take its
own slice of the batch by index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Batch", "Task", "seeded_generator"]


@dataclass
class Batch:
    """One batch. ``reset``: a stateful task starts new streams here (the carried state must be zeroed)."""

    x: Tensor
    y: Tensor
    reset: bool = False


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (e.g. ``(seed, epoch)``), independent of the global RNG."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class Task:
    """Base class of tasks. Subclasses set the attributes and implement :meth:`train_batch` and :meth:`val_batches`.

    Attributes:
        name: registry name. kind: ``"lm"``, ``"classification"`` or ``"regression"`` (what the head and loss are).
        input_size: features per step (vocabulary size for a character model).
        output_size: outputs per step of the head (vocabulary size, classes, or values).
        per_step: targets at every step (True) or one per sequence, at the last step (False).
        stateful: consecutive training batches continue the same streams, so the recurrent state is carried
            across batches (detached) until a batch says ``reset``.
        steps_per_epoch: training batches in one pass over the training data.
        vocab: the characters of a character model (index = token id), else None.
        metric: the validation number to report and early-stop on (lower is better), a key of :meth:`evaluate`.
    """

    name: str = ""
    kind: str = "regression"
    input_size: int = 1
    output_size: int = 1
    per_step: bool = True
    stateful: bool = False
    steps_per_epoch: int = 1
    vocab: list[str] | None = None
    metric: str = "loss"

    def train_batch(self, step: int) -> Batch:
        """The training batch of optimizer step ``step`` (0-based); a pure function of the task's seed and step."""
        raise NotImplementedError

    def val_batches(self) -> Iterator[Batch]:
        """The validation split, in a fixed order (the same every call)."""
        raise NotImplementedError

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean loss. ``output``: ``(T, B, O)`` per step or ``(B, O)`` per sequence; ``target`` to match."""
        if self.kind in ("lm", "classification"):
            return F.cross_entropy(output.reshape(-1, output.size(-1)), target.reshape(-1))
        return F.mse_loss(output, target.reshape(output.shape))

    def score(self, output: Tensor, target: Tensor) -> dict[str, tuple[float, int]]:
        """Extra validation metrics as ``{name: (sum, count)}``; the trainer averages them over the split."""
        if self.kind == "classification":
            pred = output.reshape(-1, output.size(-1)).argmax(-1)
            return {"accuracy": (float((pred == target.reshape(-1)).sum()), pred.numel())}
        return {}

    def describe(self) -> str:
        """One line for the log: sizes of the splits and shapes."""
        return f"{self.name}: input_size={self.input_size} output_size={self.output_size}"
