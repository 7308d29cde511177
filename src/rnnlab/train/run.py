"""From a config to a ready trainer: seed, threads, task, model, run folder, callbacks, and resume.

This is the one function the CLI (``rnnlab train``) and other front ends (``rnnlab compare``, examples) call:

    trainer = setup_run(cfg)            # or setup_run(cfg, resume_dir="runs/x")
    trainer.fit()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data import build_task
from ..data.base import Task
from ..errors import UserError
from ..models import build_model
from .callbacks import default_callbacks
from .checkpoint import load_checkpoint
from .config import Config, config_from_dict, config_to_dict, save_config
from .trainer import Callback, Trainer

__all__ = ["build_model_and_task", "setup_run", "tracking_callbacks", "run_name", "task_info", "load_run", "clear_results"]


def run_name(cfg: Config) -> str:
    """``cfg.run.name``, or ``<task>-<cell>`` by default."""
    return cfg.run.name or f"{cfg.task.name}-{cfg.model.cell}"


def build_model_and_task(cfg: Config) -> tuple[torch.nn.Module, Task]:
    """Seed the global RNG with ``cfg.train.seed``, then build the task and the model (weights depend on the seed)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    task = build_task(cfg.task, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # after the task: the weights depend on the seed alone
    model = build_model(cfg.model, task)
    return model, task


def task_info(task: Task) -> dict[str, Any]:
    """What ``generate``/``forecast`` need to use a trained model without rebuilding its data."""
    info: dict[str, Any] = {"name": task.name, "kind": task.kind, "input_size": task.input_size,
                            "output_size": task.output_size, "per_step": task.per_step, "vocab": task.vocab}
    extra = getattr(task, "info", None)
    if callable(extra):
        info.update(extra())
    return info


def tracking_callbacks(cfg: Config) -> list[Callback]:
    """``[GradientTracker(every=cfg.train.track_every, spectra_every=cfg.train.track_spectra_every)]`` when
    tracking is on, else ``[]``.

    The tracker (:mod:`rnnlab.diagnostics.tracking`, docs/gradflow.md) appends one JSON line per tracked step to
    ``<run>/diagnostics.jsonl``: pre/post-clip global and per-layer gradient norms, ``rho(W_hh)``, the gradient
    profile and gate statistics. It comes after the default callbacks, so the evaluation of a step has run before
    it arms its recorder for the next training step.
    """
    if cfg.train.track_every <= 0:
        return []
    from ..diagnostics.tracking import GradientTracker  # lazy: it imports the trainer, which imports this package

    return [GradientTracker(every=cfg.train.track_every, spectra_every=cfg.train.track_spectra_every)]


def setup_run(cfg: Config, *, run_dir: str | Path | None = "auto", resume_dir: str | Path | None = None,
              callbacks: list[Callback] | None = None, progress: bool | None = None) -> Trainer:
    """Build the trainer of a run, with the default callbacks plus ``callbacks``.

    Args:
        cfg: the resolved config. run_dir: the run folder; ``"auto"`` = ``out_dir/run_name(cfg)``; None = no files.
        resume_dir: a run folder with a checkpoint to continue from (its tensors, step, RNG and callback states).
        callbacks: extra callbacks, called after the default ones.
        progress: override ``cfg.run.progress``.

    The resolved config is written to ``run_dir/config.json`` and the task's vocabulary/scaler to ``task.json``.
    With ``cfg.train.track_every > 0`` a gradient tracker is added too (see :func:`tracking_callbacks`).
    """
    if run_dir == "auto":
        run_dir = Path(cfg.run.out_dir) / run_name(cfg)
    model, task = build_model_and_task(cfg)
    cbs = default_callbacks(cfg, run_dir, progress) + tracking_callbacks(cfg) + list(callbacks or [])
    trainer = Trainer(model, task, cfg, callbacks=cbs, run_dir=run_dir)
    # Under torchrun (WORLD_SIZE > 1): this rank's slice of each batch, gradients averaged over ranks, rank 0
    # writes; a no-op otherwise. Before the writes below, which only the main process does.
    from .distributed import distribute

    distribute(trainer)
    if resume_dir is not None:
        state, _ = load_checkpoint(resume_dir, fallback=True)
        trainer.load_state_dict(state)
    if run_dir is not None and trainer.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if resume_dir is None:
            clear_results(run_dir)
        save_config(cfg, Path(run_dir) / "config.json")
        (Path(run_dir) / "task.json").write_text(json.dumps(task_info(task), indent=1) + "\n")
    return trainer


# What a run writes; a new (not resumed) run into an existing folder removes these first, so that its metric files
# never mix with an earlier run's. Other files in the folder are left alone.
RESULT_FILES = ("config.json", "task.json", "train.csv", "val.csv", "metrics.jsonl", "loss.png", "sample.txt",
                "checkpoint.json", "checkpoint.safetensors", "checkpoint.prev.json", "checkpoint.prev.safetensors",
                "forecast.csv", "forecast.png", "diagnostics.jsonl")


def clear_results(run_dir: str | Path) -> None:
    """Delete the files an earlier run left in ``run_dir`` (see :data:`RESULT_FILES`, plus TensorBoard events)."""
    folder = Path(run_dir)
    for name in RESULT_FILES:
        (folder / name).unlink(missing_ok=True)
    for events in folder.glob("events.out.tfevents.*"):
        events.unlink()


def load_run(run_dir: str | Path) -> tuple[Config, torch.nn.Module, dict[str, Any]]:
    """Load a trained run for inference: ``(config, model with checkpoint weights, task_info)``; no data needed.

    Raises:
        UserError: the folder lacks config.json, task.json or a checkpoint.
    """
    run_dir = Path(run_dir)
    for name in ("task.json",):
        if not (run_dir / name).is_file():
            raise UserError(f"run folder {run_dir} has no {name} (is it a folder written by `rnnlab train`?)")
    state, cfg_dict = load_checkpoint(run_dir, fallback=True)
    cfg = config_from_dict(cfg_dict)
    info = json.loads((run_dir / "task.json").read_text())

    class _Shape:  # what build_model reads from a task
        kind, input_size, output_size = info["kind"], info["input_size"], info["output_size"]

    model = build_model(cfg.model.__class__(**{**config_to_dict(cfg)["model"], "init": "torch"}), _Shape)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, info
