"""Build (once, cached on disk) and load the compiled step loops of the fused backend (``csrc/*.cpp``).

The build uses :func:`torch.utils.cpp_extension.load`, which compiles into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and rebuilds only when the source or flags
change, under a file lock so that parallel processes build it once. The first use in a fresh cache compiles
(15-55 s on a shared 2-core machine); later processes only load the ``.so``.

When no C++ compiler is present, or the build fails, :func:`load_extension` returns ``False`` after a one-line
warning and :mod:`rnnlab.kernels.fused` runs its pure-PyTorch step loop instead. ``RNNLAB_FUSED_EXT=0`` skips
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


def _headers_digest() -> str:
    """A digest of ``csrc/*.h``: torch's build cache hashes the sources but not the headers they include, so the
    digest goes into the flags (a changed header then rebuilds)."""
    digest = hashlib.sha256()
    for header in sorted(CSRC.glob("*.h")):
        digest.update(header.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags() -> tuple[str, list[str]]:
    """The vector ISA to compile for, as ``(tag, gcc flags)``.

    The pointwise gate loops are written so that gcc auto-vectorizes them; wider vectors are most of the speed.
    The tag is part of the extension's name, so a cache shared between machines never loads a build for a CPU
    that lacks its instructions.
    """
    flags = _cpu_flags()
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"} <= flags:
        return "avx512", ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                          "-mprefer-vector-width=512"]
    if {"avx2", "fma"} <= flags:
        return "avx2", ["-mavx2", "-mfma"]
    return "base", []


def extension_disabled() -> bool:
    """True when the user turned the compiled loops off with ``RNNLAB_FUSED_EXT=0``."""
    return os.environ.get("RNNLAB_FUSED_EXT", "1").strip() == "0"


def _announce_first_build(name: str) -> None:
    """One line on stderr when nothing is cached yet, so a first-use pause of tens of seconds is explained."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: only for this notice

        folder = _get_build_directory(name, False)
        if not os.path.exists(os.path.join(folder, f"{name}.so")):
            print(f"rnnlab: building the fused C++ kernels (first use only, 15-60 s; cached in {folder})",
                  file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - the notice is a courtesy; never let it break loading
        pass


@functools.cache
def load_extension() -> bool:
    """Compile (first time) and load the kernels into ``torch.ops.rnnlab_fused``; ``False`` if unavailable."""
    if extension_disabled():
        return False
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        warnings.warn(f"rnnlab: no C++ compiler ({compiler!r}) found; the fused backend uses its pure-PyTorch "
                      "step loop (slower at small sizes)", RuntimeWarning, stacklevel=3)
        return False
    if shutil.which("ninja") is None:
        # torch's builder runs `ninja` from PATH; the `ninja` wheel (a dependency) puts it beside the interpreter,
        # which is not on PATH when a venv's python is called by its full path.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    tag, flags = isa_flags()
    name = f"rnnlab_fused_{tag}"
    _announce_first_build(name)
    try:
        from torch.utils.cpp_extension import load

        # -fno-trapping-math lets gcc if-convert and vectorize the gate loops (torch builds with it too).
        cflags = ["-O3", "-fno-math-errno", "-fno-trapping-math", *flags,
                  f"-DRNNLAB_HEADERS_DIGEST={_headers_digest()}"]
        load(name=name, sources=[str(s) for s in sources()], extra_cflags=cflags, is_python_module=False,
             verbose=False)
    except Exception as err:  # noqa: BLE001 - any build or load failure means: use the fallback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(f"rnnlab: building the fused C++ kernels failed ({type(err).__name__}: {first[:160]}); "
                      "the fused backend uses its pure-PyTorch step loop", RuntimeWarning, stacklevel=3)
        return False
    return True
