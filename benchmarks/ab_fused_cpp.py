"""Same-process A/B of the plain compiled loops: an older ``csrc`` (e.g. main's, from ``git worktree`` or ``git
archive``) against this checkout's, on the same inputs, in interleaved rounds, 1 thread, process CPU time.

The older ``fused.cpp`` is copied with its ops renamed to ``torch.ops.rnnlab_fused_base`` so that both builds load
into one process (two processes would compare two different machine loads). Measured: the plain training
forward and backward ops of the LSTM, GRU and Elman cell (no options), at S1 and S4. Reported: per cell and size the
median and min time of each build and the median of the per-round ratios (this checkout / older).

Run: ``python benchmarks/ab_fused_cpp.py OLD_CSRC_DIR [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics as st
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.cpp_extension import load

from rnnlab.bench import SIZES
from rnnlab.kernels import _extension


def build_base(old_csrc: Path) -> None:
    """Build the older fused.cpp (with its common.h) as ``torch.ops.rnnlab_fused_base``."""
    tmp = Path(tempfile.mkdtemp(prefix="rnnlab_ab_"))
    for f in old_csrc.iterdir():
        if f.suffix in (".h", ".cpp"):
            shutil.copy(f, tmp / f.name)
    cpp = tmp / "fused.cpp"
    text = cpp.read_text().replace("TORCH_LIBRARY(rnnlab_fused, m)", "TORCH_LIBRARY(rnnlab_fused_base, m)")
    cpp.write_text(text.replace("TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m)",
                                "TORCH_LIBRARY_IMPL(rnnlab_fused_base, CPU, m)"))
    _, flags = _extension.isa_flags()
    load(name="rnnlab_fused_base_ab", sources=[str(cpp)], build_directory=str(tmp),
         extra_cflags=["-O3", "-fno-math-errno", "-fno-trapping-math", *flags], is_python_module=False,
         verbose=False)


def cases(size: str) -> dict[str, Callable[[Any], None]]:
    """Per cell, one training forward + backward through the ops of a build (``ops`` = its namespace)."""
    s = SIZES[size]
    T, B, I, H = s.T, s.B, s.I, s.H
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) - 0.5) * 0.2

    x, h0, c0 = r(T, B, I), r(B, H), r(B, H)
    w4, u4, b4 = r(4 * H, I), r(4 * H, H), r(4 * H)
    w3, u3, b3, b3h = r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)
    w1, u1, b1 = r(H, I), r(H, H), r(H)

    def lstm(ops: Any) -> None:
        xw = (x.reshape(T * B, I) @ w4.t()).view(T, B, 4 * H)
        Y, hn, cn, C, _ = ops.lstm_forward(xw, b4, h0, c0, u4, None, None, False, True)
        ops.lstm_backward(torch.ones_like(Y), torch.zeros_like(hn), torch.zeros_like(cn), xw, C, c0, u4, None, None,
                          False)

    def gru(ops: Any) -> None:
        xw = (x.reshape(T * B, I) @ w3.t()).view(T, B, 3 * H)
        Y, hn, HN = ops.gru_forward(xw, b3, h0, u3, b3h, None, False, True)
        ops.gru_backward(torch.ones_like(Y), torch.zeros_like(hn), xw, HN, Y, h0, u3, None, False)

    def rnn(ops: Any) -> None:
        Y = (x.reshape(T * B, I) @ w1.t()).view(T, B, H)
        hn = ops.rnn_forward(Y, b1, h0, u1, False, None, False)
        ops.rnn_backward(torch.ones_like(Y), torch.zeros_like(hn), Y, u1, False, None, False)

    return {"lstm": lstm, "gru": gru, "rnn": rnn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_csrc", type=Path, help="directory with the older fused.cpp and common.h")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert _extension.load_extension(), "this checkout's kernels did not build"
    build_base(args.old_csrc)
    new, base = torch.ops.rnnlab_fused, torch.ops.rnnlab_fused_base
    print("| size | cell | older ms (median, min) | this ms (median, min) | this / older (median of round ratios) |")
    print("|---|---|---|---|---|")
    for size, reps in (("S1", 1), ("S4", 20)):
        for name, fn in cases(size).items():
            for ops in (base, new):  # warm-up
                fn(ops)
                fn(ops)
            tb: list[float] = []
            tn: list[float] = []
            ratios = []
            for k in range(args.rounds):
                pair = [(base, tb), (new, tn)] if k % 2 == 0 else [(new, tn), (base, tb)]  # alternate the order
                for ops, acc in pair:
                    t0 = time.process_time()
                    for _ in range(reps):
                        fn(ops)
                    acc.append((time.process_time() - t0) / reps)
                ratios.append(tn[-1] / tb[-1])
            print(f"| {size} | {name} | {st.median(tb) * 1e3:.2f}, {min(tb) * 1e3:.2f} | "
                  f"{st.median(tn) * 1e3:.2f}, {min(tn) * 1e3:.2f} | {st.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
