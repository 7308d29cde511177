"""Copy memory: recall 10 symbols after T blank steps; a tanh RNN stays at the memoryless baseline.

Source: Hochreiter & Schmidhuber 1997; the setting of Arjovsky, Shah & Bengio 2016 ("Unitary evolution recurrent
neural networks", Sec. 4.1): 10 symbols from an alphabet of 8, then ``T - 1`` blanks, a cue, and 10 more blanks
during which the model must output the 10 symbols; cross-entropy over all ``T + 20`` outputs.

Published number: the memoryless strategy (blanks, then a uniform guess among the 8 symbols) scores
``10 ln 8 / (T + 20)`` nats per step: 0.416 at T = 30, 0.173 at T = 100. Arjovsky et al. report the tanh RNN
stuck at that baseline and the LSTM stuck there too at T >= 200 within their budget (their Fig. 1).

Setup here: H = 64, batch 64 of fresh sequences per step, Adam 1e-3, gradient-norm clip 1, forget bias 1 for the
gated cells, a fixed test set of 1,000 sequences, ``--steps`` (default 3,000) per run.

Pass: tanh RNN test CE >= 0.9 x baseline (it has not learnt to copy), LSTM and GRU < 0.9 x baseline.

    python benchmarks/convergence/copy_memory.py                 # T = 30 and 100, seed 0
    python benchmarks/convergence/copy_memory.py --lags 30 --steps 1000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _harness import CELL_LABEL, RESULTS, EveryStep, fmt, make_layer, print_table, setup, train_loop, write_json  # noqa: E402,E501

from rnnlab.data.synthetic import COPY_SYMBOLS, copy_memory  # noqa: E402
from rnnlab.init import apply_init  # noqa: E402

SYMBOLS = 10
CLASSES = COPY_SYMBOLS + 1  # blank + 8 symbols (targets never hold the cue)


def baseline(delay: int) -> float:
    """Memoryless cross-entropy per step: ``10 ln 8 / (T + 20)`` (Arjovsky et al. 2016)."""
    return SYMBOLS * math.log(COPY_SYMBOLS) / (delay + 2 * SYMBOLS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn_tanh"], choices=list(CELL_LABEL))
    p.add_argument("--lags", nargs="+", type=int, default=[30, 100], help="delays T (default 30 100)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="5 steps per run (smoke test)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.eval_every, args.seeds, args.test_size, args.lags = 5, 5, args.seeds[:1], 64, [10]
    setup()
    runs = []
    for delay in args.lags:
        xt, yt = copy_memory(args.test_size, delay, torch.Generator().manual_seed(20_000 + delay))
        xt = xt.transpose(0, 1).contiguous()  # (T+20, N, 10)
        yt = yt.t().contiguous()  # (T+20, N)
        for cell in args.cells:
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = EveryStep(make_layer(cell, COPY_SYMBOLS + 2, args.hidden), args.hidden, CLASSES)
                if cell in ("lstm", "gru"):
                    apply_init(model, "forget_bias")
                data = torch.Generator().manual_seed(seed)

                def ce(x: Tensor, y: Tensor, model=model) -> Tensor:
                    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

                def loss_on(step: int, delay=delay, data=data, ce=ce) -> Tensor:
                    x, y = copy_memory(args.batch, delay, data)  # (B, L, 10), (B, L)
                    return ce(x.transpose(0, 1), y.t())

                curve = train_loop(model, loss_on, lambda ce=ce: float(ce(xt, yt)), steps=args.steps, lr=args.lr,
                                   clip=args.clip, eval_every=args.eval_every, progress=f"{cell} T={delay} seed={seed}")
                runs.append({"cell": cell, "delay": delay, "seed": seed, "final_ce": curve.values[-1],
                             "baseline": baseline(delay), "curve": curve.to_dict()})
    rows, verdicts = [], {}
    for delay in args.lags:
        base = baseline(delay)
        for cell in args.cells:
            rs = [r for r in runs if r["cell"] == cell and r["delay"] == delay]
            finals = [r["final_ce"] for r in rs]
            gated = cell in ("lstm", "gru")
            ok = all(v < 0.9 * base for v in finals) if gated else all(v >= 0.9 * base for v in finals)
            verdicts[f"{cell}@T={delay}"] = ok
            rows.append([CELL_LABEL[cell], delay, fmt(base), " ".join(fmt(v) for v in finals),
                         " ".join(f"{v / base:.2f}" for v in finals), args.steps,
                         f"{sum(r['curve']['cpu_s'] for r in rs):.0f}",
                         ("< 0.9 x base" if gated else ">= 0.9 x base") + (" PASS" if ok else " FAIL")])
    print(f"\nCopy memory (Arjovsky et al. 2016), 10 symbols of 8, H={args.hidden}, batch {args.batch}, "
          f"Adam {args.lr}, clip {args.clip}; seeds {args.seeds}")
    table = print_table(["cell", "T", "baseline 10ln8/(T+20)", "test CE", "CE / baseline", "steps", "CPU s",
                         "threshold"], rows)
    out = args.out or RESULTS / ("copy_memory_dry.json" if args.dry_run else "copy_memory.json")
    passed = all(verdicts.values())
    write_json(out, {"benchmark": "copy_memory", "source": "Arjovsky, Shah & Bengio 2016",
                     "published": {f"baseline_T{d}": baseline(d) for d in args.lags}, "config": vars(args),
                     "runs": runs, "verdicts": verdicts, "passed": passed, "table": table})
    print(f"\n{'ALL PASS' if passed else 'NOT ALL PASS'}; JSON: {out}")
    return 0 if passed or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
