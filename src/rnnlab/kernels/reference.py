"""The reference time loop: the readable truth every other path is tested against.

One function, :func:`recurrence`, owns the time axis for every cell type: it walks the steps forwards or
backwards and handles variable lengths by masking. Layers, directions and dropout are composed on top of it in
:mod:`rnnlab.layers`; a cell type only supplies its one-step function from :mod:`rnnlab.functional`.

Because it is a plain Python loop over autograd operations, it is also what :mod:`rnnlab.diagnostics`
instruments to read ``dL/dh_t`` at every step (a fused kernel hides those intermediate states), and the route of
every double backward: a compiled kernel's hand-written backward is not made of autograd operations, so under
``create_graph=True`` it differentiates this loop instead (:func:`backward_through_loop`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import torch
from torch import Tensor

from .. import functional as RF
from ..sequence import SequenceResult, SequenceRun, State, Step, hidden_of

__all__ = ["State", "Step", "recurrence", "step_function", "run_layer", "hidden_of", "zoneout", "option_step",
           "stack_trace", "run", "run_cell", "backward_through_loop"]

# A cell's step and gates as a CellSpec has them: ``(x_t, state, p, h_mask) -> state`` and ``-> {gate: (B, H)}``
# (typed loosely because a one-state cell's step takes a Tensor, not the union).
CellStep = Callable[..., State]
CellGates = Callable[..., dict[str, Tensor]]
# What ``option_step`` records per step walked: the new state and the gates (``None`` when not asked for).
Trace = list[tuple[State, dict[str, Tensor] | None]]


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


# -- the layer options on the loop, and the loop as the double-backward route ---------------------------------------


def zoneout(old: State, new: State, keep: Sequence[Tensor | None], t: int) -> State:
    """Zoneout (Krueger et al. 2017) at step ``t``: ``keep_t * old + (1 - keep_t) * new`` per state (exactly the
    old or the new value for a 0/1 training mask; the expectation for the eval-mode rate)."""
    olds, news = (old, new) if isinstance(new, tuple) else ((old,), (new,))
    out = [n if k is None else k[t] * o + (1 - k[t]) * n for o, n, k in zip(olds, news, keep)]
    return tuple(out) if isinstance(new, tuple) else out[0]


def option_step(cell_step: CellStep, p: Mapping[str, Tensor | None], h_mask: Tensor | None,
                keep: Sequence[Tensor | None], steps: int, reverse: bool, record: bool = False,
                gates: CellGates | None = None) -> tuple[Step, Trace]:
    """A cell's step bound to one layer-direction's parameters ``p`` (a missing bias absent or ``None``), with the
    layer options applied.

    The options are :class:`rnnlab.sequence.SequenceRun`'s: the recurrent-dropout mask ``h_mask`` (passed to the
    cell's step, which knows where ``h`` enters ``W_hh``), the zoneout keep tensors ``keep`` (one per state,
    ``(T, B, size)`` or ``None``) and, with ``record``, every step's new state and (with ``gates``, the cell's
    gate function) its gates, appended to the returned trace in the order the loop walks (``reverse``: from
    ``t = steps - 1`` down).
    """
    trace: Trace = []
    zoned = any(k is not None for k in keep)  # decided once, not per step
    order = iter(range(steps - 1, -1, -1) if reverse else range(steps))  # the loop walks t in this order

    def step(x_t: Tensor, s: State) -> State:
        new = cell_step(x_t, s, p, h_mask)
        if zoned:
            new = zoneout(s, new, keep, next(order))
        if record:
            trace.append((new, gates(x_t, s, p, h_mask) if gates is not None else None))
        return new

    return step, trace


def stack_trace(trace: Trace, reverse: bool) -> tuple[Tensor | None, dict[str, Tensor] | None]:
    """One direction's recorded cell states (two-state cells, else ``None``) and gates, each ``(T, B, H)`` in
    time order."""
    if reverse:
        trace = trace[::-1]
    first_state, first_gates = trace[0]
    c = torch.stack([s[1] for s, _ in trace]) if isinstance(first_state, tuple) and len(first_state) == 2 else None
    gates = None
    if first_gates is not None:  # every step has them then
        gates = {k: torch.stack([cast(dict, g)[k] for _, g in trace]) for k in first_gates}
    return c, gates


def run(seq: SequenceRun, wrap: Callable[[Step, State], tuple[Step, State]] | None = None) -> SequenceResult:
    """One layer-direction of ``seq.cell`` on the loop, with every option of ``seq``: the fallback of every
    kernel, the reference it is tested against, and its double-backward route.

    ``wrap(step, state) -> (step, state)``, when given, replaces the bound step and the initial state (a step
    observer, see :func:`rnnlab.layers.observe_steps`).

    Returns:
        :data:`rnnlab.sequence.SequenceResult`: ``(outputs (T, B, H_out), final state, cell states (T, B, H) or
        None, {gate: (T, B, H)} or None)``; cell states only with ``seq.record``, gates only with ``seq.gates``.
    """
    cell = seq.cell
    record = seq.record or seq.gates
    step, trace = option_step(cell.step, seq.p, seq.h_mask, seq.keep, seq.x.size(0), seq.reverse, record,
                              cell.gates if seq.gates else None)
    state = seq.state
    if wrap is not None:
        step, state = wrap(step, state)
    out, final = recurrence(step, seq.x, state, reverse=seq.reverse, lengths=seq.lengths)
    c, g = stack_trace(trace, seq.reverse) if record else (None, None)
    return out, final, c if seq.record else None, g


def backward_through_loop(ctx: Any, loop: Callable[..., Sequence[Tensor | None]], inputs: Sequence[Any],
                          grads: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """The backward of a compiled kernel's autograd Function under ``create_graph=True`` (double backward).

    A hand-written backward runs loops that autograd cannot see into, so its gradients would carry no graph: a
    second derivative would be missing, or silently zero. Instead, ``loop(*inputs)`` reruns the same
    layer-direction through the reference loop (``inputs`` are the Function's inputs in order, the saved ones,
    which keep their graph; it returns the Function's outputs in order, ``None`` for one it does not compute),
    and autograd differentiates that with ``create_graph=True``. The gradients then have a graph to the inputs,
    the weights and the incoming ``grads``, and the second derivatives are the reference loop's. It costs one more
    forward through the loop, and only here: a first-order backward never comes this way.

    Returns:
        One gradient per input (``None`` where ``ctx.needs_input_grad`` is false, or the input does not matter).

    Raises:
        RuntimeError: an output with an incoming gradient that ``loop`` does not compute (never a silent zero).
    """
    with torch.enable_grad():
        outs = loop(*inputs)
    pairs = []
    for k, (out, grad) in enumerate(zip(outs, grads, strict=True)):
        if grad is None or grad.numel() == 0:  # an unused output, or a placeholder for an option that is off
            continue
        if out is None:
            raise RuntimeError(f"rnnlab: double backward of {type(ctx).__name__}: the reference loop does not "
                               f"compute output {k}, which has a gradient")
        if out.requires_grad:  # else it depends on no input that needs a gradient
            pairs.append((out, grad))
    # Each tensor once, at its first position: autograd gives a tensor passed twice its whole gradient twice.
    wanted: dict[int, int] = {}
    for i, need in enumerate(ctx.needs_input_grad):
        if need and id(inputs[i]) not in wanted:
            wanted[id(inputs[i])] = i
    result: list[Tensor | None] = [None] * len(inputs)
    if pairs and wanted:
        got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted.values()],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
        for i, g in zip(wanted.values(), got):
            result[i] = g
    return tuple(result)


def run_cell(cell_step: CellStep, gates: CellGates | None, x: Tensor, state: State, p: Mapping[str, Tensor | None],
             *, reverse: bool = False, lengths: Tensor | None = None, h_mask: Tensor | None = None,
             keep: Sequence[Tensor | None] = (), record: bool = False) -> SequenceResult:
    """Deprecated (kept for one release): :func:`run` of a cell given by its step and gate functions. With
    ``record`` it returns the cell states and (with ``gates``) the gates, as rnnlab 0.1 did."""
    warnings.warn("rnnlab.kernels.reference.run_cell is deprecated; use rnnlab.kernels.reference.run",
                  DeprecationWarning, stacklevel=2)
    cell = SimpleNamespace(step=cell_step, gates=gates)
    seq = SequenceRun(x, state, cast(Mapping[str, Tensor], p), reverse, lengths, h_mask, tuple(keep), record,
                      record and gates is not None, cell=cell)
    return run(seq)
