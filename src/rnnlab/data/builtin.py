"""Registration of the shipped tasks (each builder imports its module lazily, so a missing optional data package
only matters to the task that needs it)."""

from __future__ import annotations

from .base import Task
from .registry import register_task


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
    from .text import CharLMTask, load_text_ids

    if not cfg.path:
        raise UserError("text task: give the text file with --path FILE")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"text task: val_fraction must be in (0, 1), got {cfg.val_fraction}")
    vocab, ids = load_text_ids(cfg.path)  # memory-mapped: a large file costs pages, not its size in memory
    cut = int(len(ids) * (1 - cfg.val_fraction))
    return CharLMTask("text", ids[:cut], ids[cut:], vocab, cfg.batch_size, cfg.seq_len, seed)


def _synthetic(name: str, cfg, seed: int, make, kind: str, output_size: int, per_step: bool) -> Task:
    from .arrays import ArrayTask
    from .base import seeded_generator

    if cfg.num_samples < 1:
        from ..errors import UserError

        raise UserError(f"{name} task: num_samples must be >= 1, got {cfg.num_samples}")
    x, y = make(cfg.num_samples, seeded_generator(seed, 1))
    xv, yv = make(max(1, cfg.num_samples // 10), seeded_generator(seed, 2))
    return ArrayTask(name, kind, x, y, xv, yv, output_size, cfg.batch_size, seed, per_step=per_step)


@register_task("sine")
def _sine(cfg, seed: int) -> Task:
    from .synthetic import sine_windows

    return _synthetic("sine", cfg, seed, lambda n, g: sine_windows(n, cfg.seq_len, g), "regression", 1, True)


@register_task("adding")
def _adding(cfg, seed: int) -> Task:
    from .synthetic import adding_problem

    return _synthetic("adding", cfg, seed, lambda n, g: adding_problem(n, cfg.seq_len, g), "regression", 1, False)


@register_task("copy")
def _copy(cfg, seed: int) -> Task:
    from .synthetic import COPY_SYMBOLS, copy_memory

    return _synthetic("copy", cfg, seed, lambda n, g: copy_memory(n, cfg.delay, g), "classification",
                      COPY_SYMBOLS + 2, True)


@register_task("mnist1d")
def _mnist1d(cfg, seed: int) -> Task:
    from .classify import mnist1d_task

    return mnist1d_task(cfg, seed)


@register_task("mnist_rows")
def _mnist_rows(cfg, seed: int) -> Task:
    from .classify import mnist_rows_task

    return mnist_rows_task(cfg, seed)


@register_task("csv")
def _csv(cfg, seed: int) -> Task:
    from ..errors import UserError
    from .series import SeriesTask, check_missing, read_csv_table

    if not cfg.path:
        raise UserError("csv task: give the file with --path FILE (and optionally --columns, --target)")
    wanted = list(dict.fromkeys(list(cfg.columns) + list(cfg.target))) if cfg.columns else []
    table = read_csv_table(cfg.path, wanted or None, cfg.delimiter)
    check_missing(table, cfg.missing, cfg.path)
    names = table.names
    inputs = list(cfg.columns) or names
    unknown = [c for c in cfg.target if c not in names]
    if unknown:
        raise UserError(f"csv task: target columns {unknown} are not numeric columns of {cfg.path}: {names}")
    targets = list(cfg.target) or inputs
    return SeriesTask("csv", names, table.values, inputs, targets, cfg, seed, table=table)


@register_task("sunspots")
def _sunspots(cfg, seed: int) -> Task:
    from .series import SeriesTask, read_csv_columns, statsmodels_csv

    names, raw = read_csv_columns(statsmodels_csv("sunspots"), ["SUNACTIVITY"])
    return SeriesTask("sunspots", names, raw, names, names, cfg, seed)


@register_task("co2")
def _co2(cfg, seed: int) -> Task:
    from .series import SeriesTask, read_csv_columns, statsmodels_csv

    names, raw = read_csv_columns(statsmodels_csv("co2"), ["co2"])
    return SeriesTask("co2", names, raw, names, names, cfg, seed)
