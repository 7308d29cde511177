"""``rnnlab train``: train a model on a task; with no arguments, the main job (an LSTM on Shakespeare).

Flags mirror the config fields (``rnnlab train --help``); a TOML file (``--config``) gives a base that flags
override. Results go to ``runs/<name>/``: ``config.json``, ``task.json``, ``train.csv``, ``val.csv``,
``metrics.jsonl``, TensorBoard events, ``loss.png``, the checkpoint, and (character models) ``sample.txt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..data import available_tasks
from ..errors import UserError
from ..train.cli_args import add_config_flags, config_overrides
from ..train.config import Config, config_from_dict, load_config

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
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import generate_text
    from ..train.run import run_name, setup_run
    from ..train.checkpoint import load_checkpoint

    overrides = config_overrides(args)
    if args.resume:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback is reported once, when setup_run loads the state
            _, saved = load_checkpoint(args.resume, fallback=True)
        if args.config:
            raise UserError("--resume uses the run's saved config; give changes as flags, not --config")
        nested: dict = {}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            nested.setdefault(section, {})[key] = value
        cfg = config_from_dict(nested, config_from_dict(saved))
        run_dir = Path(args.resume)
    else:
        cfg = infer_file_task(load_config(args.config, overrides), overrides)
        run_dir = Path(cfg.run.out_dir) / run_name(cfg)
    t0 = time.perf_counter()
    trainer = setup_run(cfg, run_dir=run_dir, resume_dir=args.resume)
    print(f"rnnlab train: {trainer.task.describe()}", file=sys.stderr)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"rnnlab train: {cfg.model.cell} hidden {cfg.model.hidden_size} x {cfg.model.num_layers} layer(s), "
          f"{n_params:,} parameters; {cfg.train.max_steps} steps of {cfg.task.batch_size} x {cfg.task.seq_len}; "
          f"run folder {run_dir}" + (f" (resuming at step {trainer.step})" if args.resume else ""),
          file=sys.stderr)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(resume_hint(run_dir)) from None
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
        (run_dir / "sample.txt").write_text(sample)
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


def resume_hint(run_dir: Path) -> str:
    """What an interrupted run kept: the step of its last checkpoint and the command that continues it."""
    import json

    try:
        step = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint was written yet in {run_dir}; start the run again"
    return f"the checkpoint of step {step} is in {run_dir}; continue with: rnnlab train --resume {run_dir}"
