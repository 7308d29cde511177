"""``rnnlab eval RUN_DIR``: evaluate a trained run's checkpoint on its task's validation split.

A forecasting run (csv, sunspots, co2) also gets its errors in the data's units: MAE and RMSE per target column,
next to the naive forecast (the last value) and, with ``--period``, the seasonal naive one.
"""

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
    p.add_argument("--period", type=int, default=0, metavar="P",
                   help="forecasting runs: the season's length in steps (12 for monthly data with a yearly cycle), "
                        "for a seasonal naive baseline (0 = none)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="use the run's data even if it changed since the run was trained (refused otherwise)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.series import SeriesTask, forecast_errors
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
    series = task if isinstance(task, SeriesTask) else None
    if args.period and series is None:
        raise UserError(f"--period is for forecasting runs; {args.run_dir} is a {task.name} run")
    model.load_state_dict(state["model"])
    metrics = Trainer(model, task, cfg).evaluate(args.batches)
    metrics = {"step": state["step"], **metrics}
    if task.kind == "lm":
        metrics["val_bits_per_char"] = metrics["val_loss"] / 0.6931471805599453
    errors = forecast_errors(series, model, args.period) if series is not None else {}
    if args.json:
        print(json.dumps({**metrics, **errors}))
        return 0
    print(f"{task.name} @ step {state['step']}: " + "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k != "step"))
    if series is not None:
        baselines = [("naive_", "naive (last value)")] + ([("seasonal_", f"seasonal naive (period {args.period})")]
                                                          if args.period else [])
        for col in series.targets:  # one line per column: each in its own units
            line = f"  {col}: model MAE {errors[f'mae_{col}']:.4g} RMSE {errors[f'rmse_{col}']:.4g}"
            for prefix, name in baselines:
                line += f"; {name} MAE {errors[f'{prefix}mae_{col}']:.4g} RMSE {errors[f'{prefix}rmse_{col}']:.4g}"
            print(line)
    return 0
