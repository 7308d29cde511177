"""Record every time step of every rnnlab recurrent layer while a model runs, on the reference loop.

Limitation: a layer that runs its own per-step loop instead of a backend (options that change the per-step
maths: zoneout, recurrent dropout in training, ``return_all_states``; cells without torch's weight layout) is
not recorded; :meth:`Recording.missing` lists such layers and the gradient profile refuses to be partial.

A fused kernel (or ``torch.nn.LSTM``) hides the per-step states ``h_t``: a hook on its output sees ``dL/dh_t`` only
through the output itself, never the gradient that flows back through the recurrence. :func:`record` runs every
``rnnlab.RNN/LSTM/GRU`` inside a model on :func:`rnnlab.kernels.reference.recurrence` with the layer's own
weights (``layer.layer_weights(layer, direction)``), and wraps the one-step function so that it keeps, for every
step, the input ``x_t``, the state before and the state after. Those kept tensors are nodes of the model's own
autograd graph, so ``torch.autograd.grad(loss, trace.states)`` is the *total* ``dL/dh_t`` (direct path plus all
later steps), and nothing else about the forward pass changes (same maths, same outputs).

How it reaches the layers without changing them: for the duration of the ``with`` block a backend named
:data:`PROBE_BACKEND` is registered in :mod:`rnnlab.kernels` and each layer's ``backend`` attribute points at it;
both are restored on exit, so the probe costs nothing when unused and never shows in ``available_backends()``
outside the block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import kernels
from ..kernels.reference import State, recurrence, step_function
from ..layers import RNNBase

__all__ = ["PROBE_BACKEND", "LayerTrace", "Recording", "record", "rnn_layers", "state_tensors"]

PROBE_BACKEND = "_diagnostics_probe"
_active = threading.local()


def state_tensors(state: State) -> tuple[Tensor, ...]:
    """A state as a tuple: ``(h,)`` for RNN/GRU, ``(h, c)`` for an LSTM."""
    return state if isinstance(state, tuple) else (state,)


@dataclass
class LayerTrace:
    """Everything one layer-direction saw during one forward pass, in time order (index ``t`` = step ``t``).

    Attributes:
        name: ``"<module>.l<layer>[_reverse]"`` (``"l0"`` when the model is the layer itself).
        mode: torch's cell name (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``).
        layer, direction: position in the stack (direction 1 is the reversed half of a bidirectional layer).
        weights: ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``, the layer's own parameters.
        initial: the state before the first step walked (step 0, or step T-1 in reverse). It is a tensor of the
            graph that requires grad, so ``dL/d(initial)`` is the gradient that reaches the start of the sequence.
        inputs: ``x_t`` ``(B, I)`` for t = 0..T-1. states: the state after step t. prev: the state before step t.
    """

    name: str
    mode: str
    layer: int
    direction: int
    weights: tuple[Tensor | None, ...]
    initial: State
    inputs: list[Tensor] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    prev: list[State] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.states)

    @property
    def reverse(self) -> bool:
        return self.direction == 1


@dataclass
class Recording:
    """The traces of one ``with record(model)`` block, in the order the layers ran."""

    traces: list[LayerTrace] = field(default_factory=list)
    # id(w_ih) -> (name, layer, direction); w_ih, not w_hh, because weight dropout replaces w_hh per forward
    names: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)  # layers whose cell has no torch weight layout

    def missing(self) -> list[str]:
        """Layer-directions of the model that ran no step on the recording loop (see :func:`record`)."""
        seen = {tr.name for tr in self.traces}
        return [name for name, _, _ in self.names.values() if name not in seen] + self.unsupported


def rnn_layers(model: nn.Module) -> list[tuple[str, RNNBase]]:
    """The rnnlab recurrent layers inside ``model`` (the model itself included), with their module names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RNNBase)]


