"""``rnnlab gradflow``: see the gradient flow through time of chosen cells and init presets, at step 0."""

from __future__ import annotations

import argparse

from ..diagnostics.tasks import CELLS
from ..init import INIT_PRESETS
from ..report.gradflow import GradflowConfig, run_gradflow


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    d = GradflowConfig()
    p = subparsers.add_parser(
        "gradflow", help="gradient flow through time at initialisation: heatmap, profiles, Jacobians, gates",
        description="Measure ||dL/dh_t|| at every step and layer, Jacobian-product spectra, W_hh spectra and "
                    "gate statistics for each cell and init preset on one adding-problem batch, and write an "
                    "HTML report with PNG figures.")
    p.add_argument("--cells", type=_names, default=d.cells,
                   help=f"comma list of cells among {list(CELLS)} (default: {','.join(d.cells)})")
    p.add_argument("--inits", type=_names, default=d.inits,
                   help=f"comma list of init presets among {list(INIT_PRESETS)} (default: torch)")
    p.add_argument("--task", default=d.task, help="task (default: adding)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"sequence length T (default {d.seq_len})")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help=f"default {d.hidden_size}")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help=f"default {d.num_layers}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--rows", type=int, default=d.rows,
                   help=f"batch rows for the Jacobian products (default {d.rows})")
    p.add_argument("--t-max", type=float, default=None, help="chrono init's T_max (default: --seq-len)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights and data (default 0)")
    p.add_argument("--contrast", type=_names, default=None, metavar="CELL:INIT,...",
                   help="extra cell:init pairs measured beside cells x inits (default: with --inits torch and an "
                        "LSTM, lstm:forget_bias,lstm:chrono, the contrast that shows what the forget gate does; "
                        "'none' for no extra pairs)")
    p.add_argument("--out", default="runs/gradflow", help="output folder (default runs/gradflow)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = GradflowConfig(cells=args.cells, inits=args.inits, task=args.task, seq_len=args.seq_len,
                         hidden_size=args.hidden_size, num_layers=args.num_layers, batch_size=args.batch_size,
                         rows=args.rows, t_max=args.t_max, seed=args.seed,
                         contrast=[] if args.contrast == ["none"] else args.contrast)
    path = run_gradflow(cfg, args.out)
    print(f"rnnlab gradflow: wrote {path}")
    return 0
