"""The trainer's standard callbacks: evaluation, early stopping, metric files, TensorBoard, progress bar,
checkpoints and plots. Every file is written by a callback, and only when ``trainer.is_main`` (rank 0).

Files in the run folder:

* ``train.csv``: every ``log_every`` steps the mean loss, mean pre-clip gradient norm, clip rate (share of steps
  whose gradient was clipped), learning rate, throughput and skipped steps;
* ``val.csv``: one row per evaluation (``val_loss`` and the task's scores);
* ``metrics.jsonl``: the same records, one JSON object a line, with ``"split"``;
* ``events.out.tfevents.*`` when tensorboard is installed; ``loss.png`` at the end;
* ``checkpoint.{safetensors,json}`` (see :mod:`rnnlab.train.checkpoint`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .checkpoint import save_checkpoint
from .config import config_to_dict
from .guard import first_nonfinite_parameter
from .trainer import Callback, Trainer

__all__ = ["EvalCallback", "EarlyStopping", "MetricsLogger", "TensorBoardLogger", "ProgressBar",
           "CheckpointCallback", "PlotCallback", "default_callbacks", "read_csv"]


class EvalCallback(Callback):
    """Evaluate every ``every`` steps on ``batches`` validation batches, and on the whole split (or
    ``final_batches``) at the end; calls every callback's ``on_eval_end`` through :meth:`Trainer.emit_eval`."""

    def __init__(self, every: int, batches: int = 0, final_batches: int = 0) -> None:
        self.every, self.batches, self.final_batches = every, batches, final_batches

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0:
            trainer.emit_eval({**trainer.evaluate(self.batches), "final": 0.0})

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        final = trainer.evaluate(self.final_batches)
        final["final"] = 1.0
        trainer.emit_eval(final)
        metrics.update({k: v for k, v in final.items() if k != "final"})


class EarlyStopping(Callback):
    """Stop when ``val_loss`` has not improved by more than ``min_delta`` for ``patience`` evaluations."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best = math.inf
        self.bad = 0

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if metrics.get("final"):
            return
        if metrics["val_loss"] < self.best - self.min_delta:
            self.best, self.bad = metrics["val_loss"], 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                trainer.should_stop = True
                trainer.stop_reason = f"early stopping: no improvement in {self.patience} evaluations"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best if math.isfinite(self.best) else None, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = math.inf if state["best"] is None else state["best"]
        self.bad = state["bad"]


class _Averager:
    """Means of the step metrics since the last flush."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = self.ok = 0
        self.loss = self.norm = self.clipped = self.items = self.time = 0.0
        self.skipped = 0

    def add(self, m: dict[str, float]) -> None:
        self.n += 1
        self.items += m["items"]
        self.time += m["step_time"]
        if m["skipped"]:
            self.skipped += 1
            return
        self.ok += 1
        self.loss += m["loss"]
        self.norm += m["grad_norm"]
        self.clipped += m["clipped"]

    def row(self, step: int, lr: float) -> dict[str, float]:
        ok = max(self.ok, 1)
        return {"step": step, "loss": self.loss / ok if self.ok else math.nan, "grad_norm": self.norm / ok,
                "clip_rate": self.clipped / ok, "lr": lr, "items_per_s": self.items / max(self.time, 1e-9),
                "skipped": self.skipped}


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats ([] if the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _record_step(line: str, jsonl: bool) -> float | None:
    """The step of a log line, or None for a line that does not parse (the half-written last line of a crash)."""
    try:
        return float(json.loads(line)["step"]) if jsonl else float(line.split(",", 1)[0])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_after(path: Path, step: int, jsonl: bool = False) -> None:
    """Cut an append-only log back to ``step`` (the checkpoint's): the records past it were written by a run that
    was interrupted after its last checkpoint, and a line cut short by a crash or a full disk is dropped too.

    The records are in step order, so the file is cut at the first record past ``step`` (or the first line that
    does not parse or lacks its newline), in place: one ``os.truncate``, and the lines kept are never rewritten.
    """
    if not path.is_file():
        return
    keep = 0
    with path.open("rb") as f:
        for k, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                break
            if k > 0 or jsonl:  # a CSV's first line is its header
                at = _record_step(raw.decode("utf-8", "replace"), jsonl)
                if at is None or at > step:
                    break
            keep += len(raw)
    if keep < path.stat().st_size:
        os.truncate(path, keep)


class MetricsLogger(Callback):
    """Writes ``train.csv``, ``val.csv`` and ``metrics.jsonl`` in ``run_dir`` (rank 0 only)."""

    def __init__(self, run_dir: str | Path, every: int = 10) -> None:
        self.dir = Path(run_dir)
        self.every = max(1, every)
        self.avg = _Averager()
        self.last_row: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main and trainer.step > 0:
            for name in ("train.csv", "val.csv"):
                _truncate_after(self.dir / name, trainer.step)
            _truncate_after(self.dir / "metrics.jsonl", trainer.step, jsonl=True)

    def _write(self, name: str, row: dict[str, float], split: str) -> None:
        path = self.dir / name
        new = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"split": split, **row}) + "\n")

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.avg.add(metrics)
        if step % self.every == 0:
            self.last_row = self.avg.row(step, metrics["lr"])
            if trainer.is_main:
                self._write("train.csv", self.last_row, "train")
            self.avg.reset()

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        # The steps since the last full interval (a budget that is not a multiple of log_every).
        if self.avg.n and trainer.is_main:
            self.last_row = self.avg.row(trainer.step, trainer.schedule.lr_at(max(trainer.step - 1, 0)))
            self._write("train.csv", self.last_row, "train")
        self.avg.reset()

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if trainer.is_main:
            self._write("val.csv", {"step": step, **metrics}, "val")


