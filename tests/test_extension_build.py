"""The compiled kernels' build: the ISA target (``RNNLAB_ISA``) and the cache key.

``RNNLAB_ISA`` forces the build target; a target the CPU lacks is refused with a clear error before anything is
built or loaded (a build for instructions the CPU lacks would die of SIGILL at its first call), and so is an
unknown value. The cache entry's name carries the target and a digest of the sources, headers and flags, so that
two versions of the kernels keep two entries instead of rebuilding over each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlab.kernels import _extension

AVX512_CPU = {"sse2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"}
AVX2_CPU = {"sse2", "avx", "avx2", "fma"}
OLD_CPU = {"sse2", "sse4_2", "avx"}


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU's flags: ``cpu(flags)``."""
    def fake(flags: set[str]) -> None:
        monkeypatch.setattr(_extension, "_cpu_flags", lambda: set(flags))
    return fake


@pytest.mark.parametrize("flags, tag", [(AVX512_CPU, "avx512"), (AVX2_CPU, "avx2"), (OLD_CPU, "base")])
def test_default_target_is_the_widest_the_cpu_runs(monkeypatch, cpu, flags, tag):
    monkeypatch.delenv("RNNLAB_ISA", raising=False)
    cpu(flags)
    got, gcc = _extension.isa_flags()
    assert got == tag
    assert ("-mavx512f" in gcc) == (tag == "avx512") and ("-mavx2" in gcc) == (tag != "base")


@pytest.mark.parametrize("forced, gcc", [("avx512", {"-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2",
                                                    "-mfma"}), ("avx2", {"-mavx2", "-mfma"}), ("base", set())])
def test_rnnlab_isa_forces_the_target(monkeypatch, cpu, forced, gcc):
    cpu(AVX512_CPU)
    monkeypatch.setenv("RNNLAB_ISA", forced.upper())  # case and spaces do not matter
    tag, flags = _extension.isa_flags()
    assert tag == forced
    assert gcc <= set(flags) and not any(f.startswith(("-mavx", "-mfma")) for f in set(flags) - gcc)
    name, cflags = _extension.build_config()
    assert name.startswith(f"rnnlab_fused_{forced}_") and set(flags) <= set(cflags)


@pytest.mark.parametrize("forced, flags", [("avx512", AVX2_CPU), ("avx2", OLD_CPU), ("avx512", OLD_CPU)])
def test_a_target_the_cpu_lacks_is_refused(monkeypatch, cpu, forced, flags):
    cpu(flags)
    monkeypatch.setenv("RNNLAB_ISA", forced)
    with pytest.raises(RuntimeError, match=f"RNNLAB_ISA={forced}: this CPU cannot run") as err:
        _extension.isa_flags()
    message = str(err.value)
    assert "avx512f" in message if forced == "avx512" else "avx2" in message.split("lacks")[1]
    assert "vector flags: " + ", ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "sse")))) in message
    monkeypatch.delenv("RNNLAB_FUSED_EXT", raising=False)
    with pytest.raises(RuntimeError, match="RNNLAB_ISA"):
        _extension.load_extension.__wrapped__()  # refused before the build, not turned into a fallback warning


@pytest.mark.parametrize("value", ["sse9", "avx-512", "native"])
def test_an_unknown_target_is_refused(monkeypatch, value):
    monkeypatch.setenv("RNNLAB_ISA", value)
    with pytest.raises(ValueError, match=f"RNNLAB_ISA: expected one of avx512, avx2, base, got '{value}'"):
        _extension.isa_flags()
    monkeypatch.delenv("RNNLAB_FUSED_EXT", raising=False)
    with pytest.raises(ValueError, match="RNNLAB_ISA"):
        _extension.load_extension.__wrapped__()


def test_refusal_is_an_error_in_a_user_process_not_a_crash():
    """A user's script with a target the CPU lacks ends with the RuntimeError and its message (exit 1), never a
    signal. The CPU is faked to lack AVX-512 so that this holds on any machine."""
    script = ("import torch, rnnlab\n"
              "from rnnlab.kernels import _extension\n"
              "_extension._cpu_flags = lambda: {'sse2', 'avx', 'avx2', 'fma'}\n"
              "rnnlab.LSTM(3, 4, backend='fused')(torch.randn(2, 1, 3))\n")
    env = {**os.environ, "RNNLAB_ISA": "avx512"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "RuntimeError: RNNLAB_ISA=avx512: this CPU cannot run the avx512 kernels" in done.stderr


def _copy_csrc(tmp_path: Path) -> Path:
    dst = tmp_path / "csrc"
    shutil.copytree(_extension.CSRC, dst)
    return dst


def _digest(csrc: Path, cflags: list[str]) -> str:
    return _extension.build_digest([*csrc.glob("*.cpp"), *csrc.glob("*.h")], cflags)


def test_cache_key_changes_with_sources_headers_and_flags(tmp_path):
    csrc = _copy_csrc(tmp_path)
    flags = ["-O3", "-mavx2"]
    base = _digest(csrc, flags)
    assert _digest(csrc, flags) == base  # the same build: the same entry
    assert _digest(csrc, ["-O3"]) != base
    cpp = csrc / "layernorm.cpp"
    cpp.write_text(cpp.read_text() + "\n// changed\n")
    assert _digest(csrc, flags) not in (base, _digest(csrc, ["-O3"]))
    cpp.write_text((_extension.CSRC / "layernorm.cpp").read_text())
    assert _digest(csrc, flags) == base
    header = csrc / "common.h"  # headers too: torch's builder would not see a changed header
    header.write_text(header.read_text() + "\n// changed\n")
    assert _digest(csrc, flags) != base


def test_cache_key_names_the_loaded_build(compiled_kernels):
    """The running process loaded its kernels from the entry named by build_config (ISA tag and digest)."""
    from torch.utils.cpp_extension import _get_build_directory

    name, _ = _extension.build_config()
    tag, _ = _extension.isa_flags()
    assert name.startswith(f"rnnlab_fused_{tag}_") and len(name.rsplit("_", 1)[1]) == 12
    assert (Path(_get_build_directory(name, False)) / f"{name}.so").is_file()


def test_first_build_notice_states_a_realistic_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    _extension._announce_first_build("rnnlab_fused_avx2_0123456789ab")
    err = capsys.readouterr().err
    assert "building the fused C++ kernels" in err and "1-2 min" in err and str(tmp_path) in err
    folder = tmp_path / "rnnlab_fused_avx2_0123456789ab"
    folder.mkdir(exist_ok=True)
    (folder / "rnnlab_fused_avx2_0123456789ab.so").write_bytes(b"")
    _extension._announce_first_build("rnnlab_fused_avx2_0123456789ab")
    assert capsys.readouterr().err == ""  # built already: no notice
