"""Registration of the shipped tasks (each builder imports its module lazily, so a missing optional data package
only matters to the task that needs it)."""

from __future__ import annotations

from . import register_task
from .base import Task


@register_task("shakespeare")
def _shakespeare(cfg, seed: int) -> Task:
    from .shakespeare import load_plays, split_plays
    from .text import CharLMTask, CharVocab

    plays = load_plays(cfg.path or None)
    train, val, _ = split_plays(plays, cfg.val_fraction)
    return CharLMTask("shakespeare", train, val, CharVocab(train + val), cfg.batch_size, cfg.seq_len, seed)


@register_task("text")
def _text(cfg, seed: int) -> Task:
    from ..errors import UserError
    from .text import CharLMTask, CharVocab, load_text_file

    if not cfg.path:
        raise UserError("text task: give the text file with --path FILE")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"text task: val_fraction must be in (0, 1), got {cfg.val_fraction}")
    text = load_text_file(cfg.path)
    cut = int(len(text) * (1 - cfg.val_fraction))
    return CharLMTask("text", text[:cut], text[cut:], CharVocab(text), cfg.batch_size, cfg.seq_len, seed)
