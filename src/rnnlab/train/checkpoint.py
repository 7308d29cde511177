"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically; never unpickled.

A checkpoint is two files in the run folder:

* ``checkpoint.safetensors``: every tensor of :meth:`rnnlab.train.Trainer.state_dict` (model weights, optimizer
  moments, RNG states, the carried recurrent state), keyed by its path (``model/rnn.weight_ih_l0``);
* ``checkpoint.json``: the config, the step, the schedule and callback states, and the structure of the state
  dict, with each tensor replaced by ``{"__tensor__": key}``.

Each file is written by :func:`rnnlab.train.runfolder.atomic_write` (a temporary name in the same folder, fsynced and
renamed over the old one), tensors first. Integrity: the JSON records the SHA-256 of the tensor file and
of itself, so a truncated or altered file is detected on load, as is a pair cut apart by a crash (both record
the step). Before a new checkpoint is written, the intact one is copied to ``checkpoint.prev.*``: wherever a
SIGKILL lands, an intact pair remains, and ``load_checkpoint(..., fallback=True)`` uses the previous one when
the latest is damaged (tested by killing training mid-write in tests/test_crash_safety.py). safetensors holds
raw tensors only, so loading runs no code; a pickle (``torch.save``/``.pt``) is refused without being opened as
one (``torch.load`` of a pickle can run arbitrary code).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from ..errors import UserError
from .runfolder import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "encode_state", "decode_state", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint"
PREVIOUS = ".prev"  # checkpoint.prev.{safetensors,json}: the one before, kept as the fallback
FORMAT = "rnnlab-checkpoint-2"  # adds the SHA-256 checksums
LEGACY_FORMATS = ("rnnlab-checkpoint-1",)  # read without checksums


def encode_state(obj: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}`` (filling ``tensors``) so the rest is JSON.

    Tuples and dicts with int keys (optimizer states) are tagged so :func:`decode_state` restores them exactly.
    """
    if isinstance(obj, Tensor):
        key = path or "tensor"
        # clone: safetensors refuses tensors that share storage (views of one buffer).
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) for k in obj):
            return {"__intkeys__": {str(k): encode_state(v, tensors, f"{path}/{k}") for k, v in obj.items()}}
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"checkpoint: cannot store a dict key of type {type(k).__name__} at {path!r}")
        return {k: encode_state(v, tensors, f"{path}/{k}" if path else k) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a value of type {type(obj).__name__} at {path!r}")


def decode_state(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__intkeys__" in obj:
            return {int(k): decode_state(v, tensors) for k, v in obj["__intkeys__"].items()}
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _doc_checksum(doc: dict[str, Any]) -> str:
    """SHA-256 of the JSON document without its ``checksum`` field, in a canonical form (sorted keys)."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


class _Damaged(Exception):
    """A checkpoint pair that is missing, truncated, altered or mismatched; the message says which and how."""


def _previous(json_path: Path) -> Path:
    return json_path.with_name(f"{json_path.stem}{PREVIOUS}.json")


