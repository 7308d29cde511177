"""Record every time step of every rnnlab recurrent layer while a model runs, on the reference loop.

A fused kernel (or ``torch.nn.LSTM``) hides the per-step states ``h_t``: a hook on its output sees ``dL/dh_t`` only
through the output itself, never the gradient that flows back through the recurrence. :func:`record` uses the
layers' hook :func:`rnnlab.layers.observe_steps`: inside the block every rnnlab layer runs on
:func:`rnnlab.kernels.reference.recurrence` with its own weights and its own step function (variants such as
zoneout included), and the probe wraps that step so that it keeps, for every step, the input ``x_t``, the state
before and the state after. Those kept tensors are nodes of the model's own autograd graph, so
``torch.autograd.grad(loss, trace.states)`` is the *total* ``dL/dh_t`` (direct path plus all later steps), and
nothing else about the forward pass changes (same maths, same outputs). Outside the block the hook costs nothing.

Forward passes run with gradients disabled (evaluation, ``torch.no_grad``) are not recorded.

``Recorder(model, kernel=True)`` (what training-time tracking uses) lets torch's cells without step-changing
options keep the compiled fused kernel: its forward already has every ``h_t`` (the output), ``c_t`` and the gate
activations, and its backward forms the total ``dL/dh_t`` and ``dL/dc_t`` of every step, so the layer hands them
over (:class:`rnnlab.sequence.GradientSink`) instead of running the reference loop. Such a trace has ``step_grads``
after a backward pass; its states are plain tensors outside the autograd graph (use the reference loop,
``kernel=False``, to differentiate through them, e.g. for Jacobians).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..kernels.reference import step_function
from ..sequence import GradientSink, State, Step
from ..layers import RNNBase, observe_steps

__all__ = ["LayerTrace", "Recording", "Recorder", "record", "rnn_layers", "state_tensors"]


def state_tensors(state: State) -> tuple[Tensor, ...]:
    """A state as a tuple: ``(h,)`` for RNN/GRU, ``(h, c)`` for an LSTM."""
    return state if isinstance(state, tuple) else (state,)


@dataclass
class LayerTrace:
    """Everything one layer-direction saw during one forward pass, in time order (index ``t`` = step ``t``).

    Attributes:
        name: ``"<module>.l<layer>[_reverse]"`` (``"l0"`` when the model is the layer itself), with ``"#k"``
            appended for the k-th repeated run of the same layer-direction in one recording (TBPTT windows).
        mode: torch's cell name (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``), or the cell's own name for
            cells without torch's weight layout.
        layer, direction: position in the stack (direction 1 is the reversed half of a bidirectional layer).
        weights: ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``, the layer's own parameters; ``None`` for other cells.
        step: the step function the layer ran (what Jacobians differentiate).
        initial: the state before the first step walked (step 0, or step T-1 in reverse). It is a tensor of the
            graph that requires grad, so ``dL/d(initial)`` is the gradient that reaches the start of the sequence.
        inputs: ``x_t`` ``(B, I)`` for t = 0..T-1. states: the state after step t. prev: the state before step t.
    """

    name: str
    mode: str
    layer: int
    direction: int
    weights: tuple[Tensor | None, ...] | None
    step: Step
    initial: State
    inputs: list[Tensor] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    prev: list[State] = field(default_factory=list)
    # Kernel traces only (see the module docstring): per state, the total dL/ds_t of every step, (T, B, size),
    # filled by the backward pass; None for traces of the reference loop (their states carry .grad instead).
    step_grads: list[Tensor | None] | None = None
    # Kernel traces only: the inputs (T, B, I) and, per state, the states after every step (T, B, size) as whole
    # tensors (``inputs``/``states`` are views of them), so that statistics need not re-stack T slices.
    input_seq: Tensor | None = None
    state_seq: tuple[Tensor, ...] | None = None
    # Kernel traces: what the kernel computed (LSTM ``i, f, g, o`` and the new cell ``c``; GRU ``r, z, n``; Elman
    # the pre-activation ``a``), each (T, B, H), read by the gate statistics instead of recomputing them.
    gate_seq: dict[str, Tensor] | None = None

    @property
    def steps(self) -> int:
        return len(self.states)

    @property
    def reverse(self) -> bool:
        return self.direction == 1


@dataclass
class Recording:
    """The traces of one recording, in the order the layers ran."""

    traces: list[LayerTrace] = field(default_factory=list)
    retain_grad: bool = False  # retain_grad() was called on every recorded state


def rnn_layers(model: nn.Module) -> list[tuple[str, RNNBase]]:
    """The rnnlab recurrent layers inside ``model`` (the model itself included), with their module names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RNNBase)]


