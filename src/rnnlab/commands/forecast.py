"""``rnnlab forecast RUN_DIR``: forecast with a trained series model; writes predictions (CSV) and a plot (PNG).

For every window of the series (the run's own data, or ``--input`` CSV with the same columns) the model predicts
the next steps; the CSV has one row per time point (its date when the data has a date column, else its index)
with the actual target values, the one-step-ahead prediction from the window ending just before it, and, after
the end of the series, ``--horizon`` future steps (by default the model's own; more are forecast by feeding the
forecast back as input).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser("forecast", help="forecast a series with a trained model (CSV + plot)",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of a forecasting task (csv, sunspots, co2)")
    p.add_argument("--input", metavar="CSV", default="",
                   help="series to forecast, with the run's columns (default: the run's own data)")
    p.add_argument("--horizon", type=int, default=0, metavar="N",
                   help="steps to forecast after the end of the series (0 = the horizon the model was trained "
                        "for; more are forecast by feeding the forecast back)")
    p.add_argument("--output", metavar="CSV", default="", help="predictions file (default: RUN_DIR/forecast.csv)")
    p.add_argument("--plot", metavar="PNG", default="", help="plot file (default: RUN_DIR/forecast.png)")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="use the run's data even if it changed since the run was trained (refused otherwise)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.series import (check_missing, forecast_ahead, format_stamp, interpolate_missing, make_windows,
                               predict_windows, read_csv_table, statsmodels_csv)
    from ..errors import UserError
    from ..train.preflight import locate_data
    from ..train.run import load_run
    from ..train.runfolder import lock_run

    if args.horizon < 0:
        raise UserError(f"--horizon must be >= 0, got {args.horizon}")
    for flag, target in (("--output", args.output), ("--plot", args.plot)):
        if target and not Path(target).parent.is_dir():  # fail before the work, not with a traceback after it
            raise UserError(f"forecast: {flag} {target}: the folder {Path(target).parent} does not exist")
    cfg, model, info = load_run(args.run_dir)
    if "scaler" not in info:
        raise UserError(f"{args.run_dir} is a {info['name']} run, not a forecasting task (csv, sunspots, co2)")
    own = info["name"] == "csv"
    data = None if args.input else locate_data(args.run_dir, info, accept_changed=args.accept_changed_data)
    if not (args.output and args.plot):  # writes into the run folder: not while another command writes there
        _lock = lock_run(args.run_dir, "forecast")  # noqa: F841 - held until this function returns
    source = args.input or str(data or (cfg.task.path if own else statsmodels_csv(info["name"])))
    needed = list(dict.fromkeys(info["inputs"] + info["targets"]))
    table = read_csv_table(source, needed, cfg.task.delimiter if own else "")
    if own:
        check_missing(table, cfg.task.missing, source)
    names = table.names
    values, _ = interpolate_missing(table.values)
    shift = np.array([info["scaler"]["shift"][info["columns"].index(c)] for c in names])
    scale = np.array([info["scaler"]["scale"][info["columns"].index(c)] for c in names])
    scaled = (values - shift) / scale
    in_idx = [names.index(c) for c in info["inputs"]]
    out_idx = [names.index(c) for c in info["targets"]]
    window, horizon, n_out = info["window"], info["horizon"], len(out_idx)
    steps = args.horizon or horizon
    n = scaled.shape[0]
    if n < window:
        raise UserError(f"forecast: the series has {n} points, fewer than the model's window of {window}")
    # One-step-ahead predictions: the first forecast step of every window that ends before the last point.
    x, _ = make_windows(scaled, in_idx, out_idx, window, 1)  # (n - window, window, I)
    first = predict_windows(model, x).reshape(-1, horizon, n_out)[:, 0] * scale[out_idx] + shift[out_idx]
    one_ahead = np.full((n, n_out), np.nan)
    one_ahead[window:] = first
    future = forecast_ahead(model, scaled[-window:, in_idx], info["inputs"], info["targets"], horizon, steps)
    future = future * scale[out_idx] + shift[out_idx]  # (steps, O) in the data's units

    index: list = list(range(n + steps))
    if table.dates is not None:
        dates = table.dates
        step = np.median(np.diff(dates)) if n > 1 else np.timedelta64(1, "D")  # the series' usual spacing
        index = list(dates) + [dates[-1] + step * (h + 1) for h in range(steps)]
    label = table.date_column or "index"

    run_dir = Path(args.run_dir)
    out_csv = Path(args.output) if args.output else run_dir / "forecast.csv"
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([label] + [f"{c}_actual" for c in info["targets"]] + [f"{c}_predicted" for c in info["targets"]])
        for t in range(n):
            w.writerow([format_stamp(index[t])] + [f"{v:.6g}" for v in values[t, out_idx]] +
                       ["" if np.isnan(v) else f"{v:.6g}" for v in one_ahead[t]])
        for h in range(steps):
            w.writerow([format_stamp(index[n + h])] + [""] * n_out + [f"{v:.6g}" for v in future[h]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_out, 1, figsize=(10, 3.5 * n_out), squeeze=False)
    for j, name in enumerate(info["targets"]):
        ax = axes[j, 0]
        ax.plot(index[:n], values[:, out_idx[j]], lw=1, label="actual")
        ax.plot(index[:n], one_ahead[:, j], lw=1, label="1-step-ahead prediction")
        ax.plot(index[n:], future[:, j], "o-", ms=3, label=f"forecast ({steps} steps)")
        ax.set_title(f"{info['name']}: {name}")
        ax.set_xlabel(label if table.dates is not None else "time index")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(args.plot) if args.plot else run_dir / "forecast.png"
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    print(f"forecast: next {steps} steps of {info['targets']}: " + "; ".join(
        ", ".join(f"{v:.4g}" for v in row) for row in future))
    print(f"wrote {out_csv} and {out_png}")
    return 0

