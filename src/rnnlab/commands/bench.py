"""``rnnlab bench``: speed and peak memory of rnnlab's layers against torch.nn, as a ratio table and JSON."""

from __future__ import annotations

import argparse
import sys

from ..bench import CELLS, PASSES, SIZES, BenchConfig, format_table, run, write_json


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _threads(text: str) -> int | str:
    """``--threads``: a count, or ``all`` (every CPU this process may use, :func:`rnnlab.bench.thread_count`)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    d = BenchConfig()
    p = subparsers.add_parser(
        "bench", help="benchmark rnnlab vs torch.nn (speed ratio, %% of GEMM peak, peak memory)",
        description="Time rnnlab's LSTM/GRU/RNN against torch.nn with the same weights in the same run "
                    "(interleaved rounds, warm-up, median and min/max, wall and process CPU time), forward-only "
                    "and forward+backward, at the sizes S1-S5 (S5 is the main job's layer); print the ratio table and write it as JSON.")
    p.add_argument("--quick", action="store_true",
                   help="5 rounds, 1 warm-up, no memory subprocesses (about a minute)")
    p.add_argument("--cells", type=_names, default=d.cells, help=f"comma list among {list(CELLS)} (default all)")
    p.add_argument("--sizes", type=_names, default=d.sizes,
                   help="comma list among " + ", ".join(f"{k}={v.B}x{v.T}x{v.I}x{v.H}" for k, v in SIZES.items())
                        + " (B x T x I x H; default all)")
    p.add_argument("--passes", type=_names, default=d.passes, help=f"comma list among {list(PASSES)} (default both)")
    p.add_argument("--rounds", type=int, default=None, help=f"timed rounds per case (default {d.rounds}; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up calls (default {d.warmup}; quick 1)")
    p.add_argument("--threads", type=_threads, default=d.threads,
                   help="torch.set_num_threads: a count, or 'all' for every core this process may use (default 1)")
    p.add_argument("--device", default=d.device, help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default=d.dtype, help="float32 or float64 (default float32)")
    p.add_argument("--backend", default=d.backend, help="rnnlab backend to measure (default fused)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights and inputs (default 0)")
    p.add_argument("--out", default="runs/bench/bench.json", help="JSON output (default runs/bench/bench.json)")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    cfg = BenchConfig(cells=args.cells, sizes=args.sizes, passes=args.passes,
                      rounds=args.rounds if args.rounds is not None else (5 if args.quick else BenchConfig.rounds),
                      warmup=args.warmup if args.warmup is not None else (1 if args.quick else BenchConfig.warmup),
                      threads=args.threads, device=args.device, dtype=args.dtype, seed=args.seed,
                      backend=args.backend, memory=not (args.no_memory or args.quick),
                      extra={"quick": args.quick, "argv": sys.argv[1:]})
    results = run(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(results))
    path = write_json(results, args.out)
    print(f"rnnlab bench: wrote {path}")
    return 0
