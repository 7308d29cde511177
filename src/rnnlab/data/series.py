"""Time-series forecasting: any CSV the user gives, and two series bundled with ``statsmodels``.

A series ``(N, C)`` is split in time: the first ``1 - val_fraction`` of the points are for training, the rest for
validation (a model must never see the future it is scored on). Scaling (``standard``: zero mean, unit variance;
``minmax``: to [0, 1]; ``none``) is fitted on the training points only. Windows of ``seq_len`` steps of the input
columns predict the next ``horizon`` steps of the target columns, all at once from the last step's output
(direct multi-step forecasting); ``rnnlab forecast --horizon N`` goes further by feeding the forecast back
(:func:`forecast_ahead`).

A user's CSV (:func:`read_csv_table`) is read as a data scientist would expect: the delimiter (``,`` ``;`` tab
``|``) is detected with :class:`csv.Sniffer` (``--delimiter`` overrides it), and so is the header row: the first row
is a header when one of its cells is text in a column of numbers or dates, else the columns are named ``column1``,
``column2``, ... In a file delimited by ``;`` or tabs, ``1,5`` is 1.5 (a spreadsheet's decimal comma). An ISO 8601
date column (``2024-01-31``, ``2024-01-31 12:00``) becomes the index of the forecast. Every cell of a column that is
read must be a number: the first one that is not stops the run with its row, column and value. Empty and ``NaN``
cells are the *missing values* of ``--missing``: an error by default (with the first one's row and column), or
filled by linear interpolation in time with ``--missing interpolate``; the bundled series are always interpolated,
and the count is reported by :meth:`SeriesTask.describe`.

Why the standard library and not pandas (measured on nine small files: comma, semicolon, tab, semicolon with
decimal commas, one column, quoted header, with and without a header): ``pd.read_csv(sep=None)`` uses this same
Sniffer for the delimiter, always takes the first row as the header (a file without one loses its first row to
column names), and misreads a one-column file; pandas is also only an optional dependency (through statsmodels).
The file is streamed row by row into one float64 array, and windows are views of it, so the memory a CSV costs
is about 8 bytes a number, whatever the window length.

* ``sunspots``: yearly sunspot numbers 1700-2008 (``statsmodels/datasets/sunspots/sunspots.csv``);
* ``co2``: weekly Mauna Loa CO2 1958-2001 (``statsmodels/datasets/co2/co2.csv``), 59 weeks missing.

The files are read directly (locating the installed package without importing it).
"""

from __future__ import annotations

import csv
import importlib.util
import math
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .arrays import ArrayTask

__all__ = ["read_csv_table", "CsvTable", "read_csv_columns", "check_missing", "interpolate_missing", "Scaler",
           "make_windows", "SeriesTask", "format_stamp", "predict_windows", "forecast_ahead", "forecast_errors",
           "statsmodels_csv"]

_MISSING = frozenset(("", "nan", "na", "n/a", "null"))  # lower-cased cells that are missing values
_DELIMITERS = ",;\t|"
_SAMPLE_LINES = 100  # rows read to detect the delimiter, the header and the kind of each column


@dataclass
class CsvTable:
    """The numeric columns of a CSV, as :func:`read_csv_table` read them.

    Attributes:
        names: the columns read. values: ``(N, C)`` float64, NaN where a cell is empty or NaN.
        lines: ``(N,)`` the line of the file each row came from (1-based; a header is line 1).
        dates: ``(N,)`` ``datetime64[s]`` of the date column, or None. date_column: its name.
        delimiter: the one used. header: whether the first row was a header. skipped: text columns left out.
    """

    names: list[str]
    values: np.ndarray
    lines: np.ndarray
    dates: np.ndarray | None
    date_column: str | None
    delimiter: str
    header: bool
    skipped: list[str]


def _number(cell: str, decimal_comma: bool = False) -> float:
    """A cell as a number, NaN when missing. Raises ValueError when it is neither. ``decimal_comma``: ``1,5`` is
    1.5 (files delimited by ``;`` or tabs, as spreadsheets write them where the comma is the decimal mark)."""
    cell = cell.strip()
    if cell.lower() in _MISSING:
        return math.nan
    if decimal_comma and cell.count(",") == 1 and "." not in cell:
        cell = cell.replace(",", ".")
    return float(cell)


