"""Benchmark rnnlab's fused layers against torch.nn (same as ``rnnlab bench``; kept here for scripted runs).

    python benchmarks/bench_rnn.py                 # full run: 11 rounds, peak memory, all cells and sizes
    python benchmarks/bench_rnn.py --quick         # about a minute
    python benchmarks/bench_rnn.py --cells lstm --sizes S1,S3 --out benchmarks/results/lstm.json

Writes the JSON results (config and machine included) and prints the ratio table. The measuring code is in
:mod:`rnnlab.bench`; this script only forwards its flags to the CLI.
"""

from __future__ import annotations

import sys

from rnnlab.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "benchmarks/results/bench.json"]
    sys.exit(main(["bench", *argv]))