def _read_pair(json_path: Path) -> tuple[bytes, bytes, dict[str, Any], dict[str, Tensor]]:
    """Read and verify one pair: ``(json bytes, tensor bytes, document, tensors)``; raises :class:`_Damaged`.

    Checks, in order: both files exist; the JSON parses and matches its own checksum; the tensor file's header
    is whole and names the JSON's step; the tensor file matches the SHA-256 the JSON recorded. The tensors are
    parsed from the verified bytes by safetensors (raw data, no code runs).
    """
    tensor_path = json_path.with_suffix(".safetensors")
    if not json_path.is_file() or not tensor_path.is_file():
        found = "neither" if not json_path.is_file() and not tensor_path.is_file() else "one"
        raise _Damaged(f"expected {json_path.name} and {tensor_path.name} in {json_path.parent}, found {found}")
    raw_doc, raw_tensors = json_path.read_bytes(), tensor_path.read_bytes()
    try:
        doc = json.loads(raw_doc.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise _Damaged(f"{json_path} is not valid JSON (truncated or not a checkpoint?): "
                       f"{str(err).splitlines()[0][:120]}") from None
    if not isinstance(doc, dict) or not {"format", "step", "config", "state"} <= set(doc):
        raise _Damaged(f"{json_path} is not an rnnlab checkpoint (missing format/step/config/state)")
    legacy = doc["format"] in LEGACY_FORMATS
    if not legacy and doc.get("checksum") != _doc_checksum(doc):
        raise _Damaged(f"{json_path} does not match its checksum (altered or damaged)")
    header_len = int.from_bytes(raw_tensors[:8], "little") if len(raw_tensors) >= 8 else -1
    if header_len < 0 or 8 + header_len > len(raw_tensors):
        raise _Damaged(f"{tensor_path.name} is truncated or not a safetensors file ({len(raw_tensors)} bytes)")
    try:
        meta = json.loads(raw_tensors[8:8 + header_len]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise _Damaged(f"{tensor_path.name} has an unreadable header (truncated or altered)") from None
    if meta.get("step") != doc.get("step"):
        raise _Damaged(f"{tensor_path.name} is from step {meta.get('step')} but {json_path.name} "
                       f"from step {doc.get('step')} (interrupted write?)")
    if not legacy and doc.get("tensors_sha256") != _sha256(raw_tensors):
        raise _Damaged(f"{tensor_path.name} does not match the SHA-256 checksum recorded in {json_path.name} "
                       f"(truncated or altered)")
    try:
        tensors = load_bytes(raw_tensors)
    except Exception as err:  # noqa: BLE001 - any parse failure of the tensor file is damage
        raise _Damaged(f"{tensor_path.name} cannot be read: {str(err).splitlines()[0][:120]}") from None
    return raw_doc, raw_tensors, doc, tensors


def _json_path(path: Path) -> Path:
    """The checkpoint's JSON path for a run folder, a ``.json`` or a ``.safetensors`` path.

    Any other file is refused before it is opened as anything but bytes: a ``.pt``/``.pth``/pickle file is never
    unpickled (unpickling runs code chosen by whoever wrote the file).
    """
    if path.suffix == ".json":
        return path
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        hint = ""
        if magic[:1] == b"\x80" or magic == b"PK\x03\x04":
            hint = ("; it looks like a pickle/torch.save file, and rnnlab never unpickles checkpoints (unpickling "
                    "can run arbitrary code): load it yourself only if you trust it, then save the weights with "
                    "safetensors")
        raise UserError(f"checkpoint: {path} is not an rnnlab checkpoint (expected a run folder or its "
                        f"{CHECKPOINT_NAME}.json){hint}")
    return path / f"{CHECKPOINT_NAME}.json"


def save_checkpoint(folder: str | Path, state: dict[str, Any], config: dict[str, Any],
                    name: str = CHECKPOINT_NAME) -> Path:
    """Write ``state`` (a trainer state dict) and the resolved ``config`` to ``folder/name.{safetensors,json}``.

    The intact checkpoint already there is first copied to ``name.prev.{safetensors,json}``; then the tensors and
    the JSON (which records the tensors' SHA-256 and its own) are each written atomically. At every instant at
    least one intact pair exists once a first checkpoint was written, whenever the process is killed.

    Returns the JSON path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stray in folder.glob(f".{name}*.tmp*"):  # left by a process killed mid-write
        stray.unlink(missing_ok=True)
    tensors: dict[str, Tensor] = {}
    structure = encode_state(state, tensors)
    step = str(state.get("step", ""))
    blob = save_bytes(tensors, metadata={"step": step, "format": FORMAT})
    doc = {"format": FORMAT, "step": step, "tensors_sha256": _sha256(blob), "config": config, "state": structure}
    doc["checksum"] = _doc_checksum(doc)
    json_path = folder / f"{name}.json"
    try:
        old_doc, old_tensors, _, _ = _read_pair(json_path)
    except _Damaged:
        pass  # nothing intact to keep: a damaged pair must never replace the intact previous one
    else:
        prev = _previous(json_path)
        atomic_write(prev.with_suffix(".safetensors"), old_tensors)
        atomic_write(prev, old_doc)
    atomic_write(json_path.with_suffix(".safetensors"), blob)
    atomic_write(json_path, json.dumps(doc, indent=1).encode("utf-8"))
    return json_path


def load_checkpoint(path: str | Path, *, fallback: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; ``path`` is the run folder or the ``.json`` file. Returns ``(state, config_dict)``.

    Both files are verified against the SHA-256 checksums written with them. With ``fallback=True`` a damaged
    checkpoint (truncated, altered, or a pair cut apart by a crash) is reported with a warning and the previous
    one (``checkpoint.prev.*``) is loaded instead; the CLI's resume, eval, generate and forecast do this.

    Raises:
        UserError: missing files, a damaged checkpoint (and, with ``fallback``, no intact previous one), or a
            file that is not an rnnlab checkpoint (a pickle is refused without being unpickled).
    """
    json_path = _json_path(Path(path))
    candidates = [json_path, _previous(json_path)] if fallback else [json_path]
    problems: list[str] = []
    for k, candidate in enumerate(candidates):
        try:
            _, _, doc, tensors = _read_pair(candidate)
        except _Damaged as err:
            problems.append(str(err))
            continue
        if k > 0:
            warnings.warn(f"checkpoint: {problems[0]}; using the previous checkpoint {candidate} "
                          f"(step {doc['step']})", UserWarning, stacklevel=2)
        return decode_state(doc["state"], tensors), doc["config"]
    nothing = not any(c.is_file() or c.with_suffix(".safetensors").is_file() for c in candidates)
    if len(problems) == 1 or nothing:
        raise UserError(f"checkpoint: {problems[0]}")
    raise UserError(f"checkpoint: no intact checkpoint in {json_path.parent}: {json_path.name}: {problems[0]}; "
                    f"{candidates[1].name}: {problems[1]}")


def restore_rng_dtype(state: dict[str, Any]) -> None:
    """RNG states must be uint8 tensors (safetensors keeps dtypes, this is a guard for hand-made files)."""
    for k, v in state.get("rng", {}).items():
        if isinstance(v, Tensor) and v.dtype != torch.uint8:
            raise UserError(f"checkpoint: RNG state {k} has dtype {v.dtype}, expected torch.uint8")
