"""From a config to a ready trainer: seed, threads, task, model, run folder, callbacks, and resume.

This is the one function the CLI (``rnnlab train``) and other front ends (``rnnlab compare``, examples) call:

    trainer = setup_run(cfg)            # or setup_run(cfg, resume_dir="runs/x")
    trainer.fit()
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import build_task
from ..data.base import Task
from ..errors import UserError
from ..layers import RNNBase
from ..models import build_model
from .callbacks import default_callbacks
from .checkpoint import load_checkpoint
from .config import Config, config_from_dict, config_json, config_to_dict
from .preflight import check_memory, data_identity
from .runfolder import atomic_write, claim_run_dir, lock_run
from .tracking import GradientTracker
from .trainer import Callback, Trainer

__all__ = ["build_model_and_task", "setup_run", "tracking_callbacks", "run_name", "task_info", "load_run",
           "read_task_info", "build_run_model", "torch_nn_layer", "TORCH_NN"]

# ``model.backend = "torch.nn"``: the run's model with torch.nn's own layer in place of rnnlab's, for measuring
# rnnlab against it on the same model and loop (``rnnlab bench --train-steps``); not a backend of rnnlab's layers.
TORCH_NN = "torch.nn"


def run_name(cfg: Config) -> str:
    """``cfg.run.name``, or ``<task>-<cell>`` by default."""
    return cfg.run.name or f"{cfg.task.name}-{cfg.model.cell}"


def build_model_and_task(cfg: Config, vocab: list[str] | None = None) -> tuple[torch.nn.Module, Task]:
    """Seed the global RNG with ``cfg.train.seed``, then build the task and the model (weights depend on the seed).

    The memory the run needs is estimated first, and a run that does not fit is refused before anything is
    allocated (:func:`rnnlab.train.preflight.check_memory`). ``vocab``: a character model's vocabulary to keep (a
    resumed or evaluated run's own, from its ``task.json``) instead of the one its text gives now.
    """
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    check_memory(cfg)
    task = build_task(cfg.task, cfg.train.seed)
    if vocab is not None and task.vocab is not None and list(task.vocab) != list(vocab):
        task.use_vocab(vocab)  # type: ignore[attr-defined]  # a character task (CharLMTask)
    torch.manual_seed(cfg.train.seed)  # after the task: the weights depend on the seed alone
    if cfg.model.backend == TORCH_NN and cfg.train.track_every > 0:
        raise UserError("config: model.backend 'torch.nn' (for measuring speed) cannot be tracked: gradient "
                        "tracking reads rnnlab's layers; set train.track_every = 0")
    model = build_run_model(cfg.model, task)
    return model, task


def build_run_model(model_cfg, task) -> torch.nn.Module:
    """:func:`rnnlab.models.build_model`, or with ``model_cfg.backend == "torch.nn"`` the same model (same seed,
    same weights) whose recurrent layer is then replaced by :func:`torch_nn_layer`."""
    if model_cfg.backend != TORCH_NN:
        return build_model(model_cfg, task)
    model = build_model(dataclasses.replace(model_cfg, backend=""), task)
    model.rnn = torch_nn_layer(model.rnn)
    return model


def torch_nn_layer(layer: nn.Module) -> nn.Module:
    """``torch.nn.LSTM``/``GRU``/``RNN`` with ``layer``'s arguments and a copy of its weights (the parameter names
    are the same), so the two compute the same function and a checkpoint of one loads into the other.

    Raises:
        UserError: a cell torch.nn does not have (the variants), or a layer option it lacks (recurrent dropout,
            zoneout, DropConnect, learned initial states, all-step outputs).
    """
    assert isinstance(layer, RNNBase)
    mode = layer.spec.mode
    if mode is None:
        raise UserError(f"model: backend {TORCH_NN!r} needs a cell torch.nn has (lstm, gru, rnn_tanh, rnn_relu), "
                        f"got {layer.spec.name}")
    options = {"recurrent_dropout": layer.recurrent_dropout, "zoneout": any(layer.zoneout),
               "weight_dropout": layer.weight_dropout, "learn_init": layer.learn_init,
               "return_all_states": layer.return_all_states}
    used = [name for name, value in options.items() if value]
    if used:
        raise UserError(f"model: backend {TORCH_NN!r}: torch.nn's layers have no {', '.join(used)}")
    common = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  dropout=layer.dropout, bidirectional=layer.bidirectional)
    twin: nn.Module
    if mode == "LSTM":
        twin = nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size, **common)
    elif mode == "GRU":
        twin = nn.GRU(layer.input_size, layer.hidden_size, **common)
    else:
        twin = nn.RNN(layer.input_size, layer.hidden_size, nonlinearity=mode[4:].lower(), **common)
    twin.load_state_dict(layer.state_dict())
    return twin.to(next(layer.parameters()))


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

    The tracker (:mod:`rnnlab.train.tracking`, docs/gradflow.md) appends one JSON line per tracked step to
    ``<run>/diagnostics.jsonl``: pre/post-clip global and per-layer gradient norms, ``rho(W_hh)``, the gradient
    profile and gate statistics. It comes after the default callbacks, so the evaluation of a step has run before
    it arms its recorder for the next training step.
    """
    if cfg.train.track_every <= 0:
        return []
    return [GradientTracker(every=cfg.train.track_every, spectra_every=cfg.train.track_spectra_every)]


