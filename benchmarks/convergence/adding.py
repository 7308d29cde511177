"""The adding problem: LSTM and GRU learn a 100-step dependency that a tanh RNN cannot.

Source: Hochreiter & Schmidhuber 1997 (experiment 4); the form used here is Le, Jaitly & Hinton 2015 ("A simple
way to initialize recurrent networks of rectified linear units") and Arjovsky, Shah & Bengio 2016 ("Unitary
evolution recurrent neural networks"): each step carries ``(u_t, m_t)``, ``u_t ~ U(0, 1)``, two markers, one in
each half; the target is the sum of the two marked values.

Published numbers: the constant prediction 1 scores MSE ``1/6 ~ 0.167`` (Arjovsky et al. 2016 draw it as the
baseline); in Le et al. 2015 (Fig. 2) and Arjovsky et al. 2016 (Fig. 2) the LSTM goes well below it at T = 100 and
beyond, while the tanh RNN stays on the baseline at T >= 150 (Le et al.).

Setup (the issue's): T = 100, H = 64, batch 64 of fresh samples per step, Adam 1e-3, gradient-norm clip 1, forget
bias 1 (the ``forget_bias`` preset: LSTM f gate, GRU z gate), at most 5,000 steps, seeds 0, 1, 2; test MSE on a
fixed set of 1,000 sequences every 100 steps.

Pass: LSTM and GRU test MSE < 0.05; tanh RNN stays > 0.15.

    python benchmarks/convergence/adding.py --quick          # T = 100, seed 0, the three cells (< 10 min)
    python benchmarks/convergence/adding.py                  # seeds 0 1 2, 5,000-step cap, stop below 0.01
    python benchmarks/convergence/adding.py --lags 50 100 200 400 --cells lstm gru rnn_tanh   # lag sweep

``--quick`` trains seed 0 only, stops a gated cell as soon as its test MSE is below 0.05 and caps the tanh RNN at
2,000 steps (the full run gives it 5,000). The LSTM needed 3,400 steps on seed 0 (about 85 s of CPU time). ``--dry-run`` trains 5 steps per run to check the command (for the docs' test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

# This folder goes last on sys.path: mnist1d.py must not shadow the mnist1d package it reads the data from.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _harness import (CELL_LABEL, RESULTS, LastStep, fmt, make_layer, median, print_table, setup,  # noqa: E402
                      train_loop, write_json)

from rnnlab.data.synthetic import adding_problem  # noqa: E402
from rnnlab.init import apply_init  # noqa: E402

BASELINE = 1.0 / 6.0  # MSE of always predicting 1 = Var(u_a + u_b) = 2 * (1/12)
PASS_GATED, PASS_RNN = 0.05, 0.15


def build(cell: str, hidden: int, seed: int, init: str) -> LastStep:
    """Layer + linear read-out, initialised from ``seed``; ``init`` is an rnnlab preset (gated cells only)."""
    torch.manual_seed(seed)
    model = LastStep(make_layer(cell, 2, hidden), hidden, 1)
    if cell in ("lstm", "gru") and init != "torch":
        apply_init(model, init)
    return model


def run_one(cell: str, seq_len: int, seed: int, args: argparse.Namespace, steps: int, stop_below: float | None,
            test: tuple[Tensor, Tensor]) -> dict:
    """Train one cell on one lag with one seed; returns the curve and the final test MSE."""
    model = build(cell, args.hidden, seed, args.init)
    data = torch.Generator().manual_seed(seed)
    x_test, y_test = test

    def loss_on(step: int) -> Tensor:
        x, y = adding_problem(args.batch, seq_len, data)  # (B, T, 2), (B, 1)
        return torch.nn.functional.mse_loss(model(x.transpose(0, 1)), y)

    def evaluate() -> float:
        return float(torch.nn.functional.mse_loss(model(x_test), y_test))

    stop = (lambda v: v < stop_below) if stop_below is not None else None
    curve = train_loop(model, loss_on, evaluate, steps=steps, lr=args.lr, clip=args.clip,
                       eval_every=args.eval_every, stop=stop, progress=f"{cell} T={seq_len} seed={seed}")
    below = [s for s, v in zip(curve.steps, curve.values) if v < PASS_GATED]
    return {"cell": cell, "seq_len": seq_len, "seed": seed, "final_mse": curve.values[-1],
            "best_mse": min(curve.values), "steps_to_0.05": below[0] if below else None, "curve": curve.to_dict()}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="T=100, seed 0; gated cells stop below 0.05; RNN cap 2,000")
    p.add_argument("--dry-run", action="store_true", help="5 steps per run, 1 seed, small test set (smoke test)")
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn_tanh"], choices=list(CELL_LABEL))
    p.add_argument("--lags", nargs="+", type=int, default=[100], help="sequence lengths T (default 100)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=5000, help="optimiser steps cap per run (default 5000)")
    p.add_argument("--rnn-steps", type=int, default=None, help="cap for the Elman RNNs (default: --steps; "
                                                                  "2000 with --quick)")
    p.add_argument("--stop-below", type=float, default=None,
                   help="stop a gated run once test MSE is below this (default 0.01; 0.05 with --quick)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--init", default="forget_bias", help="rnnlab init preset for LSTM/GRU (default forget_bias)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/convergence/results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.lags, args.seeds = [100], [0]
        args.rnn_steps = args.rnn_steps or 2000
        args.stop_below = args.stop_below if args.stop_below is not None else PASS_GATED
    if args.dry_run:
        args.seeds, args.steps, args.rnn_steps, args.test_size, args.eval_every = args.seeds[:1], 5, 5, 64, 5
        args.lags = [min(args.lags[0], 20)]
    args.rnn_steps = args.rnn_steps or args.steps
    args.stop_below = args.stop_below if args.stop_below is not None else 0.01
    return args


def main(argv: list[str] | None = None) -> int:
    setup()
    args = parse(argv)
    name = "adding_quick" if args.quick else ("adding_dry" if args.dry_run else
                                              "adding" if args.lags == [100] else "adding_lags")
    out = args.out or RESULTS / f"{name}.json"
    runs = []
    for seq_len in args.lags:
        x_test, y_test = adding_problem(args.test_size, seq_len, torch.Generator().manual_seed(10_000 + seq_len))
        test = (x_test.transpose(0, 1).contiguous(), y_test)  # (T, N, 2), (N, 1)
        for cell in args.cells:
            gated = cell in ("lstm", "gru")
            for seed in args.seeds:
                runs.append(run_one(cell, seq_len, seed, args, args.steps if gated else args.rnn_steps,
                                    args.stop_below if gated else None, test))
    rows, verdicts = [], {}
    for seq_len in args.lags:
        for cell in args.cells:
            rs = [r for r in runs if r["cell"] == cell and r["seq_len"] == seq_len]
            finals = [r["final_mse"] for r in rs]
            gated = cell in ("lstm", "gru")
            ok = all(v < PASS_GATED for v in finals) if gated else all(v > PASS_RNN for v in finals)
            verdicts[f"{cell}@T={seq_len}"] = ok
            hit = [r["steps_to_0.05"] for r in rs]
            rows.append([CELL_LABEL[cell], seq_len, len(rs), " ".join(fmt(v) for v in finals), fmt(median(finals)),
                         " ".join("-" if h is None else str(h) for h in hit),
                         " ".join(str(r["curve"]["steps_run"]) for r in rs),
                         f"{sum(r['curve']['cpu_s'] for r in rs):.0f}",
                         ("< 0.05" if gated else "> 0.15") + (" PASS" if ok else " FAIL")])
    print(f"\nAdding problem, H={args.hidden}, batch {args.batch}, Adam {args.lr}, clip {args.clip}, init "
          f"{args.init}; baseline MSE 1/6 = {BASELINE:.3f} (Arjovsky et al. 2016)")
    table = print_table(["cell", "T", "seeds", "test MSE per seed", "median", "first step < 0.05", "steps run",
                         "CPU s", "threshold"], rows)
    passed = all(verdicts.values())
    print(f"\n{'ALL PASS' if passed else 'NOT ALL PASS'}; JSON: {out}")
    write_json(out, {"benchmark": "adding", "source": "Hochreiter & Schmidhuber 1997; Le et al. 2015; "
                                                       "Arjovsky et al. 2016",
                     "published": {"baseline_mse": BASELINE}, "thresholds": {"gated_below": PASS_GATED,
                                                                             "rnn_tanh_above": PASS_RNN},
                     "config": {k: v for k, v in vars(args).items()}, "runs": runs, "verdicts": verdicts,
                     "passed": passed, "table": table})
    return 0 if passed or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
