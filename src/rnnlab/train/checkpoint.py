"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically; never unpickled.

A checkpoint is two files in the run folder:

* ``checkpoint.safetensors``: every tensor of :meth:`rnnlab.train.Trainer.state_dict` (model weights, optimizer
  moments, RNG states, the carried recurrent state), keyed by its path (``model/rnn.weight_ih_l0``);
* ``checkpoint.json``: the config, the step, the schedule and callback states, and the structure of the state
  dict, with each tensor replaced by ``{"__tensor__": key}``.

Each file is written to a temporary name in the same folder and renamed over the old one (``os.replace`` is atomic
on POSIX and Windows), tensors first: a crash leaves either the previous checkpoint or the new one. Both files
record the step, and loading refuses a mismatched pair. safetensors holds raw tensors only, so loading runs no
code (``torch.load`` of a pickle can).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import UserError

__all__ = ["save_checkpoint", "load_checkpoint", "encode_state", "decode_state", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint"


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


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(folder: str | Path, state: dict[str, Any], config: dict[str, Any],
                    name: str = CHECKPOINT_NAME) -> Path:
    """Write ``state`` (a trainer state dict) and the resolved ``config`` to ``folder/name.{safetensors,json}``.

    Returns the JSON path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    structure = encode_state(state, tensors)
    step = str(state.get("step", ""))
    _atomic_write(folder / f"{name}.safetensors",
                  lambda p: save_file(tensors, str(p), metadata={"step": step, "format": "rnnlab-checkpoint-1"}))
    doc = {"format": "rnnlab-checkpoint-1", "step": step, "config": config, "state": structure}
    _atomic_write(folder / f"{name}.json", lambda p: p.write_text(json.dumps(doc, indent=1), encoding="utf-8"))
    return folder / f"{name}.json"


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; ``path`` is the run folder or the ``.json`` file. Returns ``(state, config_dict)``.

    Raises:
        UserError: missing files, or a JSON and tensor file from different steps.
    """
    path = Path(path)
    json_path = path if path.suffix == ".json" else path / f"{CHECKPOINT_NAME}.json"
    tensor_path = json_path.with_suffix(".safetensors")
    if not json_path.is_file() or not tensor_path.is_file():
        raise UserError(f"checkpoint: expected {json_path.name} and {tensor_path.name} in {json_path.parent}, "
                        f"found {'neither' if not json_path.is_file() and not tensor_path.is_file() else 'one'}")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"checkpoint: {json_path} is not valid JSON: {err}") from None
    from safetensors import safe_open

    with safe_open(str(tensor_path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("step") != doc.get("step"):
        raise UserError(f"checkpoint: {tensor_path.name} is from step {meta.get('step')} but {json_path.name} "
                        f"from step {doc.get('step')} (interrupted write?)")
    tensors = load_file(str(tensor_path))
    return decode_state(doc["state"], tensors), doc["config"]


def restore_rng_dtype(state: dict[str, Any]) -> None:
    """RNG states must be uint8 tensors (safetensors keeps dtypes, this is a guard for hand-made files)."""
    for k, v in state.get("rng", {}).items():
        if isinstance(v, Tensor) and v.dtype != torch.uint8:
            raise UserError(f"checkpoint: RNG state {k} has dtype {v.dtype}, expected torch.uint8")
