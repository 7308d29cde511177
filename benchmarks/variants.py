"""Cost of the cell variants and layer options next to the plain layer of the same type, measured in one run.

For each size, every variant runs forward+backward of ``output.sum()`` (input requiring grad) in interleaved rounds
with its plain baseline (``rnnlab.LSTM`` / ``rnnlab.GRU`` / ``rnnlab.RNN`` on the default backend), after a
warm-up. Reported: the median, min and max of process CPU time and wall time, and the ratio of the CPU-time medians
to the baseline's.

Run: ``python benchmarks/variants.py [--sizes S1 S4] [--rounds 5] [--json out.json]`` (1 thread).
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

import rnnlab
from rnnlab.bench import SIZES, summary, time_call

VARIANTS = {
    "LSTM": [
        ("LSTM (plain)", lambda I, H: rnnlab.LSTM(I, H)),
        ("LayerNormLSTM", lambda I, H: rnnlab.LayerNormLSTM(I, H)),
        ("PeepholeLSTM", lambda I, H: rnnlab.PeepholeLSTM(I, H)),
        ("LSTM weight_dropout=0.3", lambda I, H: rnnlab.LSTM(I, H, weight_dropout=0.3)),
        ("LSTM forget_bias + learn_init", lambda I, H: rnnlab.LSTM(I, H, forget_bias=1.0, learn_init=True)),
        ("LSTM recurrent_dropout=0.3", lambda I, H: rnnlab.LSTM(I, H, recurrent_dropout=0.3)),
        ("LSTM zoneout=0.1", lambda I, H: rnnlab.LSTM(I, H, zoneout=0.1)),
        ("LSTM return_gates", lambda I, H: rnnlab.LSTM(I, H, return_gates=True)),
        ("PeepholeLSTM zoneout=0.1", lambda I, H: rnnlab.PeepholeLSTM(I, H, zoneout=0.1)),
        ("LayerNormLSTM recurrent_dropout=0.1", lambda I, H: rnnlab.LayerNormLSTM(I, H, recurrent_dropout=0.1)),
    ],
    "GRU": [
        ("GRU (plain)", lambda I, H: rnnlab.GRU(I, H)),
        ("LayerNormGRU", lambda I, H: rnnlab.LayerNormGRU(I, H)),
        ("GRU recurrent_dropout=0.3", lambda I, H: rnnlab.GRU(I, H, recurrent_dropout=0.3)),
        ("GRU zoneout=0.1", lambda I, H: rnnlab.GRU(I, H, zoneout=0.1)),
        ("GRU return_gates", lambda I, H: rnnlab.GRU(I, H, return_gates=True)),
    ],
    "RNN": [
        ("RNN tanh (plain)", lambda I, H: rnnlab.RNN(I, H)),
        ("RNN recurrent_dropout=0.3", lambda I, H: rnnlab.RNN(I, H, recurrent_dropout=0.3)),
        ("RNN zoneout=0.1", lambda I, H: rnnlab.RNN(I, H, zoneout=0.1)),
    ],
}


def measure(size: str, rounds: int, warmup: int) -> list[dict]:
    s = SIZES[size]
    x = torch.randn(s.T, s.B, s.I, requires_grad=True)
    rows = []
    for family, entries in VARIANTS.items():
        modules = [(name, make(s.I, s.H)) for name, make in entries]

        def call(module):
            def fn() -> None:
                module(x)[0].sum().backward()
            return fn

        calls = [(name, call(m)) for name, m in modules]
        for _ in range(warmup):
            for _, fn in calls:
                fn()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in calls}
        for r in range(rounds):
            for name, fn in (calls if r % 2 == 0 else calls[::-1]):  # alternate the order between rounds
                times[name].append(time_call(fn, "cpu"))
        base = summary([c for _, c in times[calls[0][0]]])["median"]
        for name, _ in calls:
            cpu = summary([c for _, c in times[name]])
            wall = summary([w for w, _ in times[name]])
            rows.append({"size": size, "family": family, "variant": name, "cpu": cpu, "wall": wall,
                         "ratio_cpu": cpu["median"] / base})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S1", "S4"], choices=list(SIZES), help="benchmark shapes")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # the reference-loop notices: the table says it
    print(f"threads={torch.get_num_threads()} backend={rnnlab.get_backend()} rounds={args.rounds}")
    rows = [row for size in args.sizes for row in measure(size, args.rounds, args.warmup)]
    print(f"| size | variant | CPU ms median (min-max) | wall ms median | × plain |")
    print("|---|---|---|---|---|")
    for r in rows:
        c, w = r["cpu"], r["wall"]
        print(f"| {r['size']} | {r['variant']} | {c['median'] * 1e3:.1f} ({c['min'] * 1e3:.1f}-{c['max'] * 1e3:.1f}) "
              f"| {w['median'] * 1e3:.1f} | {r['ratio_cpu']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
