"""``rnnlab forecast RUN_DIR``: forecast with a trained series model; writes predictions (CSV) and a plot (PNG).

For every window of the series (the run's own data, or ``--input`` CSV with the same columns) the model predicts
the next ``horizon`` steps; the CSV has one row per time index with the actual target values, the one-step-ahead
prediction from the window ending just before it, and, after the end of the series, the ``horizon`` future steps.
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
    p.add_argument("--output", metavar="CSV", default="", help="predictions file (default: RUN_DIR/forecast.csv)")
    p.add_argument("--plot", metavar="PNG", default="", help="plot file (default: RUN_DIR/forecast.png)")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="use the run's data even if it changed since the run was trained (refused otherwise)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data.series import interpolate_missing, read_csv_columns, statsmodels_csv
    from ..errors import UserError
    from ..train.preflight import locate_data
    from ..train.run import load_run
    from ..train.runfolder import lock_run

    for flag, target in (("--output", args.output), ("--plot", args.plot)):
        if target and not Path(target).parent.is_dir():  # fail before the work, not with a traceback after it
            raise UserError(f"forecast: {flag} {target}: the folder {Path(target).parent} does not exist")
    cfg, model, info = load_run(args.run_dir)
    if "scaler" not in info:
        raise UserError(f"{args.run_dir} is a {info['name']} run, not a forecasting task (csv, sunspots, co2)")
    data = None if args.input else locate_data(args.run_dir, info, accept_changed=args.accept_changed_data)
    if not (args.output and args.plot):  # writes into the run folder: not while another command writes there
        _lock = lock_run(args.run_dir, "forecast")  # noqa: F841 - held until this function returns
    source = args.input or str(data or (cfg.task.path if info["name"] == "csv" else statsmodels_csv(info["name"])))
    needed = list(dict.fromkeys(info["inputs"] + info["targets"]))
    names, raw = read_csv_columns(source, needed)
    if info["name"] == "csv" and cfg.task.missing == "error" and np.isnan(raw).any():
        raise UserError(f"forecast: {source} has {int(np.isnan(raw).sum())} empty or NaN value(s) and the run was "
                        f"trained with --missing error; retrain with --missing interpolate to fill them")
    values, _ = interpolate_missing(raw)
    shift = np.array([info["scaler"]["shift"][info["columns"].index(c)] for c in names])
    scale = np.array([info["scaler"]["scale"][info["columns"].index(c)] for c in names])
    scaled = (values - shift) / scale
    in_idx = [names.index(c) for c in info["inputs"]]
    out_idx = [names.index(c) for c in info["targets"]]
    window, horizon, n_out = info["window"], info["horizon"], len(out_idx)
    n = scaled.shape[0]
    if n < window:
        raise UserError(f"forecast: the series has {n} points, fewer than the model's window of {window}")
    starts = list(range(0, n - window + 1))
    x = torch.tensor(np.stack([scaled[s:s + window, in_idx] for s in starts]), dtype=torch.float32)  # (W, L, I)
    with torch.no_grad():
        out, _ = model(x.transpose(0, 1))  # (L, W, H*O)
    pred = out[-1].view(len(starts), horizon, n_out).numpy()  # (W, horizon, O)
    pred = pred * scale[out_idx] + shift[out_idx]  # back to the data's units
    one_ahead = np.full((n, n_out), np.nan)
    for k, s in enumerate(starts[:-1]):
        one_ahead[s + window] = pred[k, 0]
    future = pred[-1]  # (horizon, O): after the last point

    run_dir = Path(args.run_dir)
    out_csv = Path(args.output) if args.output else run_dir / "forecast.csv"
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index"] + [f"{c}_actual" for c in info["targets"]] + [f"{c}_predicted" for c in info["targets"]])
        for t in range(n):
            w.writerow([t] + [f"{v:.6g}" for v in values[t, out_idx]] + ["" if np.isnan(v) else f"{v:.6g}"
                                                                       for v in one_ahead[t]])
        for h in range(horizon):
            w.writerow([n + h] + [""] * n_out + [f"{v:.6g}" for v in future[h]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_out, 1, figsize=(10, 3.5 * n_out), squeeze=False)
    for j, name in enumerate(info["targets"]):
        ax = axes[j, 0]
        ax.plot(range(n), values[:, out_idx[j]], lw=1, label="actual")
        ax.plot(range(n), one_ahead[:, j], lw=1, label="1-step-ahead prediction")
        ax.plot(range(n, n + horizon), future[:, j], "o-", ms=3, label=f"forecast ({horizon} steps)")
        ax.set_title(f"{info['name']}: {name}")
        ax.set_xlabel("time index")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(args.plot) if args.plot else run_dir / "forecast.png"
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    print(f"forecast: next {horizon} steps of {info['targets']}: " + "; ".join(
        ", ".join(f"{v:.4g}" for v in row) for row in future))
    print(f"wrote {out_csv} and {out_png}")
    return 0
