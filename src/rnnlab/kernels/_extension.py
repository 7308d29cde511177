"""Build (once, cached on disk) and load the compiled step loops of the fused backend (``csrc/*.cpp``).

The build uses :func:`torch.utils.cpp_extension.load`, which compiles into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a file lock, so that parallel processes
build it once. The cache entry's name, ``rnnlab_fused_<isa>_<digest>``, carries the vector ISA and a digest of
everything that goes into the build (sources, headers, flags, torch's version, the checkout's path): two versions
of rnnlab (two checkouts, two venvs) then each keep their own build instead of rebuilding over each other. The
first use of a version compiles (1-2 minutes on 2 cores, longer on a busy machine); later processes only load
the ``.so``.

``RNNLAB_ISA=avx512|avx2|base`` forces the build target (to run the code path of another CPU; each target is its
own cache entry); a target this CPU cannot run, or an unknown value, raises instead of building.

When no C++ compiler is present, or the build fails, :func:`load_extension` returns ``False`` after a one-line
warning, the compiled kernels decline every run and the layers run the reference loop instead
(:func:`rnnlab.kernels.run`). ``RNNLAB_FUSED_EXT=0`` skips
the extension on purpose (no warning).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path

__all__ = ["load_extension", "extension_disabled"]

CSRC = Path(__file__).with_name("csrc")


def sources() -> list[Path]:
    """Every kernel file (``csrc/*.cpp``): torch's cells in ``fused.cpp``, the variants in their own files."""
    return sorted(CSRC.glob("*.cpp"))


# gcc's flags per build target, and the CPU flags (/proc/cpuinfo) a CPU needs to run that build.
ISA_TARGETS: dict[str, tuple[frozenset[str], list[str]]] = {
    "avx512": (frozenset({"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"}),
               ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                "-mprefer-vector-width=512"]),
    "avx2": (frozenset({"avx2", "fma"}), ["-mavx2", "-mfma"]),
    "base": (frozenset(), []),
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags() -> tuple[str, list[str]]:
    """The vector ISA to compile for, as ``(tag, gcc flags)``: ``RNNLAB_ISA`` when set, else the widest this CPU
    runs.

    The pointwise gate loops are written so that gcc auto-vectorizes them; wider vectors are most of the speed.
    The tag is part of the extension's name, so a cache shared between machines never loads a build for a CPU
    that lacks its instructions. A forced target is checked the same way: running an AVX-512 build on a CPU
    without AVX-512 would die of SIGILL at the first kernel call, so it is refused here with a RuntimeError (an
    unknown value with a ValueError).
    """
    cpu = _cpu_flags()
    forced = os.environ.get("RNNLAB_ISA", "").strip().lower()
    if not forced:
        tag = next(t for t, (needs, _) in ISA_TARGETS.items() if needs <= cpu)  # "base" needs nothing
        return tag, list(ISA_TARGETS[tag][1])
    if forced not in ISA_TARGETS:
        raise ValueError(f"RNNLAB_ISA: expected one of {', '.join(ISA_TARGETS)}, got {forced!r}")
    needs, flags = ISA_TARGETS[forced]
    if not needs <= cpu:
        vector = sorted(f for f in cpu if f.startswith(("avx", "fma", "sse")))
        raise RuntimeError(f"RNNLAB_ISA={forced}: this CPU cannot run the {forced} kernels: it lacks "
                           f"{', '.join(sorted(needs - cpu))} (its vector flags: {', '.join(vector) or 'none'}); "
                           f"unset RNNLAB_ISA or choose a target it has")
    return forced, list(flags)


def build_digest(files: list[Path], cflags: list[str]) -> str:
    """A short digest of everything a build depends on: the files' names and bytes, the flags, torch's version
    and the files' folder. torch's builder keys its cache on the extension's name alone (and rebuilds in place
    when the sources or flags differ), so this digest goes into the name; the folder is in it because the
    builder's ninja file names each source by its path (a second checkout with the same files would rebuild)."""
    import torch

    digest = hashlib.sha256()
    for item in (torch.__version__, str(CSRC.resolve()), *cflags):
        digest.update(item.encode() + b"\0")
    for f in sorted(files):
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_config() -> tuple[str, list[str]]:
    """The extension's cache name ``rnnlab_fused_<isa>_<digest>`` and its compiler flags (raises on a bad
    ``RNNLAB_ISA``, see :func:`isa_flags`)."""
    tag, flags = isa_flags()
    # -fno-trapping-math lets gcc if-convert and vectorize the gate loops (torch builds with it too). -fopenmp:
    # at::parallel_for is a header template whose `#pragma omp parallel` runs one thread without it; the loaded
    # module then shares torch's own libgomp.so.1 (the soname torch has already loaded) and its thread count.
    cflags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", *flags]
    files = [*sources(), *sorted(CSRC.glob("*.h"))]
    return f"rnnlab_fused_{tag}_{build_digest(files, cflags)}", cflags


def extension_disabled() -> bool:
    """True when the user turned the compiled loops off with ``RNNLAB_FUSED_EXT=0``."""
    return os.environ.get("RNNLAB_FUSED_EXT", "1").strip() == "0"


def _announce_first_build(name: str) -> None:
    """One line on stderr when nothing is cached yet, so a first-use pause of tens of seconds is explained."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: only for this notice

        folder = _get_build_directory(name, False)
        if not os.path.exists(os.path.join(folder, f"{name}.so")):
            print(f"rnnlab: building the fused C++ kernels (first use of this version only, 1-2 min on 2 cores, "
                  f"longer on a busy machine; cached in {folder})",
                  file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - the notice is a courtesy; never let it break loading
        pass


@functools.cache
def load_extension() -> bool:
    """Compile (first time) and load the kernels into ``torch.ops.rnnlab_fused``; ``False`` if unavailable.

    Raises ValueError / RuntimeError when ``RNNLAB_ISA`` names an unknown target or one this CPU lacks."""
    if extension_disabled():
        return False
    name, cflags = build_config()  # first, and outside the try: a bad RNNLAB_ISA is the user's error
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        warnings.warn(f"rnnlab: no C++ compiler ({compiler!r}) found; the layers run the reference loop "
                      "(slower at small sizes)", RuntimeWarning, stacklevel=3)
        return False
    if shutil.which("ninja") is None:
        # torch's builder runs `ninja` from PATH; the `ninja` wheel (a dependency) puts it beside the interpreter,
        # which is not on PATH when a venv's python is called by its full path.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    _announce_first_build(name)
    try:
        from torch.utils.cpp_extension import load

        load(name=name, sources=[str(s) for s in sources()], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any build or load failure means: use the fallback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(f"rnnlab: building the fused C++ kernels failed ({type(err).__name__}: {first[:160]}); "
                      "the layers run the reference loop", RuntimeWarning, stacklevel=3)
        return False
    return True
