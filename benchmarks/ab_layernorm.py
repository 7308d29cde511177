"""Same-process A/B of the variant kernels (LayerNorm LSTM and GRU, peephole LSTM): an older revision's
``layernorm.cpp``/``peephole.cpp`` + ``kernels/layernorm.py``/``peephole.py`` against this checkout's, with the plain
fused LSTM / GRU of this checkout as the common yardstick.

The older sources (with that revision's ``common.h``) are built with their ops renamed to
``torch.ops.rnnlab_ln_base`` and its two kernel modules imported as second modules whose ops point there, so both
run in one process (two processes would compare two machine loads). Per size and cell, in interleaved rounds
(order alternating), 1 thread, process CPU time: forward + backward of ``Y.sum()`` through the older kernel, this
checkout's kernel and the plain layer (``rnnlab.LSTM`` / ``rnnlab.GRU``, the default backend), all on the same
input. Reported: the medians, the median of the per-round ratios new / old, and both against the plain layer.

Run: ``python benchmarks/ab_layernorm.py [--rev HEAD] [--rounds 11] [--sizes S1 S4]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics as st
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch.utils.cpp_extension import load

import rnnlab
from rnnlab.bench import SIZES
from rnnlab.cellspec import LAYER_NORM_GRU_SPEC, LAYER_NORM_LSTM_SPEC, PEEPHOLE_LSTM_SPEC
from rnnlab.sequence import SequenceRun
from rnnlab.kernels import _extension

ROOT = Path(__file__).resolve().parents[1]


def _git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


# The variant kernels this A/B builds from the older revision: kernels/NAME.py with csrc/NAME.cpp.
MODULES = ("layernorm", "peephole")


def build_base(rev: str) -> dict[str, ModuleType]:
    """Build ``rev``'s variant kernels (``layernorm.cpp``, ``peephole.cpp``) as ``torch.ops.rnnlab_ln_base`` and
    import its ``layernorm.py`` and ``peephole.py`` onto them."""
    tmp = Path(tempfile.mkdtemp(prefix="rnnlab_ab_ln_"))
    (tmp / "common.h").write_text(_git_show(rev, "src/rnnlab/kernels/csrc/common.h"))
    sources = []
    for name in MODULES:
        cpp = _git_show(rev, f"src/rnnlab/kernels/csrc/{name}.cpp")
        cpp = cpp.replace("TORCH_LIBRARY_FRAGMENT(rnnlab_fused, m)", "TORCH_LIBRARY_FRAGMENT(rnnlab_ln_base, m)")
        cpp = cpp.replace("TORCH_LIBRARY_IMPL(rnnlab_fused, CPU, m)", "TORCH_LIBRARY_IMPL(rnnlab_ln_base, CPU, m)")
        (tmp / f"{name}.cpp").write_text(cpp)
        sources.append(str(tmp / f"{name}.cpp"))
    _, flags = _extension.isa_flags()
    load(name="rnnlab_ln_base_ab", sources=sources, build_directory=str(tmp),
         extra_cflags=["-O3", "-fno-math-errno", "-fno-trapping-math", *flags], is_python_module=False,
         verbose=False)
    mods = {}
    for name in MODULES:
        py = tmp / f"{name}_base.py"
        py.write_text(_git_show(rev, f"src/rnnlab/kernels/{name}.py"))
        spec = importlib.util.spec_from_file_location(f"rnnlab.kernels._{name}_base_ab", py)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        # point the older glue at the renamed ops: its op accessor is `ops` (since the building blocks went
        # public) or `_ops` (before); patching only one name would silently run this checkout's kernel as "old"
        for accessor in ("ops", "_ops"):
            if hasattr(mod, accessor):
                setattr(mod, accessor, lambda: torch.ops.rnnlab_ln_base)
        mods[name] = mod
    return mods


def cases(size: str, old: dict[str, ModuleType]) -> dict[str, dict[str, Callable[[], None]]]:
    """Per cell: ``{"old": ..., "new": ..., "plain": ...}``, each one forward + backward of ``Y.sum()``."""
    from rnnlab.kernels import layernorm, peephole

    new = {"layernorm": layernorm, "peephole": peephole}
    s = SIZES[size]
    torch.manual_seed(0)
    x = torch.randn(s.T, s.B, s.I, requires_grad=True)
    out: dict[str, dict[str, Callable[[], None]]] = {}
    for cell, cls, plain_cls, module, kname, spec in (
            ("lstm", rnnlab.LayerNormLSTM, rnnlab.LSTM, "layernorm", "ln_lstm_kernel", LAYER_NORM_LSTM_SPEC),
            ("gru", rnnlab.LayerNormGRU, rnnlab.GRU, "layernorm", "ln_gru_kernel", LAYER_NORM_GRU_SPEC),
            ("peephole", rnnlab.PeepholeLSTM, rnnlab.LSTM, "peephole", "peephole_kernel", PEEPHOLE_LSTM_SPEC)):
        layer = cls(s.I, s.H)
        p = {k.removesuffix("_l0"): v for k, v in layer.named_parameters()}
        h0 = torch.zeros(s.B, s.H)
        state = (h0, h0.clone()) if cell != "gru" else h0
        run = SequenceRun(x, state, p, cell=spec)  # the kernels decline a run without its cell
        plain = plain_cls(s.I, s.H)

        def kernel_call(k: Callable[[SequenceRun], object], run: SequenceRun = run) -> Callable[[], None]:
            def fn() -> None:
                res = k(run)
                assert res is not None
                res[0].sum().backward()  # type: ignore[index]
            return fn

        def plain_call(m: torch.nn.Module = plain) -> None:
            m(x)[0].sum().backward()

        out[cell] = {"old": kernel_call(getattr(old[module], kname)), "new": kernel_call(getattr(new[module], kname)),
                     "plain": plain_call}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the older revision (git)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved timed rounds per case")
    parser.add_argument("--sizes", nargs="+", default=["S1", "S4"], choices=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert _extension.load_extension(), "this checkout's kernels did not build"
    old = build_base(args.rev)
    print(f"rev={args.rev} rounds={args.rounds}")
    print("| size | cell | old ms | new ms | plain ms | new/old (median of rounds) | old/plain | new/plain |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        reps = 1 if SIZES[size].B * SIZES[size].T * SIZES[size].H > 10**6 else 10
        for cell, fns in cases(size, old).items():
            for fn in fns.values():  # warm-up
                fn()
                fn()
            times: dict[str, list[float]] = {k: [] for k in fns}
            ratios = []
            for r in range(args.rounds):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                for k in order:
                    t0 = time.process_time()
                    for _ in range(reps):
                        fns[k]()
                    times[k].append((time.process_time() - t0) / reps)
                ratios.append(times["new"][-1] / times["old"][-1])
            m = {k: st.median(v) for k, v in times.items()}
            print(f"| {size} | {cell} | {m['old'] * 1e3:.2f} | {m['new'] * 1e3:.2f} | {m['plain'] * 1e3:.2f} | "
                  f"{st.median(ratios):.3f} | {m['old'] / m['plain']:.2f} | {m['new'] / m['plain']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
