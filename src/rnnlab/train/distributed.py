"""Data-parallel training across processes (PyTorch distributed; gloo on CPU, nccl on GPU), launched by torchrun.

How it splits the work, and why the result equals one process training on the same global batch:

* every rank builds the same task and the same model from the same seed (and rank 0's parameters are broadcast
  once, so even a hand-built model starts identical);
* training batches are a pure function of ``(seed, step)`` (:meth:`rnnlab.data.base.Task.train_batch`), so each
  rank builds the global batch and keeps its own contiguous slice of ``B / world_size`` sequences: no sampler,
  no data exchange, and resuming at a step resumes every rank's data stream;
* each rank's loss is the mean over its slice; a hook on every parameter averages each backward pass's gradient
  over the ranks (``all_reduce`` sum / world size) before it is accumulated, so after ``backward`` every rank
  holds the gradient of the global-batch mean loss, and clipping and the optimizer step are the same on all
  ranks: the replicas stay identical without any further communication;
* only rank 0 writes files and prints (:attr:`rnnlab.train.Trainer.is_main`); every rank evaluates the whole
  validation split (identical numbers, so early stopping agrees).

Known limits: dropout draws different masks per rank (as in any data-parallel run, so results then match a
single process only in distribution); a non-finite loss on one rank only would leave the others waiting in the
gradient all-reduce (the gloo/nccl timeout ends the run); the logged training loss is rank 0's slice's.

:func:`rnnlab.train.run.setup_run` calls :func:`distribute` on every trainer it builds (a no-op unless launched
by torchrun with ``WORLD_SIZE > 1``), so the same command trains on one process or many::

    torchrun --standalone --nproc-per-node 2 -m rnnlab train --task sine --batch-size 64

and a script does the same with ``trainer = setup_run(cfg); trainer.fit()`` under torchrun.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.base import Batch, Task
from ..errors import UserError

__all__ = ["DistributedInfo", "env_info", "distribute", "ShardedTask", "average_gradients_hook"]


class DistributedInfo:
    """``rank``, ``world_size`` and ``local_rank`` of this process, as torchrun sets them in the environment."""

    def __init__(self, rank: int, world_size: int, local_rank: int) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    def __repr__(self) -> str:
        return f"DistributedInfo(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"


def env_info() -> DistributedInfo | None:
    """This process's place in a torchrun launch, or None when not launched that way (or with one process).

    Raises:
        UserError: the torchrun variables are malformed.
    """
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return None
    try:
        info = DistributedInfo(int(os.environ.get("RANK", "0")), int(world), int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError(f"distributed: RANK/WORLD_SIZE/LOCAL_RANK must be integers, got RANK="
                        f"{os.environ.get('RANK')!r} WORLD_SIZE={world!r} LOCAL_RANK="
                        f"{os.environ.get('LOCAL_RANK')!r}") from None
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise UserError(f"distributed: expected 0 <= RANK < WORLD_SIZE, got RANK={info.rank} "
                        f"WORLD_SIZE={info.world_size}")
    return info if info.world_size > 1 else None


class ShardedTask:
    """A task whose training batches are this rank's contiguous slice of the global batch; all else delegated.

    Not a :class:`Task` subclass on purpose: Task's class-level defaults (``per_step``, ``stateful``, ...) would
    shadow the wrapped task's values, which ``__getattr__`` forwards.

    ``x`` is ``(T, B, ...)``: sliced on dim 1; per-step targets ``(T, B[, O])`` on dim 1, per-sequence targets
    ``(B[, O])`` on dim 0. Validation batches are not sliced (every rank scores the whole split).
    """

    def __init__(self, task: Task, rank: int, world_size: int) -> None:
        self.inner, self.rank, self.world_size = task, rank, world_size

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on ShardedTask itself: name, kind, sizes, loss, score, vocab, ...
        return getattr(self.__dict__["inner"], name)

    def train_batch(self, step: int) -> Batch:
        batch = self.inner.train_batch(step)
        B = batch.x.size(1)
        if B % self.world_size:
            raise UserError(f"distributed: the batch size ({B}) must be divisible by the number of processes "
                            f"({self.world_size}), so that every rank's slice has the same size")
        n = B // self.world_size
        lo = self.rank * n
        y_dim = 1 if self.inner.per_step else 0
        return Batch(batch.x.narrow(1, lo, n), batch.y.narrow(y_dim, lo, n), batch.reset)  # (T, B/world, ...)

    def describe(self) -> str:
        return f"{self.inner.describe()} [rank {self.rank} of {self.world_size}: 1/{self.world_size} of each batch]"


def average_gradients_hook(world_size: int):
    """A tensor hook ``grad -> all_reduce(grad) / world_size``: the mean over ranks of one backward's gradient.

    Registered on each parameter with ``Tensor.register_hook``, it runs on the gradient of every backward call
    before accumulation into ``.grad``, so TBPTT windows (one backward each) average correctly: the sum over
    windows of rank means is the rank mean of the sums.
    """

    def hook(grad: Tensor) -> Tensor:
        grad = grad.clone()  # the incoming gradient may be shared with other consumers in the graph
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.div_(world_size)

    return hook


def distribute(trainer, info: DistributedInfo | None = None, backend: str | None = None):
    """Make ``trainer`` one rank of a data-parallel run (see the module docstring); a no-op for one process.

    Args:
        trainer: a :class:`rnnlab.train.Trainer`, before :meth:`fit`.
        info: the process's rank and world size; default :func:`env_info` (torchrun's environment).
        backend: ``"gloo"`` or ``"nccl"``; default nccl when the trainer's device is CUDA, else gloo.

    Returns:
        The trainer (``rank``, ``world_size`` and ``task`` set, gradient hooks registered).

    Raises:
        UserError: a batch size not divisible by the world size shows up at the first step.
    """
    info = info if info is not None else env_info()
    if info is None or isinstance(trainer.task, ShardedTask):  # one process, or already distributed
        return trainer
    if trainer.device.type == "cuda":
        # One GPU per process: torchrun's LOCAL_RANK picks it.
        torch.cuda.set_device(info.local_rank)
        trainer.device = torch.device("cuda", info.local_rank)
        trainer.model.to(trainer.device)
    backend = backend or ("nccl" if trainer.device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
        atexit.register(_shutdown)
    trainer.rank, trainer.world_size = info.rank, info.world_size
    trainer.task = ShardedTask(trainer.task, info.rank, info.world_size)
    with torch.no_grad():
        for p in trainer.model.parameters():
            dist.broadcast(p.data, src=0)  # identical replicas even if a model's init was not seeded alike
    for p in trainer.model.parameters():
        if p.requires_grad:
            p.register_hook(average_gradients_hook(info.world_size))
    return trainer


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
