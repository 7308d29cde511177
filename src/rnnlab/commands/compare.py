"""``rnnlab compare``: train RNN (tanh), LSTM and GRU on the same task, seed, init and budget; one report."""

from __future__ import annotations

import argparse

from ..diagnostics.tasks import CELLS
from ..init import INIT_PRESETS
from ..report.compare import QUICK, CompareConfig, run_compare


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    d = CompareConfig()
    p = subparsers.add_parser(
        "compare", help="train RNN/LSTM/GRU on the same task and budget; loss curves and gradient profiles",
        description="Train each cell on the adding problem with the same seed, init and budget, track gradient "
                    "flow during training, and write one HTML report (optionally with a lag sweep).")
    p.add_argument("--cells", type=_names, default=d.cells, help=f"comma list among {list(CELLS)}")
    p.add_argument("--init", default=d.init, help=f"init preset for every cell, one of {list(INIT_PRESETS)}")
    p.add_argument("--task", default=d.task, help="task (default: adding)")
    for name, kind in (("seq_len", int), ("hidden_size", int), ("num_layers", int), ("batch_size", int),
                       ("num_samples", int), ("steps", int), ("lr", float), ("clip_norm", float),
                       ("track_every", int), ("solve_fraction", float), ("seed", int)):
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name),
                       help=f"default {getattr(d, name)}")
    p.add_argument("--lags", type=_ints, default=[], help="lag sweep: comma list of sequence lengths, e.g. "
                   "25,50,100,200 (reports the largest each cell solves)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run with a tiny budget (overrides these flags): {QUICK}")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = CompareConfig(task=args.task, cells=args.cells, init=args.init, seq_len=args.seq_len,
                        hidden_size=args.hidden_size, num_layers=args.num_layers, batch_size=args.batch_size,
                        num_samples=args.num_samples, steps=args.steps, lr=args.lr, clip_norm=args.clip_norm,
                        track_every=args.track_every, lags=args.lags, solve_fraction=args.solve_fraction,
                        seed=args.seed, quick=args.quick)
    path = run_compare(cfg, args.out)
    print(f"rnnlab compare: wrote {path}")
    return 0
