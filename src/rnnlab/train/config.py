"""Run configuration: dataclasses with one documented field each, loaded from TOML and overridden by CLI flags.

A run is described by one :class:`Config` made of five sections, each a dataclass: ``model``, ``task``,
``optim``, ``train`` and ``run``. The same names appear in three places:

* a TOML file, one table per section (``[model]`` ``hidden_size = 256``), see ``configs/*.toml``;
* a CLI flag per field (``--hidden-size 256``); a few fields have a shorter flag (``task.name`` is ``--task``);
* the resolved ``config.json`` a run writes into its folder, which loads back with :func:`config_from_dict`.

Unknown keys and values of the wrong type are errors (:class:`rnnlab.errors.UserError`) that name the section and
the key: a typo never silently falls back to a default. Each field's help text (``metadata["help"]``) is both its
documentation and its ``--help`` line.

Example:
    >>> cfg = load_config(None, {"model.hidden_size": 64})
    >>> cfg.model.hidden_size
    64
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cellspec import SPECS
from ..errors import UserError
from .runfolder import atomic_write

__all__ = ["ModelConfig", "TaskConfig", "OptimConfig", "TrainConfig", "RunConfig", "Config", "SECTIONS",
           "load_config", "config_from_dict", "config_to_dict", "field_flag", "iter_fields", "validate_config",
           "optional_base", "config_json", "save_config"]


def _one_of(names: list[str]) -> str:
    """``"a, b or c"``."""
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def _f(default: Any, help: str, flag: str | None = None) -> Any:
    """A dataclass field with its help text (and an optional CLI flag name other than ``--field-name``)."""
    meta = {"help": help}
    if flag:
        meta["flag"] = flag
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The network: an rnnlab recurrent layer with the task's head (see :mod:`rnnlab.models`)."""

    cell: str = _f("lstm", f"recurrent cell: {_one_of([spec.config_name for spec in SPECS.values()])} "
                           "(see docs/variants.md)")
    hidden_size: int = _f(512, "hidden units per layer")
    num_layers: int = _f(1, "stacked recurrent layers")
    embed_size: int = _f(64, "character-model input embedding width (0 = one-hot input)")
    dropout: float = _f(0.0, "dropout between recurrent layers and before the output head, in [0, 1)")
    init: str = _f("torch", "weight init preset: torch (default), orthogonal, forget_bias, irnn, chrono")
    backend: str = _f("", "whole-sequence kernel (rnnlab.available_backends(): fused, reference, torch = torch's "
                          "own op inside rnnlab's layer); empty = the default one; 'torch.nn' = torch.nn's own "
                          "layer module instead of rnnlab's, to measure against it")
    recurrent_dropout: float = _f(0.0, "variational dropout of h_{t-1} into W_hh, one mask per sequence, in [0, 1) "
                                       "(Gal & Ghahramani 2016)")
    zoneout: float = _f(0.0, "probability a unit keeps its previous state at a step, in [0, 1) (Krueger et al. 2017)")
    weight_dropout: float = _f(0.0, "DropConnect on W_hh, one mask per forward, in [0, 1) (Wan et al. 2013)")
    forget_bias: float | None = _f(None, "set the forget-gate bias (GRU: update gate) to this after init; unset = "
                                         "off (Jozefowicz et al. 2015)")
    learn_init: bool = _f(False, "learn the initial hidden (and cell) state instead of zeros")


