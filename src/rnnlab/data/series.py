"""Time-series forecasting: any CSV the user gives, and two series bundled with ``statsmodels``.

A series ``(N, C)`` is split in time: the first ``1 - val_fraction`` of the points are for training, the rest for
validation (a model must never see the future it is scored on). Scaling (``standard``: zero mean, unit variance;
``minmax``: to [0, 1]; ``none``) is fitted on the training points only. Windows of ``seq_len`` steps of the input
columns predict the next ``horizon`` steps of the target columns, all at once from the last step's output
(direct multi-step forecasting). Missing values (empty cells, ``NaN``) are an error for a user's CSV unless
``--missing interpolate`` is given; then, and always for the bundled series, they are filled by linear interpolation in time,
and the count is reported by :meth:`SeriesTask.describe`.

* ``sunspots``: yearly sunspot numbers 1700-2008 (``statsmodels/datasets/sunspots/sunspots.csv``);
* ``co2``: weekly Mauna Loa CO2 1958-2001 (``statsmodels/datasets/co2/co2.csv``), 59 weeks missing.

The files are read directly (locating the installed package without importing it).
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .arrays import ArrayTask

__all__ = ["read_csv_columns", "interpolate_missing", "Scaler", "make_windows", "SeriesTask", "statsmodels_csv"]


def read_csv_columns(path: str | Path, columns: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Numeric columns of a CSV with a header row: ``(names, values (N, C) float64)``, NaN where a cell is empty.

    ``columns`` empty or None: every column whose cells are all numeric or empty.

    Raises:
        UserError: missing or unreadable file, no header or no data row, unknown column (the message lists the
            available ones), a non-numeric cell in a requested column, an infinite value (NaN is missing, Inf
            is an error).
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"csv task: {p} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"csv task: file not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise UserError(f"csv task: {p} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"csv task: cannot read {p}: {err.strerror or err}") from None
    header = [h.strip() for h in rows[0]] if rows else []
    numbered = [(k + 2, r) for k, r in enumerate(rows[1:]) if any(cell.strip() for cell in r)]  # row 1 = header
    if not header or not numbered:
        raise UserError(f"csv task: {p} needs a header row and at least one data row")
    lines, body = [k for k, _ in numbered], [r for _, r in numbered]

    def parse(cell: str) -> float:
        cell = cell.strip()
        return math.nan if cell == "" or cell.lower() in ("nan", "na", "null") else float(cell)

    def column(j: int) -> np.ndarray | None:
        try:
            return np.array([parse(r[j]) if j < len(r) else math.nan for r in body], dtype=np.float64)
        except ValueError:
            return None

    if columns:
        unknown = [c for c in columns if c not in header]
        if unknown:
            raise UserError(f"csv task: columns {unknown} not in {p.name}; available: {header}")
        names = list(columns)
        data = []
        for c in names:
            col = column(header.index(c))
            if col is None:
                raise UserError(f"csv task: column {c!r} of {p.name} has non-numeric values")
            data.append(col)
    else:
        names, data = [], []
        for j, h in enumerate(header):
            col = column(j)
            if col is not None:
                names.append(h)
                data.append(col)
        if not names:
            raise UserError(f"csv task: {p.name} has no numeric column; columns: {header}")
    values = np.stack(data, axis=1)
    infinite = np.argwhere(np.isinf(values))
    if infinite.size:
        i, j = (int(v) for v in infinite[0])
        cell = body[i][header.index(names[j])].strip()
        raise UserError(f"csv task: {p.name} row {lines[i]}, column {names[j]!r}: {cell!r} is infinite (empty "
                        f"and NaN cells are missing values (see --missing), infinities are errors)")
    return names, values


def interpolate_missing(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaNs per column by linear interpolation in time (constant beyond the ends); returns (filled, count).

    Raises:
        UserError: a column with no value at all.
    """
    out = values.copy()
    missing = int(np.isnan(out).sum())
    idx = np.arange(out.shape[0])
    for j in range(out.shape[1]):
        bad = np.isnan(out[:, j])
        if bad.all():
            raise UserError(f"series: column {j} has no values")
        if bad.any():
            out[bad, j] = np.interp(idx[bad], idx[~bad], out[~bad, j])
    return out, missing


