"""``rnnlab eval RUN_DIR``: evaluate a trained run's checkpoint on its task's validation split."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained run on its validation split",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `rnnlab train`")
    p.add_argument("--batches", type=int, default=0, metavar="N",
                   help="validation batches to use (0 = the whole split)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="use the run's data even if it changed since the run was trained (refused otherwise)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..train.checkpoint import load_checkpoint
    from ..train.config import config_from_dict
    from ..train.preflight import locate_data
    from ..train.run import build_model_and_task, read_task_info
    from ..train.trainer import Trainer

    if args.batches < 0:
        raise UserError(f"--batches must be >= 0, got {args.batches}")
    state, cfg_dict = load_checkpoint(args.run_dir, fallback=True)
    cfg = config_from_dict(cfg_dict)
    info = read_task_info(args.run_dir)
    data = locate_data(args.run_dir, info, accept_changed=args.accept_changed_data)
    if data is not None:
        cfg.task.path = str(data)  # found and verified, from any working directory
    model, task = build_model_and_task(cfg, vocab=info.get("vocab"))  # the ids the model was trained on
    model.load_state_dict(state["model"])
    metrics = Trainer(model, task, cfg).evaluate(args.batches)
    metrics = {"step": state["step"], **metrics}
    if task.kind == "lm":
        metrics["val_bits_per_char"] = metrics["val_loss"] / 0.6931471805599453
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{task.name} @ step {state['step']}: " + "  ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "step"))
    return 0
