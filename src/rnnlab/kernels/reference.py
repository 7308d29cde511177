"""The reference time loop: the readable truth every other path is tested against.

One function, :func:`recurrence`, owns the time axis for every cell type: it walks the steps forwards or
backwards and handles variable lengths by masking. Layers, directions and dropout are composed on top of it in
:mod:`rnnlab.layers`; a cell type only supplies its one-step function from :mod:`rnnlab.functional`.

Because it is a plain Python loop over autograd operations, it is also what :mod:`rnnlab.diagnostics`
instruments to read ``dL/dh_t`` at every step (a fused kernel hides those intermediate states).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import torch
from torch import Tensor

from .. import functional as RF

__all__ = ["State", "Step", "recurrence", "step_function", "run_layer", "hidden_of"]

State = Tensor | tuple[Tensor, ...]
Step = Callable[[Tensor, State], State]


def hidden_of(state: State) -> Tensor:
    """The part of a state that is the cell's output: ``h`` (LSTM states are ``(h, c)``)."""
    return state[0] if isinstance(state, tuple) else state


def _select(mask: Tensor, new: State, old: State) -> State:
    """Per batch row: ``new`` where ``mask`` (B, 1) is true, else ``old`` (a finished sequence keeps its state)."""
    if isinstance(new, tuple):
        return tuple(torch.where(mask, n, o) for n, o in zip(new, old))
    return torch.where(mask, new, cast(Tensor, old))


def recurrence(
    step: Step,
    x: Tensor,
    state: State,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``step`` over the time axis of ``x``.

    Args:
        step: ``step(x_t, state) -> state`` for one time step (e.g. a partial of :func:`rnnlab.functional.lstm_step`).
        x: inputs ``(T, B, I)``.
        state: initial state, a tensor ``(B, H)`` or a tuple of them.
        reverse: walk from ``t = T-1`` down to 0 (the backward direction of a bidirectional layer).
        lengths: optional ``(B,)`` integer lengths, ``1 <= lengths[b] <= T``. Steps ``t >= lengths[b]`` leave row
            ``b``'s state unchanged and output zeros, as ``pad_packed_sequence`` would; in reverse, each row
            therefore starts from its initial state at its own last step.

    Returns:
        ``(outputs, final_state)``: outputs ``(T, B, H_out)`` stacked in time order, and the last state.
    """
    # unbind, not x[t]: the backward of T separate x[t] selects allocates a full (T, B, I) zero tensor per step,
    # which makes backward O(T^2); unbind's backward is a single stack.
    inputs = x.unbind(0)
    valid = None
    if lengths is not None:
        steps_idx = torch.arange(x.size(0), device=x.device).unsqueeze(1)  # (T, 1)
        valid = (steps_idx < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1).unbind(0)  # T x (B, 1)
    outputs: list[Tensor | None] = [None] * len(inputs)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    for t in order:
        new_state = step(inputs[t], state)
        if valid is None:
            state = new_state
            outputs[t] = hidden_of(state)
        else:
            state = _select(valid[t], new_state, state)
            outputs[t] = torch.where(valid[t], hidden_of(state), 0.0)
    return torch.stack(outputs), state  # type: ignore[arg-type]


def step_function(mode: str, weights: Sequence[Tensor | None]) -> Step:
    """The one-step function of a cell type (torch's mode names) bound to one layer-direction's weights.

    ``weights`` is ``(w_ih, w_hh, b_ih, b_hh)``, plus ``w_hr`` for a projected LSTM; biases may be ``None``.
    """
    w_ih, w_hh = cast(Tensor, weights[0]), cast(Tensor, weights[1])  # never None; only biases and w_hr may be
    if mode == "LSTM":
        return partial(RF.lstm_step, w_ih=w_ih, w_hh=w_hh, b_ih=weights[2], b_hh=weights[3],
                       w_hr=weights[4] if len(weights) > 4 else None)
    if mode == "GRU":
        return partial(RF.gru_step, w_ih=w_ih, w_hh=w_hh, b_ih=weights[2], b_hh=weights[3])
    if mode in ("RNN_TANH", "RNN_RELU"):
        return partial(RF.rnn_step, w_ih=w_ih, w_hh=w_hh, b_ih=weights[2], b_hh=weights[3],
                       nonlinearity="tanh" if mode == "RNN_TANH" else "relu")
    raise ValueError(f"rnnlab: unknown RNN mode {mode!r}; expected 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'")


def run_layer(
    mode: str,
    x: Tensor,
    state: State,
    weights: Sequence[Tensor | None],
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """One layer, one direction, with the reference loop (the signature every backend implements)."""
    return recurrence(step_function(mode, weights), x, state, reverse=reverse, lengths=lengths)
