"""The types that layers and kernels share: one layer-direction's whole sequence, and what a kernel returns.

This module sits below :mod:`rnnlab.kernels` and imports nothing from rnnlab, so the kernels, the cell specs
(:mod:`rnnlab.cellspec`) and the layers can all use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

__all__ = ["State", "Step", "SequenceRun", "SequenceResult", "GradientSink", "hidden_of", "masked"]

# A cell's state: ``h`` ``(B, H_out)``, or a tuple such as ``(h, c)``.
State = Tensor | tuple[Tensor, ...]
# One time step bound to its weights: ``step(x_t, state) -> state``.
Step = Callable[[Tensor, State], State]


def hidden_of(state: State) -> Tensor:
    """The part of a state that is the cell's output: ``h`` (LSTM states are ``(h, c)``)."""
    return state[0] if isinstance(state, tuple) else state


def masked(h: Tensor, h_mask: Tensor | None) -> Tensor:
    """``h * h_mask`` (variational recurrent dropout), or ``h`` when there is no mask."""
    return h if h_mask is None else h * h_mask


class GradientSink(Protocol):
    """Receives the per-step states of one layer-direction and their total gradients, which a compiled kernel's
    backward forms anyway (the diagnostics read ``dL/dh_t`` at every step through it; see
    :func:`rnnlab.layers.observe_steps`)."""

    def forward(self, cells: Tensor | None, gates: Tensor | None = None) -> None:
        """Called in the forward with the detached cell states ``C`` ``(T, B, H)`` (LSTM) or ``None``, and the
        activated gates side by side (LSTM ``i, f, g, o`` ``(T, B, 4H)``; GRU ``r, z, n`` ``(T, B, 3H)``; the
        Elman cells' pre-activation ``(T, B, H)``), detached views of buffers the backward never writes."""
        ...

    def backward(self, dh: Tensor, dc: Tensor | None) -> None:
        """Called in the backward with the total ``dL/dh_t`` ``(T, B, H_out)`` of the state after every step (the
        output's own gradient plus everything from later steps) and, for an LSTM, ``dL/dc_t`` ``(T, B, H)`` (else
        ``None``); zeros at padding steps."""
        ...

    def outputs(self, y: Tensor) -> None:
        """The layer-direction's outputs ``(T, B, H_out)`` (the states ``h_t``), detached, after the forward."""
        ...


@dataclass(frozen=True)
class SequenceRun:
    """One layer-direction's whole sequence, as a layer hands it to :func:`rnnlab.kernels.run`.

    The random masks are drawn by the layer, the same way for a kernel and the reference loop, so one seed
    gives the same result on both.

    Attributes:
        x: ``(T, B, I)`` inputs, time-major.
        state: the initial state (a ``(B, H_out)`` tensor, or ``(h, c)``).
        p: this layer-direction's parameters by base name (``weight_ih``, ...; DropConnect already applied;
            a missing bias is absent).
        reverse: walk ``t = T-1 .. 0``.
        lengths: ``(B,)`` int64 on the CPU or ``None``; steps ``t >= lengths[b]`` keep row ``b``'s state and
            output zeros, as :func:`rnnlab.kernels.reference.recurrence`.
        h_mask: recurrent dropout, ``(B, H_out)`` (one mask for every step) multiplied into ``h`` where it enters
            ``W_hh``, or ``None``.
        keep: zoneout, one entry per state: ``None``, or ``(T, B, size)`` with ``state_t = keep_t * state_{t-1}
            + (1 - keep_t) * new_t`` (0/1 in training, the rate ``z`` in eval mode).
        record: also return every step's cell state (two-state cells) in time order.
        gates: also return every step's gate activations (the names of the cell's ``gate_names``).
        sink: a :class:`GradientSink` that a compiled kernel feeds with its per-step states and gradients (the
            diagnostics), or ``None``.
        cell: the :class:`rnnlab.cellspec.CellSpec` whose step this run follows; a kernel runs it on the
            reference loop (:func:`rnnlab.kernels.reference.run`) where it has no route of its own (double
            backward). :func:`rnnlab.kernels.run` fills it in.
    """

    x: Tensor
    state: State
    p: Mapping[str, Tensor]
    reverse: bool = False
    lengths: Tensor | None = None
    h_mask: Tensor | None = None
    keep: tuple[Tensor | None, ...] = ()
    record: bool = False
    gates: bool = False
    sink: GradientSink | None = None
    cell: Any = None


# ``(outputs (T, B, H_out), final state, cell states (T, B, H) or None, {gate: (T, B, H)} or None)``; values at
# padding steps (t >= lengths[b]) of the last two are arbitrary (the layer zeroes them).
SequenceResult = tuple[Tensor, State, Tensor | None, dict[str, Tensor] | None]
