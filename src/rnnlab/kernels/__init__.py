"""The one dispatch: which code runs one layer-direction of a cell over a whole sequence.

A layer hands every layer-direction to :func:`run` as a :class:`rnnlab.sequence.SequenceRun`. This function is
the only place where a kernel is chosen:

1. the **reference loop** (:func:`rnnlab.kernels.reference.run`, wrapped by the step observer if one is active)
   when the backend is ``"reference"``, while torch.compile / torch.export / torch.jit.trace capture a layer with
   no backend pinned, under a torch.func transform or forward-mode AD, and for an empty batch;
2. otherwise the cell's own whole-sequence **kernel**, ``spec.kernel(seq)`` (for torch's cells the compiled loops
   of :mod:`rnnlab.kernels.fused`; for the variants :mod:`~rnnlab.kernels.layernorm` and
   :mod:`~rnnlab.kernels.peephole`), with a diagnostics gradient sink passed as ``seq.sink``; with the backend
   ``"torch"``, torch's own fused op instead (:mod:`rnnlab.kernels.native`: what torch.nn runs, for measuring
   against it on the same model);
3. where the kernel **declines** (it returns ``None``: another device or dtype, no compiler) or the cell has none,
   the reference loop again, with a warning given once per cell and reason.

The reference loop is also every compiled kernel's double-backward route
(:func:`rnnlab.kernels.reference.backward_through_loop`).

For a stream of one-step runs (generation: one character at a time), :func:`stepper` makes the same choice once
for the whole stream instead of once per step, and then runs each step on what it chose: the spec's ``stepper``
(the compiled inference op of torch's three cells, its weights prepared once) where :func:`run` would take the
cell's kernel, else :func:`run` itself.

The backend is, in order of precedence: the layer's ``backend=`` argument, the process-wide default set with
:func:`set_backend`, the environment variable ``RNNLAB_BACKEND``, and finally ``"fused"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ..sequence import GradientSink, SequenceResult, SequenceRun, State, Step
from . import fused, native, reference
from .common import covers, release_workspaces

__all__ = ["run", "stepper", "sampler", "set_backend", "get_backend", "available_backends", "BoundObserver",
           "capturing", "transformed", "register_backend", "resolve_backend", "release_workspaces"]

BACKENDS = ("fused", "reference", "torch")
_default: str | None = None
_warned: set[str] = set()


class BoundObserver(Protocol):
    """A step observer (:func:`rnnlab.layers.observe_steps`) bound to one layer-direction of one forward."""

    def wrap(self, step: Step, state: State) -> tuple[Step, State]:
        """The step function and initial state to run on the reference loop instead of ``step`` and ``state``."""
        ...

    def sink(self, seq: SequenceRun) -> tuple[GradientSink, State] | None:
        """A gradient sink (and the initial state to use) that lets the run keep its compiled kernel, or
        ``None``: observe it on the reference loop through :meth:`wrap`."""
        ...


def available_backends() -> list[str]:
    """Names accepted by ``backend=`` and :func:`set_backend`."""
    return sorted(BACKENDS) + sorted(_legacy)


def _check(name: str, where: str) -> str:
    if name not in BACKENDS and name not in _legacy:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {available_backends()}")
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` restores the automatic choice)."""
    global _default
    _default = None if name is None else _check(name, "rnnlab.set_backend")


def get_backend(name: str | None = None) -> str:
    """The backend a layer with ``backend=name`` uses now (``name`` checked; ``None``: the current default)."""
    if name is not None:
        return _check(name, "rnnlab backend")
    if _default is not None:
        return _default
    env = os.environ.get("RNNLAB_BACKEND")
    return _check(env, "RNNLAB_BACKEND") if env else "fused"