def _probe_run_layer(mode: str, x: Tensor, state: State, weights: Sequence[Tensor | None], *,
                     reverse: bool = False, lengths: Tensor | None = None) -> tuple[Tensor, State]:
    """The reference ``run_layer``, with a step function that keeps what it sees in the active recording."""
    rec: Recording | None = getattr(_active, "recording", None)
    if rec is None or id(weights[0]) not in rec.names:
        return recurrence(step_function(mode, weights), x, state, reverse=reverse, lengths=lengths)
    name, layer, direction = rec.names[id(weights[0])]
    # A fresh leaf for an initial state that needs no grad (the zeros a layer makes), so that dL/dh_0 exists;
    # a state that already needs grad (passed in by the caller) is used as it is, keeping its graph.
    state = tuple(s if s.requires_grad else s.detach().clone().requires_grad_(torch.is_grad_enabled())
                  for s in state_tensors(state))
    state = state if mode == "LSTM" else state[0]
    trace = LayerTrace(name, mode, layer, direction, tuple(weights), state)
    T = x.size(0)
    trace.inputs = [None] * T  # type: ignore[list-item]
    trace.states = [None] * T  # type: ignore[list-item]
    trace.prev = [None] * T  # type: ignore[list-item]
    order = iter(range(T - 1, -1, -1) if reverse else range(T))
    step = step_function(mode, weights)

    def recording_step(x_t: Tensor, s: State) -> State:
        t = next(order)  # recurrence calls the step once per t, in walking order
        new = step(x_t, s)
        trace.inputs[t], trace.prev[t], trace.states[t] = x_t, s, new
        return new

    rec.traces.append(trace)
    return recurrence(recording_step, x, state, reverse=reverse, lengths=lengths)


@contextmanager
def _temporary_backend() -> Iterator[None]:
    # rnnlab.kernels has no unregister; remove our entry by hand so that the probe never outlives the block
    # (tests that parametrize over available_backends() must not pick it up).
    kernels.register_backend(PROBE_BACKEND, _probe_run_layer)
    try:
        yield
    finally:
        kernels._BACKENDS.pop(PROBE_BACKEND, None)
        if PROBE_BACKEND in kernels.DEFAULT_ORDER:
            kernels.DEFAULT_ORDER.remove(PROBE_BACKEND)


@contextmanager
def record(model: nn.Module) -> Iterator[Recording]:
    """Run every rnnlab recurrent layer of ``model`` on the recording reference loop inside the block.

    Args:
        model: an ``rnnlab.RNN/LSTM/GRU`` or any module containing them.

    Yields:
        A :class:`Recording` whose ``traces`` fill up as the model runs.

    Raises:
        ValueError: ``model`` contains no rnnlab recurrent layer (``torch.nn.LSTM`` cannot be instrumented).
        RuntimeError: a recording is already active in this thread.

    Example:
        >>> lstm = rnnlab.LSTM(3, 8)
        >>> with record(lstm) as rec:
        ...     out, _ = lstm(torch.randn(5, 2, 3))
        >>> grads = torch.autograd.grad(out[-1].sum(), [s[0] for s in rec.traces[0].states])
    """
    layers = rnn_layers(model)
    if not layers:
        raise ValueError(f"rnnlab.diagnostics: expected a model containing rnnlab.RNN/LSTM/GRU layers, got "
                         f"{type(model).__name__} with none (torch.nn recurrent layers hide their per-step states)")
    if getattr(_active, "recording", None) is not None:
        raise RuntimeError("rnnlab.diagnostics: record() blocks cannot be nested")
    rec = Recording()
    for mname, module in layers:
        for layer in range(module.num_layers):
            for direction in range(module.num_directions):
                label = f"l{layer}" + ("_reverse" if direction else "")
                label = f"{mname}.{label}" if mname else label
                try:
                    rec.names[id(module.layer_weights(layer, direction)[0])] = (label, layer, direction)
                except TypeError:  # a cell without torch's weight layout has no kernel to stand in for
                    rec.unsupported.append(label)
    saved = [(module, module.backend) for _, module in layers]
    with _temporary_backend():
        for module, _ in saved:
            module.backend = PROBE_BACKEND
        _active.recording = rec
        try:
            yield rec
        finally:
            _active.recording = None
            for module, backend in saved:
                module.backend = backend
