"""``rnnlab train``: train a model on a task; with no arguments, the main job (an LSTM on Shakespeare).

Flags mirror the config fields (``rnnlab train --help``); a TOML file (``--config``) gives a base that flags
override. Results go to ``runs/<name>/``: ``config.json``, ``task.json``, ``train.csv``, ``val.csv``,
``metrics.jsonl``, TensorBoard events, ``loss.png``, the checkpoint, and (character models) ``sample.txt``. A
folder that already holds a run is never overwritten unless ``--overwrite`` says so, and one run writes into a
folder at a time (:mod:`rnnlab.train.runfolder`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import available_tasks
from ..errors import UserError
from ..train.cli_args import add_config_flags, config_overrides
from ..train.config import Config, config_from_dict, load_config
from ..train.runfolder import atomic_write

if TYPE_CHECKING:
    from ..train.trainer import Trainer

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on a task (no arguments: LSTM character model on Shakespeare)",
        description=__doc__.split("\n\n")[0] + f" Tasks: {', '.join(available_tasks())}.")
    # No ArgumentDefaultsHelpFormatter: config flags default to None (unset, so the TOML file wins) and their help
    # already names the config default.
    p.add_argument("--config", metavar="FILE", help="TOML file with [model], [task], [optim], [train], [run] tables")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint (its config, plus any flags given here)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in the run folder (all of it is removed first); without it, "
                        "training into a folder that holds a run is refused")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue on data that changed since the run was trained (refused otherwise)")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import load_checkpoint
    from ..train.preflight import locate_data
    from ..train.run import read_task_info, run_name, setup_run

    overrides = config_overrides(args)
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces one: give one of them")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback is reported once, when setup_run loads the state
            _, saved = load_checkpoint(args.resume, fallback=True)
        if args.config:
            raise UserError("--resume uses the run's saved config; give changes as flags, not --config")
        base = config_from_dict(saved)
        _refuse_fixed_changes(base, overrides)
        nested: dict = {}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            nested.setdefault(section, {})[key] = value
        cfg = config_from_dict(nested, base)
        data = locate_data(args.resume, read_task_info(args.resume), accept_changed=args.accept_changed_data)
        if data is not None:
            cfg.task.path = str(data)  # where the data is now (its folder may have moved with the run)
        run_dir = Path(args.resume)
    else:
        if args.accept_changed_data:
            raise UserError("--accept-changed-data goes with --resume")
        cfg = infer_file_task(load_config(args.config, overrides), overrides)
        run_dir = Path(cfg.run.out_dir) / run_name(cfg)
    t0 = time.perf_counter()
    trainer = setup_run(cfg, run_dir=run_dir, resume_dir=args.resume, overwrite=args.overwrite)
    try:
        return _train(trainer, cfg, run_dir, bool(args.resume), t0)
    except KeyboardInterrupt:
        step = _checkpoint_step(run_dir)
        where = (f"the checkpoint of step {step} is in {run_dir}; continue with `rnnlab train --resume {run_dir}`"
                 if step is not None else "no checkpoint was written yet")
        print(f"rnnlab train: interrupted at step {trainer.step}; {where}", file=sys.stderr)
        return 130
    finally:
        if trainer.run_lock is not None:  # None on the ranks of a distributed run that do not write
            trainer.run_lock.release()  # the folder is free for the next command, also when this one failed


def _checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's intact checkpoint (the latest, or the previous one), None if there is none."""
    from ..train.checkpoint import load_checkpoint

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _ = load_checkpoint(run_dir, fallback=True)
    except UserError:
        return None
    return int(state["step"])


# What --resume cannot change: the data and its batching (the carried state, the data order and the saved
# vocabulary or scaler depend on them), the seed, the truncation windows (the carried context has their length)
# and the optimizer (its saved moments). A change of the model's shape is refused when the checkpoint is loaded.
FIXED_ON_RESUME = ("task.", "train.seed", "train.bptt_stride", "train.bptt_horizon", "optim.optimizer")


def _refuse_fixed_changes(saved: Config, overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        if not dotted.startswith(FIXED_ON_RESUME):
            continue
        section, _, key = dotted.partition(".")
        old = getattr(getattr(saved, section), key)
        if value != old:
            raise UserError(f"--resume cannot change {dotted} ({old!r} -> {value!r}): the checkpoint was trained "
                            f"with {old!r}; start a new run (another --name) to train with {value!r}")


def _train(trainer: Trainer, cfg: Config, run_dir: Path, resumed: bool, t0: float) -> int:
    from ..models import generate_text

    print(f"rnnlab train: {trainer.task.describe()}", file=sys.stderr)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"rnnlab train: {cfg.model.cell} hidden {cfg.model.hidden_size} x {cfg.model.num_layers} layer(s), "
          f"{n_params:,} parameters; {cfg.train.max_steps} steps of {cfg.task.batch_size} x {cfg.task.seq_len}; "
          f"run folder {run_dir}" + (f" (resuming at step {trainer.step})" if resumed else ""),
          file=sys.stderr)
    result = trainer.fit()
    for step, reason in trainer.skipped[:5]:
        print(f"rnnlab train: skipped step {step}: {reason}", file=sys.stderr)
    if len(trainer.skipped) > 5:
        print(f"rnnlab train: ... {len(trainer.skipped)} skipped steps in all", file=sys.stderr)
    if trainer.stop_reason:  # train.max_bad_steps consecutive non-finite steps: a failed run, not bad input
        print(f"rnnlab train: error: {trainer.stop_reason}; the last checkpoint with finite weights is in "
              f"{run_dir}", file=sys.stderr)
        return 1
    summary = (f"done: {result['step']} steps in {result['train_time']:.0f} s of training "
               f"({time.perf_counter() - t0:.0f} s in all); validation loss {result['val_loss']:.4f}")
    if trainer.task.kind == "lm":
        summary += f" nats/char ({result['val_loss'] / 0.6931471805599453:.3f} bits/char)"
    for k, v in result.items():
        if k.startswith("val_") and k != "val_loss":
            summary += f", {k} {v:.4f}"
    print(summary)
    if trainer.task.kind == "lm" and cfg.run.sample_length > 0:
        import torch

        gen = torch.Generator().manual_seed(cfg.train.seed)
        sample = generate_text(trainer.model, trainer.task.vocab, length=cfg.run.sample_length,
                               temperature=cfg.run.sample_temperature, generator=gen)
        atomic_write(run_dir / "sample.txt", sample)
        print(f"--- sample (temperature {cfg.run.sample_temperature}) ---\n{sample}\n---")
    print(f"results in {run_dir}/")
    return 0


def infer_file_task(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``--path FILE`` with no task chosen: the csv task for a ``.csv``/``.tsv`` file, else the text task (the
    default task, shakespeare, reads a folder of plays, so a file given to it is a text the user wants to train on)."""
    path = Path(cfg.task.path)
    if "task.name" in overrides or cfg.task.name != "shakespeare" or not cfg.task.path or path.is_dir():
        return cfg
    name = "csv" if path.suffix.lower() in (".csv", ".tsv") else "text"
    print(f"rnnlab train: {path} is a file: the {name} task (give --task to choose another)", file=sys.stderr)
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, name=name))