def capturing() -> bool:
    """True while torch.compile, torch.export (and so ONNX export) or torch.jit.trace records a forward.

    Capture needs every op to be traceable; the compiled kernels' C++ loops have no fake-tensor rule, so a layer
    with no pinned backend is captured through the reference loop (plain autograd ops, which torch.compile then
    fuses itself). Step observers are eager-mode diagnostics and are not consulted then either.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def transformed() -> bool:
    """True inside a torch.func transform (grad, vjp, jacrev, jvp, jacfwd, hessian, vmap, functional_call under
    one of them) or a forward-mode AD level (``torch.autograd.forward_ad.dual_level``).

    The compiled kernels' autograd Functions have neither ``setup_context`` nor ``jvp``/``vmap`` rules, so
    torch would refuse them there; the reference loop runs instead. Both checks read a flag (one C call and one
    module attribute, ~0.1 us a forward): the first is torch's own test in ``autograd.Function.apply``;
    ``forward_ad._current_level`` is -1 outside every ``dual_level`` (torch.compile guards on the same attribute).
    """
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def _backend_now(backend: str | None) -> str:
    """The backend a run with ``backend=`` takes at this moment: ``"reference"`` while a layer with no pinned
    backend is captured and under a transform (:func:`capturing`, :func:`transformed`), else
    :func:`get_backend`'s."""
    name = "reference" if backend is None and capturing() else get_backend(backend)
    return "reference" if transformed() else name


def run(spec: Any, seq: SequenceRun, backend: str | None = None,
        observer: BoundObserver | None = None) -> SequenceResult:
    """Run one layer-direction of the cell ``spec`` (a :class:`rnnlab.cellspec.CellSpec`) over ``seq``.

    Args:
        spec: the cell; ``seq.cell`` is set to it.
        seq: the sequence, its initial state, parameters and options (:class:`rnnlab.sequence.SequenceRun`).
        backend: ``"fused"``, ``"reference"``, ``"torch"`` or ``None`` (the current default, see
            :func:`get_backend`).
        observer: the active step observer bound to this layer-direction, or ``None``.

    Returns:
        :data:`rnnlab.sequence.SequenceResult`, the same (up to float rounding) whichever code ran.
    """
    seq = seq if seq.cell is spec else replace(seq, cell=spec)
    name = _backend_now(backend)
    wrap = None if observer is None else observer.wrap
    if name == "reference" or seq.x.size(1) == 0:
        # An empty batch has no work to fuse (the compiled loops assume B >= 1); the reference loop's plain torch
        # ops give torch.nn's results there and under every transform, for every cell and option.
        return reference.run(seq, wrap)
    kernel: Callable[[SequenceRun], SequenceResult | None] | None = spec.kernel
    if name == "torch":
        kernel = native.native_kernel
    elif name in _legacy:
        kernel = _legacy_kernel(_legacy[name], kernel)
    if observer is not None:
        # Only a cell's own compiled kernel feeds a sink (torch's op has no per-step gradients to hand over).
        feeds_sink = kernel is not None and kernel is spec.kernel and torch.is_grad_enabled() and covers(seq)
        hook = observer.sink(seq) if feeds_sink else None
        if hook is None:
            return reference.run(seq, wrap)
        sink, state = hook
        result = kernel(replace(seq, state=state, sink=sink))  # type: ignore[misc]
        if result is None:
            raise RuntimeError(f"rnnlab: {spec.name}'s kernel declined a run it had accepted a gradient sink for")
        sink.outputs(result[0].detach())
        return result
    result = None if kernel is None else kernel(seq)
    if result is None:
        _warn_reference_loop(spec.name, name, declined=kernel is not None)
        return reference.run(seq)
    return result


def stepper(spec: Any, seq: SequenceRun, backend: str | None = None) -> Callable[[Tensor, State], State]:
    """``(x (B, I), state) -> state``: one step at a time of the cell ``spec`` on ``seq.p``, for a stream of
    one-step runs like ``seq`` (generation: a character per call, every ``x`` and state of ``seq``'s dtype,
    device and batch size, called in the same grad mode). ``seq`` has no options (they are per sequence, or per
    step): ValueError otherwise.

    :func:`run` makes its choice for every run, and for one step of the main model its checks (~40-70 us of
    Python) cost as much as half the step's arithmetic. Here the choice is made once, from ``seq``: where
    :func:`run` would take the cell's kernel and the spec's ``stepper`` accepts ``seq`` (torch's three cells:
    their compiled inference op with the weights prepared once), each step is that op; otherwise each step is
    :func:`run` on a one-step :class:`~rnnlab.sequence.SequenceRun`, so the result is :func:`run`'s either way.
    """
    given = {"h_mask": seq.h_mask is not None, "keep": any(k is not None for k in seq.keep),
             "lengths": seq.lengths is not None, "record": seq.record, "gates": seq.gates, "sink": seq.sink is not None}
    options = [name for name, on in given.items() if on]
    if options:
        raise ValueError(f"rnnlab.kernels.stepper: one-step runs take no options, got {', '.join(options)}")
    seq = seq if seq.cell is spec else replace(seq, cell=spec)
    fast = None
    if _backend_now(backend) == "fused" and spec.stepper is not None and seq.x.size(1) > 0:
        fast = spec.stepper(seq)
    if fast is not None:
        return fast
    p = seq.p

    def step(x: Tensor, state: State) -> State:
        return run(spec, SequenceRun(x[None], state, p, cell=spec), backend)[1]

    return step