class Scaler:
    """Per-column affine scaling ``(v - shift) / scale`` fitted on training points; ``inverse`` undoes it."""

    def __init__(self, kind: str, train: np.ndarray) -> None:
        if kind == "standard":
            self.shift, self.scale = train.mean(0), train.std(0)
        elif kind == "minmax":
            self.shift, self.scale = train.min(0), train.max(0) - train.min(0)
        elif kind == "none":
            self.shift, self.scale = np.zeros(train.shape[1]), np.ones(train.shape[1])
        else:
            raise UserError(f"series: unknown scale {kind!r}; expected 'standard', 'minmax' or 'none'")
        self.kind = kind
        self.scale = np.where(self.scale > 0, self.scale, 1.0)  # a constant column stays finite

    def transform(self, v: np.ndarray) -> np.ndarray:
        return (v - self.shift) / self.scale

    def inverse(self, v: np.ndarray, cols: list[int] | None = None) -> np.ndarray:
        cols = list(range(len(self.shift))) if cols is None else cols
        return v * self.scale[cols] + self.shift[cols]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}


def make_windows(series: np.ndarray, inputs: list[int], targets: list[int], length: int, horizon: int,
                 first_target: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows whose forecast starts at index ``>= first_target``.

    Shape: series ``(N, C)``; returns ``x`` ``(W, length, len(inputs))`` and ``y`` ``(W, horizon * len(targets))``
    (the forecast flattened step-major: ``y[w].view(horizon, len(targets))``).
    """
    starts = range(max(0, first_target - length), series.shape[0] - length - horizon + 1)
    xs = [series[s:s + length, inputs] for s in starts]
    ys = [series[s + length:s + length + horizon, targets].reshape(-1) for s in starts]
    if not xs:
        return torch.empty(0, length, len(inputs)), torch.empty(0, horizon * len(targets))
    return torch.tensor(np.stack(xs), dtype=torch.float32), torch.tensor(np.stack(ys), dtype=torch.float32)


class SeriesTask(ArrayTask):
    """Direct multi-step forecasting over one series (see the module docstring)."""

    def __init__(self, name: str, names: list[str], raw: np.ndarray, inputs: list[str], targets: list[str],
                 cfg, seed: int) -> None:
        if cfg.horizon < 1:
            raise UserError(f"{name} task: horizon must be >= 1, got {cfg.horizon}")
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"{name} task: val_fraction must be in (0, 1), got {cfg.val_fraction}")
        filled, self.missing = interpolate_missing(raw)
        n_train = int(filled.shape[0] * (1 - cfg.val_fraction))
        self.scaler = Scaler(cfg.scale, filled[:n_train])
        scaled = self.scaler.transform(filled)
        in_idx = [names.index(c) for c in inputs]
        out_idx = [names.index(c) for c in targets]
        x_tr, y_tr = make_windows(scaled[:n_train], in_idx, out_idx, cfg.seq_len, cfg.horizon)
        x_va, y_va = make_windows(scaled, in_idx, out_idx, cfg.seq_len, cfg.horizon, first_target=n_train)
        if x_tr.size(0) == 0 or x_va.size(0) == 0:
            raise UserError(f"{name} task: {filled.shape[0]} points split {n_train}/{filled.shape[0] - n_train} "
                            f"are too few for windows of seq_len={cfg.seq_len} + horizon={cfg.horizon}; "
                            f"lower --seq-len")
        super().__init__(name, "regression", x_tr, y_tr, x_va, y_va, cfg.horizon * len(targets), cfg.batch_size,
                         seed, per_step=False)
        self.names, self.inputs, self.targets = names, inputs, targets
        self.horizon, self.window = cfg.horizon, cfg.seq_len
        self.n_points, self.n_train = filled.shape[0], n_train

    def info(self) -> dict[str, Any]:
        """Saved into the run folder so ``rnnlab forecast`` can scale new data the same way."""
        return {"columns": self.names, "inputs": self.inputs, "targets": self.targets, "horizon": self.horizon,
                "window": self.window, "scaler": self.scaler.to_dict()}

    def describe(self) -> str:
        return (super().describe() + f"; {self.n_points} points ({self.n_train} train), {self.missing} missing "
                f"values interpolated; inputs {self.inputs} -> targets {self.targets} x {self.horizon} steps")


def statsmodels_csv(dataset: str) -> Path:
    """Path of a dataset CSV inside the installed statsmodels (found without importing statsmodels)."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{dataset} task: the 'statsmodels' package is not installed; "
                        f"run: pip install 'rnnlab[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / dataset / f"{dataset}.csv"
    if not path.is_file():
        raise UserError(f"{dataset} task: {path} not found in the installed statsmodels")
    return path
