"""``rnnlab bench``: speed and peak memory of rnnlab's layers against torch.nn, as a ratio table and JSON; with
``--train-steps`` the training loop's characters per second on rnnlab's layer and on torch.nn's, with
``--generate`` those of ``rnnlab generate``."""

from __future__ import annotations

import argparse
import sys

from ..bench import (CELLS, PASSES, SIZES, BenchConfig, cpu_label, format_table, machine_info, run, thread_count,
                     write_json)


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
                    "and forward+backward, at the sizes S1-S5 (S5 is the main job's layer); print the ratio table "
                    "and write it as JSON.")
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
    p.add_argument("--train-steps", type=int, default=0, metavar="N",
                   help="instead of the layer cases, time `rnnlab train`'s step loop (the main job's config, or "
                        "--config) with rnnlab's layer and with torch.nn's, N optimizer steps per round, rounds "
                        "interleaved (--rounds, default 2; --threads); prints characters per second and the ratio")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="instead of the layer cases, time `rnnlab generate` (generate_text) on the main job's model "
                        "(or --config's) with fresh weights: N characters per round (--rounds, default 5; "
                        "--threads); prints characters per second")
    p.add_argument("--config", default=None, metavar="TOML",
                   help="with --train-steps or --generate: the run's config file")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.train_steps:
        return _train_throughput(args)
    if args.generate:
        return _generate_speed(args)
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


def _config_run(args: argparse.Namespace, flag: str, count: int, default_rounds: int):
    """The rounds, thread count and loaded config of a ``--train-steps`` / ``--generate`` measurement, checked."""
    from ..errors import UserError
    from ..train.config import load_config

    if count < 1:
        raise UserError(f"bench: {flag} must be >= 1, got {count}")
    rounds = args.rounds if args.rounds is not None else default_rounds
    if rounds < 1:
        raise UserError(f"bench: rounds must be >= 1, got {rounds}")
    threads = thread_count(args.threads)
    return rounds, threads, load_config(args.config, {"train.threads": threads})


def _train_throughput(args: argparse.Namespace) -> int:
    """``--train-steps``: :func:`rnnlab.train.throughput.compare_backends` on the config, printed and as JSON."""
    import time

    import torch

    from ..train.config import config_to_dict
    from ..train.throughput import compare_backends

    rounds, threads, cfg = _config_run(args, "--train-steps", args.train_steps, default_rounds=2)
    started = time.time()
    result = compare_backends(cfg, args.train_steps, rounds)
    torch.set_num_threads(threads)
    machine = machine_info("cpu")
    first, second = [k for k in result if isinstance(result[k], dict)]
    print(f"`rnnlab train` loop, {cfg.task.name} {cfg.model.cell} H={cfg.model.hidden_size} "
          f"B={cfg.task.batch_size} T={cfg.task.seq_len}, {args.train_steps} steps x {rounds} rounds, "
          f"threads={threads}, torch {machine['torch']} on {cpu_label(machine['cpu'])}")
    for label in (first, second):
        w, c = result[label]["chars_per_s_wall"], result[label]["chars_per_s_cpu"]
        print(f"  {label:9} {w['median']:9.0f} chars/s wall [{w['min']:.0f}-{w['max']:.0f}], "
              f"{c['median']:9.0f} per CPU second [{c['min']:.0f}-{c['max']:.0f}]")
    print(f"  ratio {first} / {second}: {result['ratio_wall']:.2f} (wall), {result['ratio_cpu']:.2f} (CPU time); "
          f"above 1 means {first} trains faster ({time.time() - started:.0f} s)")
    path = write_json({"config": config_to_dict(cfg), "threads": args.threads, "machine": machine,
                       "train_throughput": result, "argv": sys.argv[1:]}, args.out)
    print(f"rnnlab bench: wrote {path}")
    return 0


def _generate_speed(args: argparse.Namespace) -> int:
    """``--generate``: characters per second of :func:`rnnlab.models.generate_text` on the config's model."""
    import time

    import torch

    from ..bench import summary
    from ..errors import UserError
    from ..models import generate_text
    from ..train.run import build_model_and_task

    rounds, threads, cfg = _config_run(args, "--generate", args.generate, default_rounds=5)
    model, task = build_model_and_task(cfg)
    if not task.vocab:
        raise UserError(f"bench: --generate needs a character model, and {cfg.task.name} is a {task.kind} task")
    torch.set_num_threads(threads)

    def sample() -> None:
        generate_text(model, task.vocab, length=args.generate, temperature=0.8,  # `rnnlab generate`'s default
                      generator=torch.Generator().manual_seed(args.seed))

    sample()  # warm-up
    wall, cpu = [], []
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        sample()
        wall.append(args.generate / (time.perf_counter() - w0))
        cpu.append(args.generate / (time.process_time() - c0))
    machine = machine_info("cpu")
    w, c = summary(wall), summary(cpu)
    print(f"generate_text, {cfg.model.cell} H={cfg.model.hidden_size} embedding {cfg.model.embed_size}, "
          f"{len(task.vocab)} characters, {args.generate} per round x {rounds}, threads={threads}, torch "
          f"{machine['torch']} on {cpu_label(machine['cpu'])}")
    print(f"  {w['median']:.0f} chars/s wall [{w['min']:.0f}-{w['max']:.0f}], {c['median']:.0f} per CPU second "
          f"[{c['min']:.0f}-{c['max']:.0f}]")
    path = write_json({"threads": args.threads, "machine": machine, "generate": {
        "chars": args.generate, "rounds": rounds, "chars_per_s_wall": w, "chars_per_s_cpu": c},
        "argv": sys.argv[1:]}, args.out)
    print(f"rnnlab bench: wrote {path}")
    return 0
