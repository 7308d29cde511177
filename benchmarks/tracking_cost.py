"""What gradient tracking costs inside the real :class:`rnnlab.train.Trainer`, per training step.

For each cell, four short runs of the adding problem (T=100, B=32, H=128, one layer, Adam, norm clipping) from
the same seed: no tracker; :class:`rnnlab.train.tracking.GradientTracker` ``(every=1)`` with its defaults
(every step tracked: profile from the step's own fused backward, scalar gate statistics, per-layer norms, and
``rho(W_hh)`` at every 10th record); the same with ``rho`` at every record (``spectra_every=1``); and without
``rho`` (``spectra_every`` larger than the run). Reported: process-CPU milliseconds per trainer step (step end to
step end, after 5 warm-up steps and without the last step, which always measures ``rho``) and the ratios to the
untracked run: medians, except for the default tracker, whose cost differs between records with and without
``rho``, so there the means of all measured steps (40 by default, 4 of them with ``rho``) of both runs are
compared. The four runs are repeated in rounds (rotating their order); each ratio is taken within a round and
the median and range over rounds are printed. One thread.

    python benchmarks/tracking_cost.py [--steps 47] [--rounds 3] [--cells lstm gru rnn_tanh]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnlab.data import build_task
from rnnlab.models import build_model
from rnnlab.train.config import load_config
from rnnlab.train.tracking import GradientTracker
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


def step_ms(cell: str, steps: int, tracker: GradientTracker | None) -> tuple[float, float]:
    """(median, mean) process-CPU ms per step over the steps after the first 5, the last one left out."""
    cfg = load_config(None, {"task.name": "adding", "task.seq_len": 100, "task.num_samples": 2048,
                             "task.batch_size": 32, "model.cell": cell, "model.hidden_size": 128,
                             "model.num_layers": 1, "optim.clip_norm": 1.0, "train.max_steps": steps,
                             "train.eval_every": 0, "run.progress": False})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    clock = _StepClock()
    Trainer(model, task, cfg, callbacks=([tracker] if tracker else []) + [clock]).fit()
    ms = clock.ms[5:-1]
    return statistics.median(ms), statistics.fmean(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=47)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the four runs, in rotating order")
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn_tanh"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    trackers = {
        "plain": lambda: None,
        "default": lambda: GradientTracker(every=1, at_start=False, at_end=False),
        "full": lambda: GradientTracker(every=1, at_start=False, at_end=False, spectra_every=1),
        "no_rho": lambda: GradientTracker(every=1, at_start=False, at_end=False, spectra_every=10 * args.steps),
    }
    print(f"ratios to the untracked run of the same round: median (min-max) over {args.rounds} rounds")
    print("| cell | untracked step, CPU ms (median) | defaults (rho every 10th), means | rho every step, medians | "
          "without rho, medians |")
    print("|---|---|---|---|---|")
    for cell in args.cells:
        ratios: dict[str, list[float]] = {k: [] for k in trackers if k != "plain"}
        plain_ms = []
        names = list(trackers)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no run always goes first
            got = {name: step_ms(cell, args.steps, trackers[name]()) for name in order}
            plain_ms.append(got["plain"][0])
            ratios["default"].append(got["default"][1] / got["plain"][1])
            ratios["full"].append(got["full"][0] / got["plain"][0])
            ratios["no_rho"].append(got["no_rho"][0] / got["plain"][0])
        cols = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in ratios.values()]
        print(f"| {cell} | {statistics.median(plain_ms):.1f} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