@dataclass
class TaskConfig:
    """The data: which task, how it is batched, and the options of the tasks that read files or series."""

    name: str = _f("shakespeare", "task: see `rnnlab train --help` for the list", flag="task")
    batch_size: int = _f(32, "sequences per batch")
    seq_len: int = _f(128, "time steps per batch (a character model's BPTT chunk; a window length otherwise)")
    val_fraction: float = _f(0.1, "share of the data held out for validation (tasks that split their data)")
    path: str = _f("", "input file: a CSV for the csv task, a UTF-8 text file for the text task")
    columns: list = _f([], "csv task: input columns (empty = every numeric column)")
    target: list = _f([], "csv task: columns to forecast (empty = the input columns)")
    missing: str = _f("error", "csv task: missing values (empty or NaN cells): 'error' stops at the first, naming "
                               "its row and column; 'interpolate' fills them linearly in time (a cell that is not "
                               "a number is always an error; the bundled co2 series is always interpolated)")
    delimiter: str = _f("", "csv task: the column delimiter, e.g. ';' or tab (empty = detect it)")
    horizon: int = _f(1, "forecasting tasks: steps ahead to predict at once")
    scale: str = _f("standard", "forecasting tasks: input scaling, standard, minmax or none (fit on train only)")
    num_samples: int = _f(10000, "synthetic tasks: sequences generated for training (validation gets a tenth)")
    delay: int = _f(50, "copy task: blank steps between the symbols and the recall cue")


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping."""

    optimizer: str = _f("adam", "adam, adamw or sgd")
    lr: float = _f(3e-3, "peak learning rate")
    weight_decay: float = _f(0.0, "L2 penalty (decoupled for adamw)")
    momentum: float = _f(0.9, "sgd momentum")
    schedule: str = _f("cosine", "learning-rate schedule: constant, cosine, step or plateau")
    warmup_steps: int = _f(0, "linear warm-up steps before the schedule")
    min_lr: float = _f(1e-4, "cosine: final learning rate; plateau: lower bound")
    step_size: int = _f(1000, "step schedule: steps between decays")
    gamma: float = _f(0.5, "step and plateau schedules: decay factor")
    plateau_patience: int = _f(2, "plateau schedule: evaluations without improvement before a decay")
    clip_norm: float = _f(1.0, "clip the global gradient L2 norm to this (0 = off; Pascanu et al. 2013)")
    clip_value: float = _f(0.0, "clip each gradient element to [-v, v] (0 = off)")


@dataclass
class TrainConfig:
    """The loop: budget, truncated BPTT, evaluation, early stopping, checkpoints."""

    max_steps: int = _f(800, "optimizer steps (the budget)")
    max_time: float = _f(0.0, "stop after this many seconds of training (0 = no limit)")
    bptt_stride: int = _f(0, "k1: steps the forward pass advances between backward passes (0 = seq_len)")
    bptt_horizon: int = _f(0, "k2: steps each backward pass reaches back, >= k1 (0 = k1)")
    eval_every: int = _f(100, "evaluate on the validation split every N steps (0 = only at the end)")
    eval_batches: int = _f(20, "validation batches per periodic evaluation (0 = the whole split)")
    final_eval_batches: int = _f(0, "validation batches for the final evaluation (0 = the whole split)")
    early_stop_patience: int = _f(0, "stop after N evaluations without improvement (0 = off)")
    checkpoint_every: int = _f(100, "write a checkpoint every N steps (0 = only at the end)")
    log_every: int = _f(10, "write training metrics every N steps")
    seed: int = _f(0, "seed for weights, data order and dropout: a seed fixes a run")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    device: str = _f("cpu", "torch device, e.g. cpu or cuda")
    max_bad_steps: int = _f(10, "stop the run after N consecutive skipped (non-finite) steps (0 = never)")
    track_every: int = _f(0, "gradient tracking every N steps into <run>/diagnostics.jsonl (0 = off; see "
                             "docs/gradflow.md)")
    track_spectra_every: int = _f(10, "with tracking, rho(W_hh) at every Kth record only (and at the start and "
                                      "the end): the eigenvalues cost up to a training step at H=128")


@dataclass
class RunConfig:
    """Where results go and what is printed."""

    name: str = _f("", "run folder name under out_dir (empty = <task>-<cell>)")
    out_dir: str = _f("runs", "parent folder of run folders")
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "draw loss curves (PNG) at the end")
    tensorboard: bool = _f(True, "write TensorBoard event files when tensorboard is installed")
    sample_length: int = _f(400, "character models: length of the text sample printed at the end (0 = none)")
    sample_temperature: float = _f(0.8, "character models: sampling temperature of that sample")


@dataclass
class Config:
    """A whole run. Sections: model, task, optim, train, run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def iter_fields():
    """Yield ``(section, dataclass_field)`` for every configurable field, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f


def field_flag(f: dataclasses.Field) -> str:
    """The CLI flag of a field: ``--hidden-size`` for ``hidden_size`` unless the field names its own."""
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def optional_base(kind: Any) -> type | None:
    """``float`` for a field typed ``float | None`` (unset = off), None for a field that cannot be unset."""
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


def _coerce(where: str, value: Any, kind: Any) -> Any:
    """Check ``value`` against the field type; ints are accepted for floats, nothing else is converted.
    A ``X | None`` field accepts None (JSON ``null``; TOML has no null: leave the key out)."""
    base = optional_base(kind)
    if base is not None:
        return None if value is None else _coerce(where, value, base)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list:
        if not isinstance(value, list):
            raise UserError(f"config: {where} should be a list, got {type(value).__name__} {value!r}")
        return list(value)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise UserError(f"config: {where} should be of type {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from nested ``{section: {key: value}}``, on top of ``base`` (defaults if None).

    Raises:
        UserError: unknown section or key, a value of the wrong type or out of range (see validate_config).
    """
    cfg = dataclasses.replace(base) if base is not None else Config()
    if not isinstance(data, dict):
        raise UserError(f"config: expected a table of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"config: unknown section [{section}]; expected one of {list(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"config: [{section}] should be a table, got {type(values).__name__}")
        cls = SECTIONS[section]
        known = {f.name for f in dataclasses.fields(cls)}
        current = getattr(cfg, section)
        updates = {}
        for key, value in values.items():
            if key not in known:
                raise UserError(f"config: unknown key {key!r} in [{section}]; expected one of {sorted(known)}")
            updates[key] = _coerce(f"{section}.{key}", value, _field_type(cls, key))
        setattr(cfg, section, dataclasses.replace(current, **updates))
    validate_config(cfg)
    return cfg


# Ranges of the numeric fields. A value outside is an error naming the field: never clamped, never left to fail
# deep inside torch with a traceback (``--hidden-size 0``, ``--lr nan``, ``--checkpoint-every -1``).
_AT_LEAST: dict[str, int] = {
    "model.hidden_size": 1, "model.num_layers": 1, "model.embed_size": 0,
    "task.batch_size": 1, "task.seq_len": 1, "task.horizon": 1, "task.num_samples": 1, "task.delay": 1,
    "optim.weight_decay": 0, "optim.momentum": 0, "optim.warmup_steps": 0, "optim.min_lr": 0,
    "optim.step_size": 1, "optim.plateau_patience": 0, "optim.clip_norm": 0, "optim.clip_value": 0,
    "train.max_steps": 0, "train.max_time": 0, "train.bptt_stride": 0, "train.bptt_horizon": 0,
    "train.eval_every": 0, "train.eval_batches": 0, "train.final_eval_batches": 0,
    "train.early_stop_patience": 0, "train.checkpoint_every": 0, "train.log_every": 1, "train.threads": 0,
    "train.max_bad_steps": 0, "train.track_every": 0, "train.track_spectra_every": 1, "run.sample_length": 0,
}
_UNIT = ("model.recurrent_dropout", "model.zoneout", "model.weight_dropout")  # probabilities, in [0, 1)
_POSITIVE = ("optim.lr", "optim.gamma", "run.sample_temperature")


def validate_config(cfg: Config) -> None:
    """Check value ranges (the types were checked on loading), the cell name and the device name.

    Raises:
        UserError: ``config: task.batch_size must be >= 1, got 0`` and the like.
    """
    import math

    for section, f in iter_fields():
        key, value = f"{section}.{f.name}", getattr(getattr(cfg, section), f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config: {key} must be a finite number, got {value}")
        if value is None:  # an unset optional field (off)
            continue
        if key in _AT_LEAST and value < _AT_LEAST[key]:
            raise UserError(f"config: {key} must be >= {_AT_LEAST[key]}, got {value}")
        if key in _POSITIVE and value <= 0:
            raise UserError(f"config: {key} must be > 0, got {value}")
        if key in _UNIT and not 0 <= value < 1:
            raise UserError(f"config: {key} must be in [0, 1), got {value}")
    from ..models import CELLS  # lazy: the model zoo imports torch and the layers

    if cfg.model.cell.lower() not in CELLS:  # before any data is loaded, not after
        raise UserError(f"config: model.cell: unknown cell {cfg.model.cell!r}; expected one of {list(CELLS)}")
    if not 0 < cfg.task.val_fraction < 1:
        raise UserError(f"config: task.val_fraction must be in (0, 1), got {cfg.task.val_fraction}")
    import torch

    try:
        device = torch.device(cfg.train.device)
    except (RuntimeError, ValueError):
        raise UserError(f"config: train.device: unknown device {cfg.train.device!r}; expected e.g. 'cpu', "
                        f"'cuda' or 'cuda:1'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config: train.device is {cfg.train.device!r} but torch sees no CUDA device")


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (JSON- and TOML-friendly) of every field, defaults included."""
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if given), then ``overrides`` as ``{"section.key": value}``.

    Raises:
        UserError: missing or malformed file, unknown key, wrong type.
    """
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config: file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8")) if p.suffix != ".json" else json.loads(p.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"config: cannot parse {p}: {err}") from None
        cfg = config_from_dict(data, cfg)
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    return config_from_dict(nested, cfg)


def config_json(cfg: Config) -> str:
    """The resolved config as the JSON text of ``config.json`` (it loads back with ``load_config(path)``)."""
    return json.dumps(config_to_dict(cfg), indent=2) + "\n"


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically (:func:`config_json`)."""
    atomic_write(path, config_json(cfg))
