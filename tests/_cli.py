"""How the CLI tests start ``rnnlab``: as a user does, through the installed console script, in a subprocess."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def rnnlab_command() -> list[str]:
    """The console script installed next to this interpreter (``make setup``'s .venv), else the one on PATH, else
    ``python -m rnnlab``."""
    script = Path(sys.executable).with_name("rnnlab")
    if script.is_file():
        return [str(script)]
    found = shutil.which("rnnlab")
    return [found] if found else [sys.executable, "-m", "rnnlab"]