class Recorder:
    """Start and stop recording explicitly (what :func:`record` does around a ``with`` block).

    Useful when the forward and backward happen in code you do not control, e.g. inside a trainer's step:
    ``start()`` before, ``stop()`` after. With ``retain_grad=True`` every recorded state keeps its ``.grad`` after
    an ordinary ``loss.backward()``, so :func:`rnnlab.diagnostics.gradflow.profile_from_grads` reads the profile
    from that same backward pass, at no extra forward or backward.

    With ``kernel=True`` layers that run on the compiled fused kernel keep it and fill
    :attr:`LayerTrace.step_grads` during the backward pass (the caller's ``backward()``, or the
    ``torch.autograd.grad`` of :func:`.gradflow.profile_from_recording`; see the module docstring): the profile is
    the same, at the cost of a plain step.

    Raises:
        ValueError: ``model`` contains no rnnlab recurrent layer.
        RuntimeError (from ``start``): another recording (or step observer) is active.
    """

    def __init__(self, model: nn.Module, *, retain_grad: bool = False, kernel: bool = False) -> None:
        layers = rnn_layers(model)
        if not layers:
            raise ValueError(f"rnnlab.diagnostics: expected a model containing rnnlab.RNN/LSTM/GRU layers, got "
                             f"{type(model).__name__} with none (torch.nn recurrent layers hide their per-step "
                             f"states)")
        self.names = {id(module): name for name, module in layers}
        self.kernel = kernel
        self.rec = Recording(retain_grad=retain_grad)
        self._block: AbstractContextManager | None = None

    @property
    def active(self) -> bool:
        return self._block is not None

    def start(self) -> Recording:
        block = observe_steps(self)
        try:
            block.__enter__()
        except RuntimeError as err:
            raise RuntimeError(f"rnnlab.diagnostics: record() blocks cannot be nested ({err})") from None
        self._block = block
        return self.rec

    def stop(self) -> Recording:
        if self._block is not None:
            block, self._block = self._block, None
            block.__exit__(None, None, None)
        return self.rec

    # the StepObserver protocol of rnnlab.layers.observe_steps
    def wrap(self, module: RNNBase, layer: int, direction: int, step: Step, state: State,
             steps: int) -> tuple[Step, State]:
        if id(module) not in self.names or not torch.is_grad_enabled():
            return step, state  # another model's layer, or a forward nobody will differentiate
        trace, state = self._new_trace(module, layer, direction, step, state, steps)
        return self._recording_step(trace, step, steps), state

    def sink(self, module: RNNBase, layer: int, direction: int, x: Tensor, state: State,
             steps: int) -> tuple[GradientSink, State] | None:
        """A kernel trace for a layer-direction on the compiled fused kernel (``kernel=True`` only)."""
        if not self.kernel or id(module) not in self.names:
            return None
        weights = tuple(module.layer_weights(layer, direction))
        trace, state = self._new_trace(module, layer, direction, step_function(module.mode, weights), state, 0)
        trace.input_seq = x.detach()
        trace.inputs = list(trace.input_seq.unbind(0))
        trace.step_grads = [None] * len(state_tensors(state))  # filled by the backward
        return _KernelTrace(trace), state

    def _new_trace(self, module: RNNBase, layer: int, direction: int, step: Step, state: State,
                   steps: int) -> tuple[LayerTrace, State]:
        mname = self.names[id(module)]
        label = f"l{layer}" + ("_reverse" if direction else "")
        try:
            weights: tuple[Tensor | None, ...] | None = tuple(module.layer_weights(layer, direction))
        except TypeError:  # a cell without torch's weight layout (e.g. LayerNormLSTM): no gate telemetry
            weights = None
        # A fresh leaf for an initial state that needs no grad (the zeros a layer makes), so that dL/dh_0 exists;
        # a state that already needs grad (passed in by the caller) is used as it is, keeping its graph.
        parts = tuple(s if s.requires_grad else s.detach().clone().requires_grad_() for s in state_tensors(state))
        if self.rec.retain_grad:
            for s in parts:
                if not s.is_leaf:
                    s.retain_grad()
        state = parts if isinstance(state, tuple) else parts[0]
        name = f"{mname}.{label}" if mname else label
        # A layer run again in the same recording (truncated-BPTT windows, a decoder loop) gets "#k" suffixes.
        repeats = sum(tr.name.split("#")[0] == name for tr in self.rec.traces)
        name = f"{name}#{repeats}" if repeats else name
        trace = LayerTrace(name, module.mode, layer, direction, weights, step,
                           state, [None] * steps, [None] * steps, [None] * steps)  # type: ignore[list-item]
        self.rec.traces.append(trace)
        return trace, state

    def _recording_step(self, trace: LayerTrace, step: Step, steps: int) -> Callable[[Tensor, State], State]:
        order = iter(range(steps - 1, -1, -1) if trace.reverse else range(steps))
        retain = self.rec.retain_grad

        def recording_step(x_t: Tensor, s: State) -> State:
            t = next(order)  # recurrence calls the step once per t, in walking order
            new = step(x_t, s)
            if retain:
                for tensor in state_tensors(new):
                    tensor.retain_grad()
            trace.inputs[t], trace.prev[t], trace.states[t] = x_t, s, new
            return new

        return recording_step


