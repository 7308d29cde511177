"""Argument checks shared by the public modules.

torch.nn is the specification: each check raises the exception class torch.nn raises for the same mistake, and its
message starts with the component's name and torch's own phrase, so that code catching torch's error (class or
message) catches ours; our detail (expected vs got, what to do) follows. ``tests/test_conformance.py`` runs every
case on torch.nn and on rnnlab.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import cast

from torch import Tensor


def check_type(owner: str, name: str, value: object, kind: type) -> None:
    # bool is an int subclass: reject it where an int is wanted, so LSTM(10, True) is not a hidden size of 1
    # (torch.nn accepts that by accident: LSTM(10, True) builds, RNN(10, True) fails inside torch.empty).
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{owner}: {name} should be of type {kind.__name__}, got: {type(value).__name__}")


def check_positive_int(owner: str, name: str, value: object) -> None:
    """A layer's size (torch.nn's RNNBase: TypeError for a non-int, ValueError for ``<= 0``)."""
    check_type(owner, name, value, int)
    if value <= 0:  # type: ignore[operator]
        raise ValueError(f"{owner}: {name} must be greater than zero, got {value}")


def check_cell_size(owner: str, name: str, value: object) -> None:
    """A cell's size: torch.nn's cells accept 0 (an empty state or input) and fail in ``torch.empty`` (a
    RuntimeError) on a negative size."""
    check_type(owner, name, value, int)
    if value < 0:  # type: ignore[operator]
        raise RuntimeError(f"{owner}: Trying to create tensor with negative dimension {value}: {name} must be "
                           f">= 0, got {value}")


def check_probability(owner: str, name: str, value: object) -> None:
    if (not isinstance(value, numbers.Number) or isinstance(value, bool)
            or not 0 <= value <= 1):  # type: ignore[operator]
        raise ValueError(
            f"{owner}: {name} should be a number in range [0, 1] representing the probability of an element "
            f"being zeroed, got {value!r}")


def check_input_dtype(owner: str, input: Tensor, weight: Tensor) -> None:
    """A layer's input has the dtype of its weights (torch.nn's ``RNNBase.check_input``: ValueError)."""
    if input.dtype != weight.dtype:
        raise ValueError(
            f"{owner}: RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})")
    check_device(owner, "input", input, weight)


def check_same_dtype(owner: str, name: str, tensor: Tensor, weight: Tensor) -> None:
    """A cell's input or state, or a layer's state, has the dtype of the weights.

    torch.nn has no check of its own here: its matrix product fails with a RuntimeError ("mat1 and mat2 must have
    the same dtype"), so ours is a RuntimeError with that phrase.
    """
    if tensor.dtype != weight.dtype:
        raise RuntimeError(
            f"{owner}: {name} and the weights must have the same dtype, but got {tensor.dtype} and {weight.dtype} "
            f"(convert the tensor with .to({weight.dtype}) or the module with .to({tensor.dtype}))")
    check_device(owner, name, tensor, weight)


def check_device(owner: str, name: str, tensor: Tensor, weight: Tensor) -> None:
    if tensor.device != weight.device:
        raise RuntimeError(
            f"{owner}: {name} must be on the parameters' device: expected {weight.device}, got {tensor.device}")


def given_states(owner: str, hx: object, n_states: int) -> list[Tensor] | None:
    """The states passed as ``hx`` to a cell or layer, as a list (``None`` when omitted): one Tensor, or for cells
    with a cell state a tuple or list ``(h, c)`` of Tensors. torch.nn's LSTM raises a RuntimeError for another number
    of states; for the wrong types it trips over an AttributeError or IndexError, where we raise a TypeError."""
    if hx is None:
        return None
    if n_states == 1 and not isinstance(hx, Tensor):
        raise TypeError(f"{owner}: hx must be a Tensor, got {type(hx).__name__}")
    if n_states == 2 and not isinstance(hx, (tuple, list)):
        raise TypeError(f"{owner}: hx must be tuple of Tensors (h_0, c_0), got {type(hx).__name__}")
    given: list[Tensor] = []
    for k, s in enumerate([hx] if n_states == 1 else cast(Sequence[object], hx)):
        if not isinstance(s, Tensor):
            raise TypeError(f"{owner}: hx[{k}] must be a Tensor, got {type(s).__name__}")
        given.append(s)
    if len(given) != n_states:
        raise RuntimeError(f"{owner}: expects two hidden states (h_0, c_0), got {len(given)}")
    return given