def _date(cell: str) -> np.datetime64 | None:
    """An ISO 8601 date or date-time, or None. Numbers are never dates (NumPy would read ``"12"`` as year 12)."""
    cell = cell.strip()
    try:
        float(cell)
        return None
    except ValueError:
        pass
    try:
        d = np.datetime64(cell, "s")
    except ValueError:
        return None
    return None if np.isnat(d) else d


def _kind(cells: list[str], decimal_comma: bool) -> str:
    """``number``, ``date`` or ``text``: what a column's sample cells are. One number makes a column of numbers
    and one date a column of dates (a cell that is not one is then an error, not a reason to drop the column);
    a column of missing values is numeric."""
    present = [c for c in cells if c.strip().lower() not in _MISSING]
    numbers = 0
    for c in present:
        try:
            _number(c, decimal_comma)
            numbers += 1
        except ValueError:
            pass
    if numbers or not present:
        return "number"  # then every cell must be a number: the first that is not stops the run
    return "date" if any(_date(c) is not None for c in present) else "text"


def _delimiter(sample: str, given: str) -> str:
    if given:
        return "\t" if given in ("\\t", "tab", "TAB") else given
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:  # one column (no delimiter at all) or an irregular file: read it as commas
        return ","


def read_csv_table(path: str | Path, columns: list[str] | None = None, delimiter: str = "") -> CsvTable:
    """Read the numeric columns of a CSV (see the module docstring for the delimiter, header and date rules).

    ``columns`` empty or None: every column of numbers (text columns are left out and listed in ``skipped``);
    else exactly those. ``delimiter``: empty to detect it; ``tab`` or ``\\t`` for a tab.

    Raises:
        UserError: missing or unreadable file, no data row, unknown column (the message lists the available
            ones), a cell that is not a number (with its row, column and value), an infinite value, or a date
            column cell that is not a date.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"csv task: {p} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"csv task: file not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark is not data
            sample = "".join(line for _, line in zip(range(_SAMPLE_LINES + 1), f))
            delim = _delimiter(sample, delimiter)
            rows = [r for r in csv.reader(sample.splitlines(), delimiter=delim) if any(c.strip() for c in r)]
            if len(rows) < 2:
                raise UserError(f"csv task: {p} needs a header row and at least one data row")
            width = max(len(r) for r in rows)
            comma = delim != ","  # a comma inside a cell is then a decimal mark (see _number)
            first, rest = rows[0], rows[1:]
            kinds = [_kind([r[j] for r in rest if j < len(r)], comma) for j in range(width)]
            # A header row: some cell is text (not a number, a date or missing) where the rows below are
            # numbers or dates.
            header = bool(rest) and any(_kind([first[j]], comma) == "text" and kinds[j] != "text"
                                        for j in range(len(first)))
            if not header:
                kinds = [_kind([r[j] for r in rows if j < len(r)], comma) for j in range(width)]
            names = ([h.strip() for h in first] + [f"column{j + 1}" for j in range(len(first), width)] if header
                     else [f"column{j + 1}" for j in range(width)])
            if columns:
                unknown = [c for c in columns if c not in names]
                if unknown:
                    raise UserError(f"csv task: columns {unknown} not in {p.name}; available: {names}")
                used = [names.index(c) for c in columns]
            else:
                used = [j for j, k in enumerate(kinds) if k == "number"]
                if not used:
                    raise UserError(f"csv task: {p.name} has no numeric column; columns: {names} (delimiter "
                                    f"{delim!r}; give another with --delimiter)")
            date_j = next((j for j, k in enumerate(kinds) if k == "date" and j not in used), None)
            f.seek(0)
            data = [array("d") for _ in used]
            lines, stamps = array("q"), array("q")
            reader = csv.reader(f, delimiter=delim)
            skip_header = header
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if skip_header:
                    skip_header = False
                    continue
                for col, j in zip(data, used):
                    cell = row[j] if j < len(row) else ""
                    try:
                        value = _number(cell, comma)
                    except ValueError:
                        raise UserError(f"csv task: column {names[j]!r} of {p.name} has non-numeric values: row "
                                        f"{reader.line_num} has {cell!r} (only empty and NaN cells count as missing "
                                        f"values, see --missing); fix the cell, or leave the column out with "
                                        f"--columns") from None
                    if math.isinf(value):
                        raise UserError(f"csv task: {p.name} row {reader.line_num}, column {names[j]!r}: {cell!r} is "
                                        f"infinite (empty and NaN cells are missing values (see --missing), "
                                        f"infinities are errors)")
                    col.append(value)
                if date_j is not None:
                    cell = row[date_j] if date_j < len(row) else ""
                    stamp = _date(cell)
                    if stamp is None:
                        raise UserError(f"csv task: {p.name} row {reader.line_num}, column {names[date_j]!r}: "
                                        f"{cell!r} is not a date like the rows above it (YYYY-MM-DD[ HH:MM[:SS]])")
                    stamps.append(int(stamp.astype(np.int64)))
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise UserError(f"csv task: {p} is not UTF-8 text ({err.reason})") from None
    except csv.Error as err:
        raise UserError(f"csv task: {p} is not a readable CSV: {err}") from None
    except OSError as err:
        raise UserError(f"csv task: cannot read {p}: {err.strerror or err}") from None
    values = np.empty((len(lines), len(used)), dtype=np.float64)
    for k, col in enumerate(data):
        values[:, k] = np.frombuffer(col, dtype=np.float64)
    del data
    return CsvTable(
        names=[names[j] for j in used], values=values, lines=np.frombuffer(lines, dtype=np.int64),
        dates=np.frombuffer(stamps, dtype=np.int64).astype("datetime64[s]") if date_j is not None else None,
        date_column=names[date_j] if date_j is not None else None, delimiter=delim, header=header,
        skipped=[names[j] for j, k in enumerate(kinds) if k == "text" and j not in used])


def read_csv_columns(path: str | Path, columns: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``(names, values (N, C) float64)`` of :func:`read_csv_table`, NaN where a cell is empty or NaN."""
    table = read_csv_table(path, columns)
    return table.names, table.values