class TensorBoardLogger(Callback):
    """TensorBoard scalars (``train/loss``, ``train/grad_norm``, ``val/loss``...) when tensorboard is installed;
    otherwise does nothing (``available`` is False)."""

    def __init__(self, run_dir: str | Path, every: int = 10) -> None:
        self.dir, self.every = Path(run_dir), max(1, every)
        self.writer: Any = None  # a SummaryWriter once the run starts
        self.avg = _Averager()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            self.available = True
        except ImportError:
            self.available = False

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.available and trainer.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=trainer.step + 1 if trainer.step else None)

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        self.avg.add(metrics)
        if step % self.every == 0:
            for k, v in self.avg.row(step, metrics["lr"]).items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)
            self.avg.reset()

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k.removeprefix('val_')}", v, step)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar over the step budget with the smoothed loss, throughput and ETA; evaluations are printed."""

    def __init__(self, unit: str = "step", items_name: str = "items", stream=None) -> None:
        self.unit, self.items_name = unit, items_name
        self.stream = stream or sys.stderr
        self.bar = None
        self.ema: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.config.train.max_steps, initial=trainer.step, unit=self.unit,
                        file=self.stream, dynamic_ncols=True, mininterval=0.5)

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        if not metrics["skipped"]:
            # Exponential moving average: the raw per-batch loss is too noisy to read.
            self.ema = metrics["loss"] if self.ema is None else 0.95 * self.ema + 0.05 * metrics["loss"]
        rate = metrics["items"] / max(metrics["step_time"], 1e-9)
        self.bar.set_postfix_str(f"loss {self.ema:.3f} | {rate / 1000:.1f}k {self.items_name}/s | "
                                 f"lr {metrics['lr']:.2e}", refresh=False)
        self.bar.update(1)

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "final")
        line = f"{'final' if metrics.get('final') else 'eval'} @ step {step}: {text}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CheckpointCallback(Callback):
    """Write ``checkpoint.{safetensors,json}`` every ``every`` steps and at the end (rank 0 only)."""

    def __init__(self, run_dir: str | Path, every: int = 0) -> None:
        self.dir, self.every = Path(run_dir), every

    def save(self, trainer: Trainer) -> None:
        if trainer.is_main:
            bad = first_nonfinite_parameter(trainer.model)
            if bad is not None:
                # Never replace a usable checkpoint with broken weights: the last good one stays.
                warnings.warn(f"checkpoint: not written at step {trainer.step}: parameter {bad} is not finite; "
                              f"the previous checkpoint in {self.dir} is kept", UserWarning, stacklevel=2)
                return
            save_checkpoint(self.dir, trainer.state_dict(), config_to_dict(trainer.config))

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0:
            self.save(trainer)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.save(trainer)


class PlotCallback(Callback):
    """At the end, ``loss.png``: training loss (mean per log interval) and validation loss against the step,
    and the pre-clip gradient norm; drawn from the CSV files so a resumed run shows its whole history."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.is_main:
            plot_run(self.dir, title=f"{trainer.task.name}")


def plot_run(run_dir: Path, title: str = "") -> Path | None:
    """Draw ``run_dir/loss.png`` from ``train.csv`` and ``val.csv``; returns its path (None if no data)."""
    train, val = read_csv(run_dir / "train.csv"), read_csv(run_dir / "val.csv")
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
        ax2.semilogy([r["step"] for r in train], [r["grad_norm"] for r in train], lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("pre-clip gradient norm")
    ax2.set_title("gradient norm")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def default_callbacks(config, run_dir: str | Path | None, progress: bool | None = None) -> list[Callback]:
    """The usual set for a config: evaluation, early stopping (if on), files, TensorBoard, progress, checkpoints,
    plots. Without ``run_dir`` only evaluation, early stopping and the progress bar."""
    tc, rc = config.train, config.run
    cbs: list[Callback] = [EvalCallback(tc.eval_every, tc.eval_batches, tc.final_eval_batches)]
    if tc.early_stop_patience:
        cbs.append(EarlyStopping(tc.early_stop_patience))
    if run_dir is not None:
        cbs.append(MetricsLogger(run_dir, tc.log_every))
        if rc.tensorboard:
            tb = TensorBoardLogger(run_dir, tc.log_every)
            if tb.available:
                cbs.append(tb)
    if rc.progress if progress is None else progress:
        cbs.append(ProgressBar(items_name="chars" if config.task.name in ("shakespeare", "text") else "timesteps"))
    if run_dir is not None:
        cbs.append(CheckpointCallback(run_dir, tc.checkpoint_every))
        if rc.plots:
            cbs.append(PlotCallback(run_dir))
    return cbs
