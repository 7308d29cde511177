"""Shared pieces of the convergence benchmarks: a plain training loop, timing, tables and JSON.

The benchmarks train rnnlab layers (the default fused backend) with a deliberately small, explicit loop rather
than :class:`rnnlab.train.Trainer`, so that each script states every choice the paper made (optimiser, clipping,
fresh data per step, what is evaluated and when) in a few lines a reader can check against the paper.

Every run is single-threaded (``torch.set_num_threads(1)``), seeded, and records wall time and process CPU time:
on a shared machine the wall time varies with the load, the CPU time much less.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import rnnlab

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "Curve", "setup", "make_layer", "train_loop", "write_json", "print_table", "fmt"]

CELL_LABEL = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)"}


def setup(threads: int = 1) -> None:
    """One thread: the benchmarks' convention, so that CPU times compare and a shared machine stays usable."""
    torch.set_num_threads(threads)


def make_layer(cell: str, input_size: int, hidden_size: int, *, bidirectional: bool = False) -> nn.Module:
    """The rnnlab layer for ``lstm``, ``gru``, ``rnn_tanh`` or ``rnn_relu`` (time-major, one layer)."""
    if cell == "lstm":
        return rnnlab.LSTM(input_size, hidden_size, bidirectional=bidirectional)
    if cell == "gru":
        return rnnlab.GRU(input_size, hidden_size, bidirectional=bidirectional)
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnnlab.RNN(input_size, hidden_size, nonlinearity=cell[4:], bidirectional=bidirectional)
    raise ValueError(f"convergence benchmark: unknown cell {cell!r}; expected one of {list(CELL_LABEL)}")


@dataclass
class Curve:
    """Evaluation metric against optimiser steps, plus the cost of the run."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    steps_run: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop(model: nn.Module, loss_on: Callable[[int], Tensor], evaluate: Callable[[], float], *, steps: int,
               lr: float, clip: float | None, eval_every: int,
               stop: Callable[[float], bool] | None = None, progress: str = "") -> Curve:
    """Adam for ``steps`` steps on ``loss_on(step)`` (a scalar loss of a fresh batch), evaluating every
    ``eval_every`` steps and at the end.

    Args:
        model: parameters to train.
        loss_on: ``step -> loss``; builds the batch and runs the model.
        evaluate: held-out metric, computed under ``torch.no_grad`` in eval mode.
        steps, lr: optimiser budget and Adam learning rate (betas and eps at torch's defaults).
        clip: global gradient-norm clip (Pascanu, Mikolov & Bengio 2013), or ``None``.
        eval_every: evaluation period in steps (step 0 is evaluated too).
        stop: ``metric -> bool``; when true after an evaluation, training stops early (recorded in the curve).
        progress: prefix of a one-line progress report on stderr at each evaluation; empty for silence.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = Curve()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    running: list[float] = []

    def _eval(step: int) -> bool:
        model.eval()
        with torch.no_grad():
            value = float(evaluate())
        model.train()
        curve.steps.append(step)
        curve.values.append(value)
        curve.train_loss.append(sum(running) / len(running) if running else math.nan)
        running.clear()
        if progress:
            print(f"  {progress} step {step:5d}  eval {value:.4f}  ({time.perf_counter() - wall0:.0f}s)",
                  file=sys.stderr, flush=True)
        return stop is not None and stop(value)

    done = _eval(0)
    step = 0
    while not done and step < steps:
        loss = loss_on(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        running.append(float(loss.detach()))
        step += 1
        if step % eval_every == 0 or step == steps:
            done = _eval(step)
    curve.steps_run = step
    curve.stopped_early = bool(done and step < steps) or (done and step == 0)
    curve.wall_s = time.perf_counter() - wall0
    curve.cpu_s = time.process_time() - cpu0
    return curve


def environment() -> dict[str, Any]:
    """Versions and machine facts stored beside every result."""
    return {
        "torch": torch.__version__, "rnnlab": rnnlab.__version__, "python": platform.python_version(),
        "backend": rnnlab.get_backend() if hasattr(rnnlab, "get_backend") else "?",
        "threads": torch.get_num_threads(), "machine": platform.machine(), "cpus_visible": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (config, runs, summary, verdicts) plus :func:`environment` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "environment": environment()}
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def fmt(v: float, digits: int = 4) -> str:
    """A number for a table: fixed point, or ``-`` for NaN/None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    text = "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells[1:])])
    print(text, flush=True)
    return text


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence (NaN when empty)."""
    s = sorted(xs)
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


class EveryStep(nn.Module):
    """A recurrent layer read out at every step by one linear map: ``y_t = W h_t + b``.

    Shape: input ``(T, B, I)``; output ``(T, B, out_features)``.
    """

    def __init__(self, layer: nn.Module, hidden: int, out_features: int) -> None:
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (T, B, H)
        return self.head(out)  # (T, B, O)


class LastStep(EveryStep):
    """The same read-out of the last output only: ``y = W h_T + b``. Shape: output ``(B, out_features)``."""

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (T, B, H)
        return self.head(out[-1])  # (B, O)