def setup_run(cfg: Config, *, run_dir: str | Path | None = "auto", resume_dir: str | Path | None = None,
              callbacks: list[Callback] | None = None, progress: bool | None = None,
              overwrite: bool = False) -> Trainer:
    """Build the trainer of a run, with the default callbacks plus ``callbacks``.

    Args:
        cfg: the resolved config. run_dir: the run folder; ``"auto"`` = ``out_dir/run_name(cfg)``; None = no files.
        resume_dir: a run folder with a checkpoint to continue from (its tensors, step, RNG and callback states;
            a character model keeps the vocabulary of its ``task.json``).
        callbacks: extra callbacks, called after the default ones.
        progress: override ``cfg.run.progress``.
        overwrite: a new run may replace a run already in ``run_dir`` (removing all of it); otherwise that is
            refused (see :func:`rnnlab.train.runfolder.claim_run_dir`).

    Everything that can fail on the user's input (config, data, memory, a checkpoint that does not fit) is
    checked before the run folder is touched. Then the folder is locked (``trainer.run_lock``, held until it is
    released or the trainer is dropped: :func:`rnnlab.train.runfolder.lock_run`), claimed, and the resolved config
    is written to ``run_dir/config.json`` and the task's vocabulary/scaler and data identity to ``task.json``,
    both atomically. With ``cfg.train.track_every > 0`` a gradient tracker is added too (see
    :func:`tracking_callbacks`).
    """
    if run_dir == "auto":
        run_dir = Path(cfg.run.out_dir) / run_name(cfg)
    state = None
    vocab = None
    if resume_dir is not None:
        state, _ = load_checkpoint(resume_dir, fallback=True)
        vocab = read_task_info(resume_dir).get("vocab")
    model, task = build_model_and_task(cfg, vocab=vocab)
    cbs = default_callbacks(cfg, run_dir, progress) + tracking_callbacks(cfg) + list(callbacks or [])
    trainer = Trainer(model, task, cfg, callbacks=cbs, run_dir=run_dir)
    # Under torchrun (WORLD_SIZE > 1): this rank's slice of each batch, gradients averaged over ranks, rank 0
    # writes; a no-op otherwise. Before the writes below, which only the main process does.
    from .distributed import distribute

    distribute(trainer)
    if state is not None:
        trainer.load_state_dict(state)
    if run_dir is not None and trainer.is_main:
        trainer.run_lock = lock_run(run_dir, "train")
        if resume_dir is None:
            claim_run_dir(run_dir, overwrite=overwrite)
        info = {**task_info(task), "data": data_identity(cfg.task, run_dir)}
        for name, text in (("config.json", config_json(cfg)), ("task.json", json.dumps(info, indent=1) + "\n")):
            path = Path(run_dir) / name
            if not (path.is_file() and path.read_text(encoding="utf-8") == text):  # a plain resume changes nothing
                atomic_write(path, text)
    return trainer


def read_task_info(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``task.json`` (what :func:`task_info` wrote, plus ``data``: :func:`data_identity`).

    Raises:
        UserError: the folder has no readable task.json.
    """
    path = Path(run_dir) / "task.json"
    if not path.is_file():
        raise UserError(f"run folder {run_dir} has no task.json (is it a folder written by `rnnlab train`?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"run folder {run_dir}: cannot read task.json ({str(err).splitlines()[0][:120]})") from None


def load_run(run_dir: str | Path) -> tuple[Config, torch.nn.Module, dict[str, Any]]:
    """Load a trained run for inference: ``(config, model with checkpoint weights, task_info)``; no data needed.

    Raises:
        UserError: the folder lacks config.json, task.json or a checkpoint.
    """
    run_dir = Path(run_dir)
    info = read_task_info(run_dir)
    state, cfg_dict = load_checkpoint(run_dir, fallback=True)
    cfg = config_from_dict(cfg_dict)

    class _Shape:  # what build_model reads from a task
        kind, input_size, output_size = info["kind"], info["input_size"], info["output_size"]

    model = build_run_model(cfg.model.__class__(**{**config_to_dict(cfg)["model"], "init": "torch"}), _Shape)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model, info
