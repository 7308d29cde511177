"""Same-process A/B of the plain compiled loops: an older ``csrc`` (the one from before the ops were merged, commit
8160e3d, whose plain ops had no option arguments) against this checkout's merged ops with every option off, on the
same inputs, in interleaved rounds, 1 thread, process CPU time.

The older ``fused.cpp`` is copied with its ops renamed to ``torch.ops.rnnlab_fused_base`` so that both builds load
into one process (two processes would compare two different machine loads). Measured per cell (LSTM, GRU, Elman
tanh; no options) at S1 and S4: the training forward op alone (``fwd``) and the forward and backward ops
(``fwdbwd``), each build called with its own signature. Reported: per case the median and the spread (min, max)
of each build's time and the median and spread of the per-round ratios (this checkout / older).

Run::

    git archive 8160e3d src/rnnlab/kernels/csrc | tar -x -C /tmp/old
    python benchmarks/ab_fused_cpp.py /tmp/old/src/rnnlab/kernels/csrc [--rounds 15]
"""

from __future__ import annotations

import argparse
import functools
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


def cases(size: str) -> dict[str, Callable[[Any, bool], None]]:
    """Per cell and pass, one call of a build's ops (``ops`` = its namespace; ``merged``: this checkout's
    signatures, the options left at their defaults, else the older plain ops')."""
    s = SIZES[size]
    T, B, I, H = s.T, s.B, s.I, s.H
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) - 0.5) * 0.2

    x, h0, c0 = r(T, B, I), r(B, H), r(B, H)
    w4, u4, b4 = r(4 * H, I), r(4 * H, H), r(4 * H)
    w3, u3, b3, b3h = r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)
    w1, u1, b1 = r(H, I), r(H, H), r(H)

    def lstm(ops: Any, merged: bool, backward: bool) -> None:
        xw = (x.reshape(T * B, I) @ w4.t()).view(T, B, 4 * H)
        Y, hn, cn, C = ops.lstm_forward(xw, b4, h0, c0, u4, None, None, False, True)[:4]
        if backward:
            grads = (torch.ones_like(Y), torch.zeros_like(hn), torch.zeros_like(cn), xw, C)
            if merged:
                ops.lstm_backward(*grads, None, c0, u4, None, None, False)
            else:
                ops.lstm_backward(*grads, c0, u4, None, None, False)

    def gru(ops: Any, merged: bool, backward: bool) -> None:
        xw = (x.reshape(T * B, I) @ w3.t()).view(T, B, 3 * H)
        Y, hn, HN = ops.gru_forward(xw, b3, h0, u3, b3h, None, False, True)  # the same call for both
        if backward:
            ops.gru_backward(torch.ones_like(Y), torch.zeros_like(hn), xw, HN, Y, h0, u3, None, False)

    def rnn(ops: Any, merged: bool, backward: bool) -> None:
        Y = (x.reshape(T * B, I) @ w1.t()).view(T, B, H)
        if merged:
            hn = ops.rnn_forward(Y, b1, h0, u1, False, None, False, True)[0]
        else:
            hn = ops.rnn_forward(Y, b1, h0, u1, False, None, False)
        if backward:
            if merged:
                ops.rnn_backward(torch.ones_like(Y), torch.zeros_like(hn), Y, None, u1, False, None, False)
            else:
                ops.rnn_backward(torch.ones_like(Y), torch.zeros_like(hn), Y, u1, False, None, False)

    cells = {"lstm": lstm, "gru": gru, "rnn": rnn}
    return {f"{name} {p}": functools.partial(fn, backward=p == "fwdbwd")
            for name, fn in cells.items() for p in ("fwd", "fwdbwd")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_csrc", type=Path, help="directory with the older fused.cpp and common.h")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert _extension.load_extension(), "this checkout's kernels did not build"
    build_base(args.old_csrc)
    new, base = torch.ops.rnnlab_fused, torch.ops.rnnlab_fused_base
    print(f"CPU: {_cpu_name()}; torch {torch.__version__}; 1 thread; {args.rounds} interleaved rounds")
    print("| size | case | older ms median (min, max) | merged ms median (min, max) "
          "| merged / older: median of round ratios (min, max) |")
    print("|---|---|---|---|---|")
    for size, reps in (("S1", 1), ("S4", 20)):
        for name, fn in cases(size).items():
            for ops, merged in ((base, False), (new, True)):  # warm-up
                fn(ops, merged)
                fn(ops, merged)
            tb: list[float] = []
            tn: list[float] = []
            ratios = []
            for k in range(args.rounds):
                pair = [(base, False, tb), (new, True, tn)]
                for ops, merged, acc in (pair if k % 2 == 0 else pair[::-1]):  # alternate the order
                    t0 = time.process_time()
                    for _ in range(reps):
                        fn(ops, merged)
                    acc.append((time.process_time() - t0) / reps)
                ratios.append(tn[-1] / tb[-1])
            print(f"| {size} | {name} | {_ms(tb)} | {_ms(tn)} | {st.median(ratios):.3f} "
                  f"({min(ratios):.3f}, {max(ratios):.3f}) |", flush=True)


def _ms(times: list[float]) -> str:
    return f"{st.median(times) * 1e3:.2f} ({min(times) * 1e3:.2f}, {max(times) * 1e3:.2f})"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
