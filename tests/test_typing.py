"""The typed public API: ``__all__`` names resolve, ``py.typed`` ships, mypy passes and sees rnnlab's hints.

The mypy runs take 1-2 minutes on the CI machine (torch's stubs are large), so they are marked slow; CI runs
the same check directly with ``python -m mypy`` (settings in pyproject.toml's ``[tool.mypy]``).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ["rnnlab", "rnnlab.functional", "rnnlab.layers", "rnnlab.cells", "rnnlab.cellspec", "rnnlab.init",
                  "rnnlab.kernels", "rnnlab.kernels.reference", "rnnlab.export", "rnnlab.models"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names that do not exist: {missing}"


def test_py_typed_ships_with_the_package() -> None:
    assert (files("rnnlab") / "py.typed").is_file()
    # ...and into wheels: setuptools only packages it when it is listed as package data.
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy")
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_mypy_passes_on_the_package() -> None:
    result = _mypy(cwd=ROOT)  # files and settings from pyproject.toml
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_user_code_is_checked_against_rnnlab_hints(tmp_path: Path) -> None:
    """A user's typed program sees rnnlab's annotations (through py.typed): a wrong call is an error."""
    good = tmp_path / "good.py"
    good.write_text(
        "import torch\nimport rnnlab\nfrom rnnlab.functional import lstm_step\n"
        "lstm = rnnlab.LSTM(8, 16, num_layers=2)\n"
        "w_ih, w_hh = torch.randn(64, 8), torch.randn(64, 16)\n"
        "h, c = lstm_step(torch.zeros(2, 8), (torch.zeros(2, 16), torch.zeros(2, 16)), w_ih, w_hh)\n"
        "y: torch.Tensor = h + c\n")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import rnnlab\nfrom rnnlab.functional import rnn_step\n"
        "rnnlab.LSTM('8', 16)\n"
        "rnn_step(1.0, 2.0, 3.0, 4.0)\n")
    ok = _mypy("--no-incremental", "--follow-imports=silent", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout
    wrong = _mypy("--no-incremental", "--follow-imports=silent", str(bad), cwd=tmp_path)
    assert wrong.returncode == 1
    assert 'Argument 1 to "LSTM" has incompatible type "str"; expected "int"' in wrong.stdout
    assert 'Argument 1 to "rnn_step" has incompatible type "float"; expected "Tensor"' in wrong.stdout