class _KernelTrace:
    """Fills a :class:`LayerTrace` from what the fused kernel hands over (a :class:`rnnlab.sequence.GradientSink`)."""

    def __init__(self, trace: LayerTrace) -> None:
        self.trace = trace
        self.cells: Tensor | None = None

    def forward(self, cells: Tensor | None, gates: Tensor | None = None) -> None:
        self.cells = cells
        tr = self.trace
        if gates is not None and tr.mode in ("LSTM", "GRU"):  # the kernel's activated gates (T, B, 4H or 3H)
            names = "ifgo" if tr.mode == "LSTM" else "rzn"
            tr.gate_seq = dict(zip(names, gates.chunk(len(names), dim=2)))
            if cells is not None:
                tr.gate_seq["c"] = cells
        elif gates is not None and tr.mode in ("RNN_TANH", "RNN_RELU"):  # the Elman pre-activation (T, B, H)
            tr.gate_seq = {"a": gates}

    def outputs(self, y: Tensor) -> None:
        tr = self.trace
        hs = list(y.unbind(0))  # h_t = the output of step t, (B, H_out) each
        if isinstance(tr.initial, tuple):
            if self.cells is None:
                raise RuntimeError(f"rnnlab.diagnostics: the fused kernel of {tr.name} gave no cell states")
            tr.states = list(zip(hs, self.cells.unbind(0)))
            tr.state_seq = (y, self.cells)
        else:
            tr.states = hs  # type: ignore[assignment]
            tr.state_seq = (y,)
        start = tuple(s.detach() for s in state_tensors(tr.initial))
        first: State = start if isinstance(tr.initial, tuple) else start[0]
        # the state before step t is the state after the step walked just before it
        if tr.reverse:
            tr.prev = tr.states[1:] + [first]
        else:
            tr.prev = [first] + tr.states[:-1]

    def backward(self, dh: Tensor, dc: Tensor | None) -> None:
        self.trace.step_grads = [dh, dc] if isinstance(self.trace.initial, tuple) else [dh]


@contextmanager
def record(model: nn.Module, *, retain_grad: bool = False, kernel: bool = False) -> Iterator[Recording]:
    """Run every rnnlab recurrent layer of ``model`` on the recording reference loop inside the block.

    Args:
        model: an ``rnnlab.RNN/LSTM/GRU`` (or any rnnlab recurrent layer) or a module containing them.
        retain_grad: keep ``.grad`` on every recorded state after a ``backward()`` (see :class:`Recorder`).
        kernel: let layers on the compiled fused kernel keep it (see :class:`Recorder`).

    Yields:
        A :class:`Recording` whose ``traces`` fill up as the model runs.

    Raises:
        ValueError: ``model`` contains no rnnlab recurrent layer (``torch.nn.LSTM`` cannot be instrumented).
        RuntimeError: a recording is already active.

    Example:
        >>> lstm = rnnlab.LSTM(3, 8)
        >>> with record(lstm) as rec:
        ...     out, _ = lstm(torch.randn(5, 2, 3))
        >>> grads = torch.autograd.grad(out[-1].sum(), [s[0] for s in rec.traces[0].states])
    """
    recorder = Recorder(model, retain_grad=retain_grad, kernel=kernel)
    rec = recorder.start()
    try:
        yield rec
    finally:
        recorder.stop()
