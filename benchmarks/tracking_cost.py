"""What gradient tracking costs inside the real :class:`rnnlab.train.Trainer`, per training step.

For each cell, three short runs of the adding problem (T=100, B=32, H=128, one layer, Adam, norm clipping) from
the same seed: no tracker; :class:`rnnlab.diagnostics.tracking.GradientTracker` ``(every=1)`` (every step tracked:
profile from the step's own fused backward, scalar gate statistics, per-layer norms, ``rho(W_hh)``); and the same
without ``rho`` (``spectra_every`` larger than the run). Reported: the median process-CPU milliseconds per trainer
step (step end to step end, after 5 warm-up steps) and the ratios to the untracked run. One thread.

    python benchmarks/tracking_cost.py [--steps 40] [--cells lstm gru rnn_tanh]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnlab.data import build_task
from rnnlab.diagnostics.tracking import GradientTracker
from rnnlab.models import build_model
from rnnlab.train.config import load_config
from rnnlab.train.trainer import Callback, Trainer


class _StepClock(Callback):
    """Process CPU time from one step end to the next (the whole step, callbacks included)."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._last: float | None = None

    def on_step_end(self, trainer, step, metrics) -> None:
        now = time.process_time()
        if self._last is not None:
            self.ms.append(1e3 * (now - self._last))
        self._last = now


def step_ms(cell: str, steps: int, tracker: GradientTracker | None) -> float:
    cfg = load_config(None, {"task.name": "adding", "task.seq_len": 100, "task.num_samples": 2048,
                             "task.batch_size": 32, "model.cell": cell, "model.hidden_size": 128,
                             "model.num_layers": 1, "optim.clip_norm": 1.0, "train.max_steps": steps,
                             "train.eval_every": 0, "run.progress": False})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    clock = _StepClock()
    Trainer(model, task, cfg, callbacks=([tracker] if tracker else []) + [clock]).fit()
    return statistics.median(clock.ms[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn_tanh"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| cell | untracked step, CPU ms | tracked every step | × untracked | without rho | × untracked |")
    print("|---|---|---|---|---|---|")
    for cell in args.cells:
        plain = step_ms(cell, args.steps, None)
        full = step_ms(cell, args.steps, GradientTracker(every=1, at_start=False, at_end=False))
        no_rho = step_ms(cell, args.steps, GradientTracker(every=1, at_start=False, at_end=False,
                                                          spectra_every=10 * args.steps))
        print(f"| {cell} | {plain:.1f} | {full:.1f} | {full / plain:.2f} | {no_rho:.1f} | {no_rho / plain:.2f} |")


if __name__ == "__main__":
    main()