def check_missing(table: CsvTable, policy: str, source: str | Path) -> None:
    """Refuse missing values under ``--missing error``, naming the first one's row and column.

    Raises:
        UserError: an unknown policy, or missing values with ``policy == "error"``.
    """
    if policy not in ("error", "interpolate"):
        raise UserError(f"csv task: --missing must be 'error' or 'interpolate', got {policy!r}")
    if policy == "error" and np.isnan(table.values).any():
        rows, cols = np.nonzero(np.isnan(table.values))
        raise UserError(f"csv task: {source} has {rows.size} empty or NaN value(s), the first in row "
                        f"{table.lines[rows[0]]} (counting the header as row 1), column {table.names[cols[0]]!r}; "
                        f"pass --missing interpolate to fill them linearly in time")


def interpolate_missing(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaNs per column by linear interpolation in time (constant beyond the ends); returns (filled, count).

    Raises:
        UserError: a column with no value at all.
    """
    missing = int(np.isnan(values).sum())
    out = values.copy() if missing else values  # no copy of a complete series (a large CSV's only array)
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


def make_windows(series: np.ndarray | torch.Tensor, inputs: list[int], targets: list[int], length: int,
                 horizon: int, first_target: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows whose forecast starts at index ``>= first_target``.

    The inputs are strided views of one float32 copy of the input columns (``unfold``), so ``seq_len`` steps per
    window cost no memory until a batch gathers its windows; the targets (``horizon`` steps each) are copied.

    Shape: series ``(N, C)``; returns ``x`` ``(W, length, len(inputs))`` and ``y`` ``(W, horizon * len(targets))``
    (the forecast flattened step-major: ``y[w].view(horizon, len(targets))``).
    """
    data = torch.as_tensor(series, dtype=torch.float32)  # the one copy the windows view
    start = max(0, first_target - length)
    count = data.shape[0] - length - horizon + 1 - start
    if count <= 0:
        return torch.empty(0, length, len(inputs)), torch.empty(0, horizon * len(targets))
    x = data[start:, inputs].unfold(0, length, 1)[:count].transpose(1, 2)  # (W, length, I), a view
    y = data[start + length:, targets].unfold(0, horizon, 1)[:count].transpose(1, 2)  # (W, horizon, O)
    return x, y.reshape(count, horizon * len(targets))


class SeriesTask(ArrayTask):
    """Direct multi-step forecasting over one series (see the module docstring).

    Args:
        name: task name. names: the columns of ``raw``. raw: ``(N, C)`` values, NaN = missing (interpolated).
        inputs, targets: column names. cfg: the task config. seed: batching. table: the CSV the data came from
            (its dates index the series; its reading is reported by :meth:`describe`).
    """

    def __init__(self, name: str, names: list[str], raw: np.ndarray, inputs: list[str], targets: list[str],
                 cfg, seed: int, table: CsvTable | None = None) -> None:
        if cfg.horizon < 1:
            raise UserError(f"{name} task: horizon must be >= 1, got {cfg.horizon}")
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"{name} task: val_fraction must be in (0, 1), got {cfg.val_fraction}")
        filled, self.missing = interpolate_missing(raw)
        n_train = int(filled.shape[0] * (1 - cfg.val_fraction))
        self.scaler = Scaler(cfg.scale, filled[:n_train])
        in_idx = [names.index(c) for c in inputs]
        out_idx = [names.index(c) for c in targets]
        # One set of windows over the whole series; the training ones end before n_train, the validation ones
        # forecast from n_train on (views of the same data).
        x, y = make_windows(self.scaler.transform(filled), in_idx, out_idx, cfg.seq_len, cfg.horizon)
        n_tr = max(0, n_train - cfg.seq_len - cfg.horizon + 1)
        first_val = max(0, n_train - cfg.seq_len)
        x_tr, y_tr, x_va, y_va = x[:n_tr], y[:n_tr], x[first_val:], y[first_val:]
        if x_tr.size(0) == 0 or x_va.size(0) == 0:
            raise UserError(f"{name} task: {filled.shape[0]} points split {n_train}/{filled.shape[0] - n_train} "
                            f"are too few for windows of seq_len={cfg.seq_len} + horizon={cfg.horizon}; "
                            f"lower --seq-len")
        super().__init__(name, "regression", x_tr, y_tr, x_va, y_va, cfg.horizon * len(targets), cfg.batch_size,
                         seed, per_step=False)
        self.names, self.inputs, self.targets = names, inputs, targets
        self.horizon, self.window = cfg.horizon, cfg.seq_len
        self.n_points, self.n_train = filled.shape[0], n_train
        self.table = table
        self.dates = table.dates if table is not None else None
        self.target_values = filled[:, out_idx]  # (N, O) in the data's units, for the baselines of forecast_errors
        self.val_origin = first_val + cfg.seq_len  # index of the first forecast step of validation window 0

    def info(self) -> dict[str, Any]:
        """Saved into the run folder so ``rnnlab forecast`` can scale new data the same way."""
        return {"columns": self.names, "inputs": self.inputs, "targets": self.targets, "horizon": self.horizon,
                "window": self.window, "scaler": self.scaler.to_dict()}

    def describe(self) -> str:
        missing = f"{self.missing} missing values interpolated" if self.missing else "no missing values"
        read = ""
        if self.table is not None:
            t = self.table
            read = (f"; read with delimiter {t.delimiter!r}, {'a header row' if t.header else 'no header row'}"
                    + (f", dates from {format_stamp(t.dates[0])} to {format_stamp(t.dates[-1])} ({t.date_column!r})"
                       if t.dates is not None else "")
                    + (f", text columns left out: {t.skipped}" if t.skipped else ""))
        return (super().describe() + f"; {self.n_points} points ({self.n_train} train), {missing}; "
                f"inputs {self.inputs} -> targets {self.targets} x {self.horizon} steps{read}")


