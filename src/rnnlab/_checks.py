"""Argument checks shared by the public modules. Every message names the component and says expected vs got."""

from __future__ import annotations

import numbers

from torch import Tensor


def check_type(owner: str, name: str, value: object, kind: type) -> None:
    # bool is an int subclass: reject it where an int is wanted, so LSTM(10, True) is not a hidden size of 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{owner}: {name} should be of type {kind.__name__}, got: {type(value).__name__}")


def check_positive_int(owner: str, name: str, value: object) -> None:
    check_type(owner, name, value, int)
    if value <= 0:  # type: ignore[operator]
        raise ValueError(f"{owner}: {name} must be greater than zero, got {value}")


def check_probability(owner: str, name: str, value: object) -> None:
    if (not isinstance(value, numbers.Number) or isinstance(value, bool)
            or not 0 <= value <= 1):  # type: ignore[operator]
        raise ValueError(
            f"{owner}: {name} should be a number in range [0, 1] representing the probability of an element "
            f"being zeroed, got {value!r}")


def check_dtype_device(owner: str, name: str, tensor: Tensor, like: Tensor) -> None:
    """``tensor`` must be floating point with the dtype and device of the parameter ``like``."""
    if not tensor.is_floating_point():
        raise TypeError(f"{owner}: {name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dtype != like.dtype:
        raise TypeError(
            f"{owner}: {name} dtype must match the parameters: expected {like.dtype}, got {tensor.dtype} "
            f"(convert the module with .to({tensor.dtype}) or the tensor with .to({like.dtype}))")
    if tensor.device != like.device:
        raise RuntimeError(
            f"{owner}: {name} must be on the parameters' device: expected {like.device}, got {tensor.device}")
