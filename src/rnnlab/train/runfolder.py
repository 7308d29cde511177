"""The run folder: one writer at a time, files replaced atomically, an existing run never overwritten by accident.

* :func:`atomic_write` is the one way rnnlab replaces a run's files (checkpoint, ``config.json``, ``task.json``,
  ``sample.txt``, an export's JSON): a temporary file in the same folder, fsynced, then ``os.replace`` over the
  target, so a crash leaves the old version or the new one, never half of each. (The append-only metric logs are
  cut back in place on resume instead: see ``rnnlab.train.callbacks``.)
* :func:`lock_run` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for as long as a command writes into
  the folder (``train``, ``train --resume``, and ``forecast``/``export`` writing their default files there). A
  second process exits at once with the holder's PID. The operating system drops a flock when its process dies
  (even by SIGKILL), so a crashed run never blocks its own resume; the PID it left in the file is reported in a
  one-line notice when the lock is taken over.
* :func:`claim_run_dir` refuses to start a new run in a folder that holds one (exit 2, with the three ways
  forward), or, asked to ``overwrite``, removes the whole old run first.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
import weakref
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "RunLock", "lock_run", "claim_run_dir", "holds_run", "LOCK_NAME", "RUN_MARKERS"]

LOCK_NAME = ".lock"
# A run worth keeping has a checkpoint (the latest or the previous one): it can be resumed, evaluated, exported.
RUN_MARKERS = ("checkpoint.json", "checkpoint.prev.json", "checkpoint.safetensors", "checkpoint.prev.safetensors")
# What a run writes before its first checkpoint: left by a run that died before it, and removed by the next one.
STARTED = ("config.json", "task.json")


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, fsync, then rename over ``path``.

    ``os.replace`` is atomic on POSIX and Windows: a reader or a crash sees the old file or the new one. A
    failure (read-only folder, full disk, permissions) leaves ``path`` as it was, removes the temporary file and
    raises :class:`UserError` naming ``path``.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; the previous version, if any, is kept") from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # an immutable or read-only folder: the temporary file was never created
            pass


class RunLock:
    """An exclusive lock on a run folder, held by this process; see :func:`lock_run`.

    Re-entrant within a process (``lock_run`` of a folder this process already holds returns the same lock with
    its count raised), so that a library caller may build several trainers on one folder in turn. Released
    when :meth:`release` has been called as often as it was taken, when the object is garbage-collected, or when
    the process ends (the operating system drops the flock).
    """

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self._fd, self._count = folder, fd, 1
        self._key = _key(folder)  # kept: the folder may be gone (or moved) by the time the lock is released

    def release(self) -> None:
        self._count -= 1
        if self._count <= 0 and self._fd >= 0:
            fd, self._fd = self._fd, -1
            _HELD.pop(self._key, None)
            try:
                os.ftruncate(fd, 0)  # an empty file: released cleanly (a PID left behind marks a crashed holder)
            except OSError:
                pass
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self._count = 0
        if getattr(self, "_fd", -1) >= 0:
            self.release()


_HELD: weakref.WeakValueDictionary[tuple[int, int], RunLock] = weakref.WeakValueDictionary()


def _key(folder: Path) -> tuple[int, int]:
    st = folder.stat()
    return st.st_dev, st.st_ino


def _holder(lock_path: Path) -> str:
    """The PID recorded in a lock file ('' when none), read a few times: the holder writes it just after locking."""
    for _ in range(20):
        try:
            text = lock_path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text.split()[0]
        time.sleep(0.01)
    return ""


def lock_run(run_dir: str | Path, purpose: str) -> RunLock:
    """Lock ``run_dir`` (created if needed) for writing, for as long as this process writes into it.

    ``purpose`` (e.g. ``"train"``) is recorded next to the PID for the message another process gets.

    Raises:
        UserError: another process holds the folder (the message names its PID and purpose), or the folder
            cannot be created or written (read-only, permissions, full disk).
    """
    folder = Path(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        held = _HELD.get(_key(folder))
    except OSError as err:
        raise UserError(f"run folder {folder}: cannot create it: {err.strerror or err}") from None
    if held is not None and held._fd >= 0:
        held._count += 1
        return held
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"run folder {folder} is not writable ({err.strerror or err}); nothing was changed") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = _holder(lock_path)
            who = f" (PID {pid})" if pid else ""
            raise UserError(f"run folder {folder} is in use by another rnnlab process{who}; wait for it to end, "
                            f"or choose another --name") from None
    previous = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    stale = previous.split()[0] if previous else ""
    try:
        record = f"{os.getpid()} {purpose}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError as err:
        os.close(fd)
        raise UserError(f"run folder {folder} is not writable ({err.strerror or err}); nothing was changed") from None
    if stale and stale != str(os.getpid()):
        warnings.warn(f"run folder {folder}: taking over the lock of PID {stale}, which ended without releasing "
                      f"it (killed or crashed)", UserWarning, stacklevel=2)
    lock = RunLock(folder, fd)
    _HELD[lock._key] = lock
    return lock


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run: a checkpoint written by ``rnnlab train`` (see :data:`RUN_MARKERS`)."""
    return any((Path(run_dir) / name).is_file() for name in RUN_MARKERS)


def claim_run_dir(run_dir: str | Path, *, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run; the caller holds its lock (:func:`lock_run`).

    A folder that holds a run (:func:`holds_run`) is refused, unless ``overwrite``: then everything in it but the
    lock file is removed (the checkpoints, metrics, forecasts, an exported ONNX model, any other file). The
    files of a run that died before its first checkpoint (nothing to resume) are removed with a notice. A folder
    that holds no run is used as it is.

    Raises:
        UserError: the folder holds a run and ``overwrite`` is false (the message says how to resume, replace it
            or choose another name), or it cannot be emptied.
    """
    folder = Path(run_dir)
    if holds_run(folder):
        if not overwrite:
            raise UserError(f"run folder {folder} already holds a run; continue it with `rnnlab train --resume "
                            f"{folder}`, replace it with --overwrite, or choose another --name")
    elif any((folder / name).is_file() for name in STARTED):
        warnings.warn(f"run folder {folder}: removing what a run left that stopped before its first checkpoint",
                      UserWarning, stacklevel=2)
    else:
        return
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as err:
            raise UserError(f"cannot remove {entry} from the run folder: {err.strerror or err}") from None
