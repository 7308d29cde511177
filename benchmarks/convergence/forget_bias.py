"""Forget-gate bias 1 vs 0 on the adding problem: how many steps an LSTM needs to reach test MSE < 0.05.

Source: Gers, Schmidhuber & Cummins 2000 and Jozefowicz, Zaremba & Sutskever 2015 ("An empirical exploration of
recurrent network architectures"), who found that a forget-gate bias of 1 closes most of the gap between the LSTM
and the best architectures they searched; it starts ``f = sigma(1) ~ 0.73`` instead of ``sigma(0) = 0.5``, so the
cell state, and its gradient ``dc_t/dc_{t-1} = f_t``, survive more steps at initialisation.

Setup: the adding problem of ``adding.py`` (T = 100 by default, H = 64, batch 64, Adam 1e-3, clip 1), one LSTM per
seed with bias 0 (``b_f = 0``: both bias vectors' f blocks zeroed) and with bias 1 (the ``forget_bias`` preset);
the two runs of a seed start from the same weights otherwise and see the same batches. Each run stops at the first
evaluation (every 100 steps) with test MSE < 0.05, or at ``--steps``.

Published: no step count to compare (the papers report final accuracies); the claim tested is the direction:
bias 1 reaches the threshold in fewer steps than bias 0 on most seeds.

    python benchmarks/convergence/forget_bias.py --seeds 0 1 2
    python benchmarks/convergence/forget_bias.py --biases 0 --reuse-adding   # b_f = 1 runs taken from adding.py

``--reuse-adding`` takes the b_f = 1 runs from the adding benchmark's JSON files (``adding_quick.json``,
``adding_seeds_1_2.json``, ``adding.json``) instead of training them again: with the same seed, T, H, batch,
optimiser, clip, test set and stopping rule they are the same runs (the script checks those settings match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _harness import RESULTS, LastStep, fmt, make_layer, median, print_table, setup, train_loop, write_json  # noqa: E402

from rnnlab.data.synthetic import adding_problem  # noqa: E402
from rnnlab.init import apply_init  # noqa: E402

THRESHOLD = 0.05


def build(bias: float, hidden: int, seed: int) -> LastStep:
    """An LSTM regressor from ``seed``, with forget-gate bias ``bias`` (0 or 1) and every other weight as drawn."""
    torch.manual_seed(seed)
    model = LastStep(make_layer("lstm", 2, hidden), hidden, 1)
    if bias == 1.0:
        apply_init(model, "forget_bias")
    else:
        with torch.no_grad():  # b_f = b_ih[H:2H] + b_hh[H:2H] = 0
            model.rnn.bias_ih_l0[hidden:2 * hidden] = 0.0
            model.rnn.bias_hh_l0[hidden:2 * hidden] = 0.0
    return model


def reused_runs(args: argparse.Namespace) -> list[dict]:
    """b_f = 1 LSTM runs of ``args.seeds`` from the adding benchmark's JSON files, when their settings match."""
    same = ("hidden", "batch", "lr", "clip", "eval_every", "test_size")
    out = []
    for name in ("adding_quick", "adding_seeds_1_2", "adding"):
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        cfg = data["config"]
        if cfg["init"] != "forget_bias" or any(cfg[k] != getattr(args, k) for k in same) \
                or cfg["stop_below"] < THRESHOLD or cfg["steps"] < args.steps:
            continue
        for r in data["runs"]:
            if r["cell"] == "lstm" and r["seq_len"] == args.seq_len and r["seed"] in args.seeds \
                    and not any(o["seed"] == r["seed"] for o in out):
                hit = next((s for s, v in zip(r["curve"]["steps"], r["curve"]["values"]) if v < THRESHOLD), None)
                out.append({"seed": r["seed"], "forget_bias": 1.0, "steps_to_threshold": hit,
                            "final_mse": r["final_mse"], "curve": r["curve"], "from": str(path.name)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--biases", nargs="+", type=float, default=[0.0, 1.0], choices=[0.0, 1.0])
    p.add_argument("--reuse-adding", action="store_true",
                   help="take b_f = 1 runs of these seeds from adding.py's JSON files (same settings)")
    p.add_argument("--dry-run", action="store_true", help="5 steps per run (smoke test)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.eval_every, args.seeds, args.test_size, args.seq_len = 5, 5, args.seeds[:1], 64, 20
        args.biases, args.reuse_adding = [0.0, 1.0], False
    setup()
    xt, yt = adding_problem(args.test_size, args.seq_len, torch.Generator().manual_seed(10_000 + args.seq_len))
    xt = xt.transpose(0, 1).contiguous()
    runs = reused_runs(args) if args.reuse_adding else []
    for seed in args.seeds:
        for bias in args.biases:
            if any(r["seed"] == seed and r["forget_bias"] == bias for r in runs):
                continue
            model = build(bias, args.hidden, seed)
            data = torch.Generator().manual_seed(seed)

            def loss_on(step: int, model=model, data=data) -> Tensor:
                x, y = adding_problem(args.batch, args.seq_len, data)
                return torch.nn.functional.mse_loss(model(x.transpose(0, 1)), y)

            curve = train_loop(model, loss_on, lambda model=model: float(torch.nn.functional.mse_loss(model(xt), yt)),
                               steps=args.steps, lr=args.lr, clip=args.clip, eval_every=args.eval_every,
                               stop=lambda v: v < THRESHOLD, progress=f"lstm b_f={bias:g} seed={seed}")
            hit = next((s for s, v in zip(curve.steps, curve.values) if v < THRESHOLD), None)
            runs.append({"seed": seed, "forget_bias": bias, "steps_to_threshold": hit, "final_mse": curve.values[-1],
                         "curve": curve.to_dict()})
    rows = []
    missing = [(s, b) for s in args.seeds for b in (0.0, 1.0)
               if not any(r["seed"] == s and r["forget_bias"] == b for r in runs)]
    if missing:
        raise SystemExit(f"forget_bias: no run for (seed, b_f) {missing}; add the bias to --biases or --reuse-adding")
    for seed in args.seeds:
        r0, r1 = (next(r for r in runs if r["seed"] == seed and r["forget_bias"] == b) for b in (0.0, 1.0))
        show = lambda h: f"> {args.steps}" if h is None else str(h)  # noqa: E731
        rows.append([seed, show(r0["steps_to_threshold"]), show(r1["steps_to_threshold"]), fmt(r0["final_mse"]),
                     fmt(r1["final_mse"])])
    cap = args.steps + args.eval_every  # a run that never reached the threshold counts as beyond the cap
    s0 = [r["steps_to_threshold"] or cap for r in runs if r["forget_bias"] == 0.0]
    s1 = [r["steps_to_threshold"] or cap for r in runs if r["forget_bias"] == 1.0]
    wins = sum(b < a for a, b in zip(s0, s1))
    print(f"\nForget-gate bias on the adding problem, T={args.seq_len}, LSTM H={args.hidden}, steps to test MSE < "
          f"{THRESHOLD} (evaluated every {args.eval_every})")
    table = print_table(["seed", "steps, b_f = 0", "steps, b_f = 1", "final MSE b_f=0", "final MSE b_f=1"], rows)
    print(f"median steps: b_f=0 {median(s0):.0f}, b_f=1 {median(s1):.0f}; bias 1 faster on {wins}/{len(s0)} seeds")
    out = args.out or RESULTS / ("forget_bias_dry.json" if args.dry_run else "forget_bias.json")
    write_json(out, {"benchmark": "forget_bias", "source": "Gers et al. 2000; Jozefowicz et al. 2015",
                     "config": vars(args), "runs": runs, "median_steps": {"0": median(s0), "1": median(s1)},
                     "bias1_faster_seeds": wins, "table": table})
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