def sampler(spec: Any, seqs: list[SequenceRun], backend: str | None, table: Tensor, head_w: Tensor,
            head_b: Tensor | None) -> fused.Sampler | None:
    """Generation's whole loop compiled (:func:`rnnlab.kernels.fused.lstm_sampler`) for a stack of layers of the
    cell ``spec`` (``seqs``: each layer's first one-step run, without options) and a linear head, or ``None``:
    then the caller steps each layer by :func:`stepper` and draws in Python. Taken only where :func:`stepper` would
    take the spec's stepper for every layer, for torch's LSTM."""
    if spec.kernel is not fused.lstm_kernel or not seqs or seqs[0].x.size(1) == 0:
        return None
    if _backend_now(backend) != "fused":
        return None
    return fused.lstm_sampler(seqs, table, head_w, head_b)


def _warn_reference_loop(cell: str, backend: str, declined: bool) -> None:
    if backend == "torch":
        reason = f"torch's own op runs torch's cells without options, lengths or sinks, not this {cell} run"
    elif declined:
        reason = f"{cell}'s kernel does not cover this run (dtype, device or option)"
    else:
        reason = f"{cell} has no whole-sequence kernel"
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"{reason}, so it runs on the reference loop instead of the {backend!r} backend "
                      f"(slower; see docs/variants.md)", stacklevel=4)


# -- deprecated: the backend registry of rnnlab 0.1 (one release) --------------------------------------------------

# ``run_layer(mode, x, state, weights, *, reverse, lengths) -> (outputs, final_state)`` by name.
_legacy: dict[str, Callable[..., tuple]] = {}


def register_backend(name: str, run_layer: Callable[..., tuple], *, preferred: bool = False) -> None:
    """Deprecated: make ``run_layer`` selectable as ``backend=name`` for torch's cells without options.

    ``preferred`` is ignored (the default backend is ``"fused"`` unless :func:`set_backend` says otherwise).
    """
    warnings.warn("rnnlab.kernels.register_backend is deprecated and will be removed; a cell's whole-sequence "
                  "kernel is CellSpec.kernel (see docs/variants.md)", DeprecationWarning, stacklevel=2)
    _legacy[name] = run_layer


def _legacy_kernel(run_layer: Callable[..., tuple],
                   kernel: Callable[[SequenceRun], SequenceResult | None] | None
                   ) -> Callable[[SequenceRun], SequenceResult | None]:
    """A registered ``run_layer`` as a cell kernel: torch's cells without options, else the cell's own kernel."""

    def legacy(seq: SequenceRun) -> SequenceResult | None:
        mode = seq.cell.mode
        if mode is None or seq.h_mask is not None or any(k is not None for k in seq.keep) or seq.record \
                or seq.gates or seq.sink is not None:
            return None if kernel is None else kernel(seq)
        p = seq.p
        weights: tuple[Tensor | None, ...] = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
        weights += (p["weight_hr"],) if "weight_hr" in p else ()
        out, final = run_layer(mode, seq.x, seq.state, weights, reverse=seq.reverse, lengths=seq.lengths)
        return out, final, None, None

    return legacy


def resolve_backend(name: str | None) -> Callable[..., tuple]:
    """Deprecated: the ``run_layer(mode, x, state, weights, *, reverse, lengths)`` function of a backend."""
    warnings.warn("rnnlab.kernels.resolve_backend is deprecated and will be removed; use rnnlab.kernels.run",
                  DeprecationWarning, stacklevel=2)
    chosen = get_backend(name)
    if chosen in _legacy:
        return _legacy[chosen]
    return reference.run_layer if chosen == "reference" else fused.run_layer