def format_stamp(t: Any) -> str:
    """A time index entry as text: a date in ISO 8601 (just the day at midnight), else the value itself."""
    if isinstance(t, np.datetime64):
        text = str(t.astype("datetime64[s]"))
        return text[:10] if text.endswith("T00:00:00") else text.replace("T", " ")
    return str(t)


def predict_windows(model: torch.nn.Module, x: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """The model's last-step output for windows ``x`` ``(W, L, I)``, ``chunk`` windows at a time: ``(W, out)``."""
    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for k in range(0, x.size(0), chunk):
            out, _ = model(x[k:k + chunk].transpose(0, 1).contiguous())  # (L, w, out)
            outs.append(out[-1].double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outs) if outs else np.empty((0, 0))


def forecast_ahead(model: torch.nn.Module, history: np.ndarray, inputs: list[str], targets: list[str],
                   horizon: int, steps: int) -> np.ndarray:
    """Forecast ``steps`` steps after ``history`` (scaled input columns, ``(L, I)``), in the scaled units.

    The model forecasts ``horizon`` steps at once; beyond that its forecast is appended to the window as input and
    the model run again (iterated multi-step forecasting), which needs every input column to be forecast.

    Raises:
        UserError: ``steps < 1``, or ``steps > horizon`` with an input column that is not a target.
    """
    if steps < 1:
        raise UserError(f"forecast: --horizon must be >= 1, got {steps}")
    not_forecast = [c for c in inputs if c not in targets]
    if steps > horizon and not_forecast:
        raise UserError(f"forecast: --horizon {steps} is beyond the model's {horizon} steps, and the model does "
                        f"not forecast its input column(s) {not_forecast} to feed back; ask for at most {horizon} "
                        f"steps, or train with --target covering every input")
    feed = [targets.index(c) for c in inputs] if steps > horizon else []
    window = np.asarray(history, dtype=np.float64)  # (L, I)
    out: list[np.ndarray] = []
    while len(out) < steps:
        pred = predict_windows(model, torch.tensor(window[None], dtype=torch.float32))[0]
        pred = pred.reshape(horizon, len(targets))
        out.extend(pred)
        window = np.concatenate([window, pred[:, feed]])[-history.shape[0]:] if feed else window
    return np.array(out[:steps])


def forecast_errors(task: SeriesTask, model: torch.nn.Module, period: int = 0) -> dict[str, float]:
    """MAE and RMSE of the model's validation forecasts in the data's units, per target column, next to the
    naive forecast (the last value, repeated over the horizon) and, with ``period > 0``, the seasonal naive one
    (the value one period earlier, from the last observed season).

    Returns ``{"mae_<col>", "rmse_<col>", "naive_mae_<col>", "naive_rmse_<col>"[, "seasonal_mae_<col>",
    "seasonal_rmse_<col>"]}``.

    Raises:
        UserError: ``period < 0``, or a period longer than the history before the first validation forecast.
    """
    if period < 0:
        raise UserError(f"eval: --period must be >= 0, got {period}")
    n_win, h, n_out = task.x_val.size(0), task.horizon, len(task.targets)
    origins = task.val_origin + np.arange(n_win)  # (W,) index of each window's first forecast step
    if period > origins[0]:
        raise UserError(f"eval: --period {period} is longer than the {origins[0]} points before the first "
                        f"validation forecast")
    steps = origins[:, None] + np.arange(h)[None, :]  # (W, h)
    actual = task.target_values[steps]  # (W, h, O)
    out_idx = [task.names.index(c) for c in task.targets]
    pred = task.scaler.inverse(predict_windows(model, task.x_val).reshape(n_win, h, n_out), out_idx)
    forecasts = {"": pred, "naive_": np.broadcast_to(task.target_values[origins - 1][:, None, :], actual.shape)}
    if period:
        # Step t + k of the forecast takes the value of the last season seen: t + k - period * ceil((k + 1) / period).
        back = period * -(-(np.arange(h) + 1) // period)  # (h,)
        forecasts["seasonal_"] = task.target_values[steps - back[None, :]]
    result = {}
    for prefix, guess in forecasts.items():
        err = guess - actual  # (W, h, O)
        for j, col in enumerate(task.targets):
            result[f"{prefix}mae_{col}"] = float(np.abs(err[..., j]).mean())
            result[f"{prefix}rmse_{col}"] = float(np.sqrt((err[..., j] ** 2).mean()))
    return result


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
