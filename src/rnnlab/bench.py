"""Speed and peak memory of rnnlab's layers against torch.nn, measured in the same run on the same weights.

What is measured, per cell type (LSTM, GRU, RNN), size (S1-S5) and pass (forward-only under ``no_grad``, or
forward+backward of ``output.sum()`` with the input requiring grad, as inside a stacked model):

* time: ``rounds`` interleaved rounds after ``warmup`` calls; in each round torch.nn and rnnlab run once each,
  the order alternating between rounds so that a slow spell on the shared machine hits both. Reported: the
  median, min and max of wall time and of process CPU time, and the ratio rnnlab / torch.nn of the medians
  (below 1 means rnnlab is faster). On CUDA the time is taken with CUDA events after a synchronize.
* the fraction of the machine's GEMM peak (a square float32 matmul measured in the same run) that the model's
  GEMM FLOPs reach, which says how far each path is from the hardware limit; and the fraction rnnlab would have
  to reach to meet the case's target (torch.nn's fraction / the target). A target that needs about 100% of the
  peak for the whole pass is out of reach on that machine for any kernel that does the same FLOPs: the square
  matmul already runs close to the CPU's FMA ceiling (``benchmarks/fma_peak.c`` measures it).
* peak training memory (``memory=True``): on CPU (Linux), the growth of the peak resident set size (VmHWM,
  reset just before the call) during one forward+backward, each measured in a fresh subprocess so that memory
  freed by earlier cases and kept by the C allocator does not hide new allocations; on CUDA,
  ``torch.cuda.max_memory_allocated``.

The library never imports ``benchmarks/``; the CLI (``rnnlab bench``) and ``benchmarks/bench_rnn.py`` call
:func:`run` and :func:`format_table`.

Example:
    >>> results = run(BenchConfig(cells=("lstm",), sizes=("S4",), rounds=3, warmup=1))
    >>> print(format_table(results))
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cellspec import SPECS
from .errors import UserError

__all__ = ["Size", "SIZES", "CELLS", "PASSES", "TARGETS", "BenchConfig", "run", "format_table", "gemm_peak",
           "write_json", "time_call", "summary", "cpu_info", "cpu_label", "thread_count", "machine_info"]


@dataclass(frozen=True)
class Size:
    """A benchmark shape: batch ``B``, steps ``T``, input size ``I``, hidden size ``H``."""

    B: int
    T: int
    I: int  # noqa: E741 - the standard name
    H: int


SIZES: dict[str, Size] = {
    "S1": Size(B=64, T=100, I=256, H=256),
    "S2": Size(B=32, T=200, I=128, H=128),
    "S3": Size(B=1, T=500, I=256, H=256),
    "S4": Size(B=8, T=50, I=32, H=64),
    "S5": Size(B=32, T=128, I=64, H=512),  # the main job's layer (configs/shakespeare.toml: embedding 64, H=512)
}
# The cells torch.nn has, by the class name torch.nn and rnnlab share (lower-cased: "lstm", "gru", "rnn"):
# {name: (class name, gate blocks)}, from the specs of rnnlab.cellspec.SPECS with a torch ``mode``. Only these have
# a torch.nn twin to be measured against (benchmarks/variants.py measures the variants). torch's two Elman cells are
# one class, measured with its default nonlinearity, tanh (the first of the two in SPECS).
def _torch_cells() -> dict[str, tuple[str, int]]:
    cells: dict[str, tuple[str, int]] = {}
    for spec in SPECS.values():
        if spec.mode is not None:
            cls = spec.mode.split("_")[0]  # "RNN_TANH" -> "RNN"
            cells.setdefault(cls.lower(), (cls, len(spec.gate_names)))
    return cells


CELLS = _torch_cells()
PASSES = ("fwd", "fwdbwd")

# Issue 16's targets, at 1 thread and at all cores: ratio rnnlab / torch.nn must be at most this (torch.nn.LSTM
# uses oneDNN on the CPU; GRU and RNN have no oneDNN path, hence the tighter bounds).
TARGETS: dict[tuple[str, str], dict[str, float]] = {
    ("lstm", "fwdbwd"): {"S1": 0.85, "S2": 0.85, "S3": 0.95, "S4": 0.95, "S5": 0.85},
    ("gru", "fwdbwd"): dict.fromkeys(SIZES, 0.6),
    ("rnn", "fwdbwd"): dict.fromkeys(SIZES, 0.6),
    ("lstm", "fwd"): dict.fromkeys(SIZES, 0.95),
    ("gru", "fwd"): dict.fromkeys(SIZES, 0.8),
    ("rnn", "fwd"): dict.fromkeys(SIZES, 0.8),
}


@dataclass
class BenchConfig:
    """What to measure. Every field is written into the results so that a run can be repeated."""

    cells: tuple[str, ...] = tuple(CELLS)  # subset of CELLS
    sizes: tuple[str, ...] = tuple(SIZES)  # subset of SIZES
    passes: tuple[str, ...] = PASSES  # "fwd" (no_grad) and/or "fwdbwd"
    rounds: int = 11  # interleaved timed rounds per case (the median is reported)
    warmup: int = 2  # untimed calls of each implementation before the rounds
    threads: int | str = 1  # torch.set_num_threads, or "all" (every core this process may use; thread_count)
    device: str = "cpu"  # "cpu" or "cuda"
    dtype: str = "float32"
    seed: int = 0  # fixes weights and inputs
    backend: str = "fused"  # the rnnlab backend measured against torch.nn
    memory: bool = True  # also measure peak training memory (subprocesses on CPU)
    extra: dict = field(default_factory=dict)  # free-form notes recorded with the results

    def validate(self) -> None:
        """Raise UserError naming the field, expected vs got."""
        for name, given, allowed in (("cells", self.cells, CELLS), ("sizes", self.sizes, SIZES),
                                     ("passes", self.passes, PASSES)):
            bad = [v for v in given if v not in allowed]
            if bad or not given:
                raise UserError(f"bench: {name} must be a non-empty subset of {list(allowed)}, got {list(given)}")
        if self.rounds < 1:
            raise UserError(f"bench: rounds must be >= 1, got {self.rounds}")
        if self.threads != "all" and not (type(self.threads) is int and self.threads >= 1):
            raise UserError(f"bench: threads must be an integer >= 1 or 'all', got {self.threads!r}")
        if self.warmup < 0:
            raise UserError(f"bench: warmup must be >= 0, got {self.warmup}")
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"bench: device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("bench: device 'cuda' requested but torch.cuda.is_available() is False")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"bench: dtype must be 'float32' or 'float64', got {self.dtype!r}")
        from .kernels import available_backends

        if self.backend not in available_backends():
            raise UserError(f"bench: backend must be one of {available_backends()}, got {self.backend!r}")


# -- timing -------------------------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], None], device: str) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call; CUDA time by events."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        cpu0 = time.process_time()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, time.process_time() - cpu0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def gemm_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10) -> float:
    """The machine's GEMM throughput in GFLOP/s: best of ``repeats`` square ``n x n`` matmuls (2 n^3 FLOPs).

    :func:`run` measures it before and after the cases and keeps the best, so that a busy spell on a shared
    machine does not understate the peak (which would overstate every fraction of it).
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    best = min(time_call(lambda: torch.mm(a, b, out=c), device)[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def model_flops(cell: str, size: Size, pass_: str) -> float:
    """GEMM FLOPs of one call: the forward's input and recurrent GEMMs; the backward does twice that again
    (``dX`` and ``dW_ih`` for the input GEMM, ``dh`` and ``dW_hh`` for the recurrent one)."""
    gates = CELLS[cell][1] * size.H
    forward = 2.0 * size.T * size.B * gates * (size.I + size.H)
    return forward * (3 if pass_ == "fwdbwd" else 1)


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (also used by benchmarks/variants.py)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _build(cfg: BenchConfig, cell: str, size: Size) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """torch.nn and rnnlab layers with the same weights, and an input; all from ``cfg.seed``."""
    import rnnlab

    cls_name = CELLS[cell][0]
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    ref = getattr(nn, cls_name)(size.I, size.H).to(device=cfg.device, dtype=dtype)
    ours = getattr(rnnlab, cls_name)(size.I, size.H, backend=cfg.backend).to(device=cfg.device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(size.T, size.B, size.I, device=cfg.device, dtype=dtype)
    return ref, ours, x


def _call(module: nn.Module, x: torch.Tensor, pass_: str) -> Callable[[], None]:
    if pass_ == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                module(x)
        return fwd
    xg = x.detach().requires_grad_(True)  # the input's gradient is part of training a stack

    def fwdbwd() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        out, _ = module(xg)
        out.sum().backward()
    return fwdbwd


def _time_case(cfg: BenchConfig, cell: str, size_name: str, pass_: str) -> dict:
    size = SIZES[size_name]
    ref, ours, x = _build(cfg, cell, size)
    calls = {"torch": _call(ref, x, pass_), "rnnlab": _call(ours, x, pass_)}
    for _ in range(cfg.warmup):
        for fn in calls.values():
            fn()
            _sync(cfg.device)
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(cfg.rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in order:
            w, c = time_call(calls[name], cfg.device)
            wall[name].append(w)
            cpu[name].append(c)
    result = {"cell": cell, "size": size_name, "pass": pass_, "shape": asdict(size),
              "gflop": model_flops(cell, size, pass_) / 1e9}
    for name in calls:
        result[name] = {"wall_s": summary(wall[name]), "cpu_s": summary(cpu[name])}
    result["ratio_wall"] = result["rnnlab"]["wall_s"]["median"] / result["torch"]["wall_s"]["median"]
    result["ratio_cpu"] = result["rnnlab"]["cpu_s"]["median"] / result["torch"]["cpu_s"]["median"]
    # the per-round ratio's spread says how much a single comparison can be trusted on a noisy machine
    per_round = [o / t for o, t in zip(wall["rnnlab"], wall["torch"])]
    result["ratio_wall_rounds"] = summary(per_round)
    result["target"] = TARGETS[(cell, pass_)][size_name]
    return result


# -- memory -------------------------------------------------------------------------------------------------------

# Linux: VmHWM (peak RSS of this process image) is reset to the current RSS by writing 5 to clear_refs.
# getrusage's ru_maxrss would not do: it survives fork+exec, so a child inherits the parent's peak.
_MEMORY_CHILD = r"""
import json, sys, torch, rnnlab
from rnnlab.bench import BenchConfig, SIZES, _build, _call, thread_count

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key + " not in /proc/self/status")

cfg = BenchConfig(**json.loads(sys.argv[1]))
torch.set_num_threads(thread_count(cfg.threads))
ref, ours, x = _build(cfg, sys.argv[2], SIZES[sys.argv[3]])
module = ref if sys.argv[4] == "torch" else ours
with torch.no_grad():
    module(x[:2])  # load the code paths and caches; not counted
fn = _call(module, x, "fwdbwd")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kb("VmRSS")
fn()
after = status_kb("VmHWM")
print(json.dumps({"peak_bytes": (after - before) * 1024}))
"""


def _peak_memory(cfg: BenchConfig, cell: str, size_name: str, impl: str) -> float:
    """Peak extra memory (bytes) of one forward+backward of ``impl`` ("torch" or "rnnlab")."""
    if cfg.device == "cuda":
        ref, ours, x = _build(cfg, cell, SIZES[size_name])
        fn = _call(ref if impl == "torch" else ours, x, "fwdbwd")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    conf = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(conf), cell, size_name, impl],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


# -- driver -------------------------------------------------------------------------------------------------------

def thread_count(threads: int | str) -> int:
    """The number of threads ``threads`` asks for: itself, or for ``"all"`` every CPU this process may run on
    (its affinity mask, which is what a container or ``taskset`` grants, not the host's core count)."""
    if threads != "all":
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# (vendor_id, cpu family, model) -> microarchitecture, for the server parts the project's machines have been.
# Only exact numbers that identify one design are listed (Linux's arch/x86/include/asm/intel-family.h and AMD's
# revision guides); anything else is reported by its numbers alone rather than guessed. Intel's family 6 model 85
# is three designs told apart by stepping (below).
MICROARCHITECTURES: dict[tuple[str, int, int], str] = {
    ("AuthenticAMD", 23, 1): "Zen (Naples)",
    ("AuthenticAMD", 23, 49): "Zen 2 (Rome)",
    ("AuthenticAMD", 25, 1): "Zen 3 (Milan)",
    ("AuthenticAMD", 25, 17): "Zen 4 (Genoa)",
    ("AuthenticAMD", 25, 160): "Zen 4c (Bergamo)",
    ("GenuineIntel", 6, 63): "Haswell-EP",
    ("GenuineIntel", 6, 79): "Broadwell-EP",
    ("GenuineIntel", 6, 106): "Ice Lake-SP",
    ("GenuineIntel", 6, 143): "Sapphire Rapids",
    ("GenuineIntel", 6, 207): "Emerald Rapids",
    ("GenuineIntel", 6, 173): "Granite Rapids",
}
# The vector ISA flags that decide which kernels and which BLAS code paths run.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile")


def cpu_info(cpuinfo: str) -> dict:
    """The CPU of the first processor block of ``/proc/cpuinfo`` text, named precisely.

    A virtual machine's ``model name`` can read just "AMD EPYC"; the vendor, family, model and stepping numbers
    (and the microarchitecture they identify, where :data:`MICROARCHITECTURES` knows them) say which design the
    timings came from, and the ISA flags which vector code paths ran. Missing fields are left out.

    Returns:
        ``{"vendor", "family", "model", "stepping", "model_name", "microarchitecture", "isa"}``;
        ``microarchitecture`` is None when the numbers are not in the table, ``isa`` lists the present
        :data:`ISA_FLAGS`.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    info: dict = {"vendor": fields.get("vendor_id"), "model_name": fields.get("model name")}
    for key, name in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")):
        value = fields.get(key, "")
        info[name] = int(value) if value.isdigit() else None
    flags = set(fields.get("flags", "").split())
    info["isa"] = [f for f in ISA_FLAGS if f in flags]
    arch = MICROARCHITECTURES.get((info["vendor"], info["family"], info["model"]))
    if (info["vendor"], info["family"], info["model"]) == ("GenuineIntel", 6, 85) and info["stepping"] is not None:
        arch = ("Skylake-SP" if info["stepping"] <= 4 else "Cascade Lake" if info["stepping"] <= 7
                else "Cooper Lake")
    info["microarchitecture"] = arch
    return info


def cpu_label(info: dict | str) -> str:
    """One line for a table header: ``AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, Zen 3 (Milan);
    avx avx2 fma)``. Results written before :func:`cpu_info` existed hold the model name alone, a string."""
    if isinstance(info, str):
        return info
    numbers = (f"{info.get('vendor') or '?'} family {info.get('family')} model {info.get('model')} "
               f"stepping {info.get('stepping')}")
    if info.get("microarchitecture"):
        numbers += f", {info['microarchitecture']}"
    isa = " ".join(info.get("isa") or []) or "no AVX"
    return f"{info.get('model_name') or 'unknown CPU'} ({numbers}; {isa})"


# Environment variables that change which code runs or how it rounds (RNNLAB_ISA, RNNLAB_BACKEND,
# RNNLAB_FUSED_PACK_MIN, RNNLAB_PANEL_GEMM, MKL_CBWR, OMP_NUM_THREADS, ...): recorded with every measurement.
RECORDED_ENV = ("RNNLAB_", "MKL_", "OMP_")


def machine_info(device: str = "cpu") -> dict:
    """Where a measurement ran: versions, the CPU (:func:`cpu_info`), torch's thread count, the GPU if any,
    whether the compiled kernels were used and the vector ISA they were built for, and the environment variables
    of :data:`RECORDED_ENV`."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "threads": torch.get_num_threads(), "device": device}
    try:
        info["cpu"] = cpu_info(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: what the platform module knows
        info["cpu"] = {"model_name": platform.processor() or platform.machine()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    from .kernels import fused
    from .kernels._extension import isa_flags

    info["fused_compiled"] = fused.compiled_available() if device == "cpu" else False
    if info["fused_compiled"]:
        info["kernel_isa"] = isa_flags()[0]
    info["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_ENV)}
    return info


def run(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every (cell, size, pass) of ``cfg``; returns a JSON-able dict (config, machine, cases).

    Raises:
        UserError: an invalid config field.
    """
    cfg.validate()
    torch.set_num_threads(thread_count(cfg.threads))
    say = progress or (lambda _msg: None)
    started = time.time()
    machine = machine_info(cfg.device)
    say(f"CPU: {cpu_label(machine['cpu'])}")
    peak = gemm_peak(cfg.device)
    say(f"torch.set_num_threads({torch.get_num_threads()}); GEMM peak {peak:.1f} GFLOP/s (float32 1024^3 matmul)")
    cases = []
    for cell in cfg.cells:
        for size_name in cfg.sizes:
            for pass_ in cfg.passes:
                case = _time_case(cfg, cell, size_name, pass_)
                if cfg.memory and pass_ == "fwdbwd":
                    for impl in ("torch", "rnnlab"):
                        case[impl]["peak_bytes"] = _peak_memory(cfg, cell, size_name, impl)
                    case["ratio_memory"] = case["rnnlab"]["peak_bytes"] / max(case["torch"]["peak_bytes"], 1.0)
                cases.append(case)
                say(f"{cell} {size_name} {pass_}: ratio {case['ratio_wall']:.2f} (cpu {case['ratio_cpu']:.2f})")
    peak = max(peak, gemm_peak(cfg.device))
    machine["gemm_peak_gflops"] = peak
    for case in cases:
        for impl in ("torch", "rnnlab"):
            case[impl]["gemm_fraction"] = case["gflop"] / case[impl]["wall_s"]["median"] / peak
        # rnnlab meets the target when its time is at most target x torch.nn's, i.e. its fraction at least this
        case["target_gemm_fraction"] = case["torch"]["gemm_fraction"] / case["target"]
    return {"config": asdict(cfg), "machine": machine, "cases": cases, "seconds": time.time() - started}


def format_table(results: dict) -> str:
    """The ratio table: one line per case, times in ms as median [min-max], ratio = rnnlab / torch.nn, and the
    share of the GEMM peak torch.nn reaches, rnnlab reaches and rnnlab would need for the target (``nn/rl/need``)."""
    m = results["machine"]
    where = m.get("gpu") or cpu_label(m.get("cpu", "?"))
    kernels = f" | kernels {m['kernel_isa']}" if "kernel_isa" in m else ""
    env = "".join(f" {k}={v}" for k, v in m.get("env", {}).items())
    lines = [f"rnnlab {results['config']['backend']!r} vs torch.nn {m['torch']} on {where}"
             f" | threads={m['threads']} | GEMM peak {m['gemm_peak_gflops']:.1f} GFLOP/s"
             f" | rounds={results['config']['rounds']} warmup={results['config']['warmup']}{kernels}"
             + (f" |{env}" if env else "")]
    head = (f"{'cell':5} {'size':4} {'pass':6} {'torch.nn ms':>22} {'rnnlab ms':>22} {'ratio':>6} {'cpu':>5}"
            f" {'target':>6} {'ok':>3} {'%peak nn/rl/need':>16} {'mem MiB nn/rl':>14}")
    lines += [head, "-" * len(head)]

    def ms(s: dict) -> str:
        return f"{1e3 * s['median']:.2f} [{1e3 * s['min']:.2f}-{1e3 * s['max']:.2f}]"

    for c in results["cases"]:
        ok = "yes" if c["ratio_wall"] <= c["target"] else "NO"
        frac = (f"{100 * c['torch']['gemm_fraction']:.0f}/{100 * c['rnnlab']['gemm_fraction']:.0f}"
                f"/{100 * c['target_gemm_fraction']:.0f}")
        mem = ""
        if "ratio_memory" in c:
            mem = f"{c['torch']['peak_bytes'] / 2**20:.1f}/{c['rnnlab']['peak_bytes'] / 2**20:.1f}"
        lines.append(f"{c['cell']:5} {c['size']:4} {c['pass']:6} {ms(c['torch']['wall_s']):>22} "
                     f"{ms(c['rnnlab']['wall_s']):>22} {c['ratio_wall']:6.2f} {c['ratio_cpu']:5.2f} "
                     f"{c['target']:6.2f} {ok:>3} {frac:>16} {mem:>14}")
    met = sum(c["ratio_wall"] <= c["target"] for c in results["cases"])
    lines.append(f"{met}/{len(results['cases'])} cases meet their target; ratio < 1 means rnnlab is faster "
                 f"({results['seconds']:.0f} s)")
    return "\n".join(lines)


def write_json(results: dict, path: str | Path) -> Path:
    """Write the results (config and machine included) as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
