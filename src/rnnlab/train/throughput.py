"""Training throughput of one run's model and loop with rnnlab's layer and with torch.nn's, measured in one process.

``rnnlab bench --train-steps N`` calls :func:`compare_backends`: two trainers are built from the same config and
seed (so the same weights and the same batches), one with the config's backend and one with ``torch.nn``'s layer
(:func:`rnnlab.train.run.torch_nn_layer`). After a warm-up step each, they take turns: ``rounds`` rounds of
``steps`` optimizer steps (:meth:`Trainer.train_step`, everything ``rnnlab train`` does per step: the batch, the
truncated-BPTT windows, forward, backward, clipping, the optimizer), the order alternating between rounds so that
a slow spell on a shared machine hits both. Reported: characters (batch x steps) per second of wall time and of
process CPU time, median, min and max over the rounds, and the ratio of the medians. Evaluation, checkpoints and
logging are left out: they are the same code on both and would only dilute the difference.
"""

from __future__ import annotations

import dataclasses
import time

from ..bench import summary
from .config import Config
from .run import TORCH_NN, build_model_and_task
from .trainer import Trainer

__all__ = ["compare_backends"]


def compare_backends(cfg: Config, steps: int, rounds: int, backends: tuple[str, str] = ("", TORCH_NN)) -> dict:
    """Characters per second of ``cfg``'s training loop for each of ``backends`` (model.backend values; ``""`` is
    rnnlab's default), interleaved in this process.

    Returns:
        ``{"steps", "rounds", "chars_per_step", backend label: {"chars_per_s_wall": summary,
        "chars_per_s_cpu": summary}, "ratio_wall", "ratio_cpu"}`` with the labels ``rnnlab`` (or
        ``rnnlab:<backend>``) and ``torch.nn``; a ratio is the first's chars/s over the second's (above 1: the
        first trains faster).
    """
    trainers: dict[str, Trainer] = {}
    for backend in backends:
        run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend=backend))
        model, task = build_model_and_task(run_cfg)
        label = TORCH_NN if backend == TORCH_NN else ("rnnlab" + (f":{backend}" if backend else ""))
        trainers[label] = Trainer(model, task, run_cfg)
    chars: dict[str, int] = {}
    for label, trainer in trainers.items():
        trainer.model.train()
        chars[label] = int(_advance(trainer, 1)[2])  # warm-up: the first step allocates and loads code paths
    wall: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(rounds):
        for label in (list(trainers) if r % 2 == 0 else list(reversed(trainers))):
            w, c, n = _advance(trainers[label], steps)
            wall[label].append(n / w)
            cpu[label].append(n / c)
    first, second = trainers
    result: dict = {"steps": steps, "rounds": rounds, "chars_per_step": chars[first]}
    for label in trainers:
        result[label] = {"chars_per_s_wall": summary(wall[label]), "chars_per_s_cpu": summary(cpu[label])}
    for kind in ("wall", "cpu"):
        key = f"chars_per_s_{kind}"
        result[f"ratio_{kind}"] = result[first][key]["median"] / result[second][key]["median"]
    return result


def _advance(trainer: Trainer, steps: int) -> tuple[float, float, float]:
    """``steps`` training steps: ``(wall seconds, process CPU seconds, characters)``."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    items = 0.0
    for _ in range(steps):
        items += trainer.train_step(trainer.task.train_batch(trainer.step))["items"]
        trainer.step += 1
    return time.perf_counter() - wall0, time.process_time() - cpu0, items
