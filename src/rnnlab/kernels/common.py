"""The glue every compiled kernel shares: the extension's ops, what the compiled loops cover, the GEMMs over
all ``T*B`` rows that surround each per-step loop (the input projection, the weight and input gradients), and the
autograd Functions' plumbing (the gradients their backward returns, their double-backward run on the loop).

The recipe these serve is described in :mod:`rnnlab.kernels.fused`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..sequence import SequenceRun, State
from . import reference
from ._extension import load_extension

__all__ = ["ops", "compiled_available", "uses_compiled", "release_workspaces", "workspace", "covers", "needs_grad",
           "keep_of", "projection", "bias_sum", "cpu_lengths", "dense", "grad_or_zeros", "recurrent_weight_grad",
           "input_grads", "takes", "op_options", "needed", "param_dict", "named_gates", "loop_outputs"]

COMPILED_DTYPES = (torch.float32, torch.float64)


def compiled_available() -> bool:
    """True when the compiled step loops are built and loaded (building them on the first call)."""
    return load_extension()


def uses_compiled(x: Tensor) -> bool:
    """Whether :func:`run_layer` takes the compiled path for an input like ``x`` (CPU, float32/float64)."""
    return x.device.type == "cpu" and x.dtype in COMPILED_DTYPES and load_extension()


def ops() -> Any:
    """The compiled ops (``torch.ops.rnnlab_fused``), loaded by :func:`compiled_available`."""
    return torch.ops.rnnlab_fused


def release_workspaces() -> int:
    """Let go of the buffers the compiled kernels keep between calls (their workspaces: every buffer of 4 MiB or
    more they allocate, at most 16 and 1 GiB in all; csrc/fused.cpp). The ones no tensor uses are freed now, the
    others when the tensors that use them go. Returns the bytes freed now: 0 if the kernels were never loaded.

    Like ``torch.cuda.empty_cache``, for a process that is done with recurrent layers and goes on to other work."""
    if load_extension.cache_info().currsize == 0 or not load_extension():
        return 0
    return int(ops().release_workspaces())


def workspace(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor from the compiled ops' workspaces (csrc/fused.cpp): one of 4 MiB or more is kept
    between calls instead of being page-faulted in anew (the training gates: 32 MiB at the main job's size), and
    handed out again only once no tensor uses it."""
    return ops().workspace(list(shape), dtype)


def projection(x: Tensor, w_ih: Tensor, *biases: Tensor | None) -> Tensor:
    """``X W_ih^T + sum(biases)`` for all steps at once: ``(T, B, I) -> (T, B, G)``, one GEMM, contiguous.

    The result is written into a :func:`workspace`."""
    T, B, _ = x.shape
    bias = None
    for b in biases:
        if b is not None:
            bias = b if bias is None else bias + b
    x2 = x.reshape(T * B, -1)
    out = workspace((T * B, w_ih.size(0)), x.dtype)  # (T*B, G)
    if bias is not None:
        torch.addmm(bias, x2, w_ih.t(), out=out)
    else:
        torch.mm(x2, w_ih.t(), out=out)
    return out.view(T, B, -1)


def bias_sum(w: Tensor, *biases: Tensor | None) -> Tensor:
    """The sum of the given biases (zeros of ``w.size(0)`` if none), contiguous, for the compiled gate loop."""
    present = [b for b in biases if b is not None]
    if not present:
        return w.new_zeros(w.size(0))
    return (present[0] + present[1] if len(present) == 2 else present[0]).contiguous()


def cpu_lengths(lengths: Tensor | None) -> Tensor | None:
    return None if lengths is None else lengths.to(device="cpu", dtype=torch.int64).contiguous()


def recurrent_weight_grad(dG: Tensor, Y: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """``dW_hh = sum_t dG_t^T h_{t-1}`` as two GEMMs over slices of the outputs (no (T, B, H) copy).

    ``h_{t-1}`` is the output of the previously processed step (``Y[t-1]``, or ``Y[t+1]`` in reverse) except at
    each row's first step, where it is ``h0``. In reverse with lengths a row's first step is ``lengths[b]-1`` and
    ``Y[lengths[b]]`` is padding (zeros), so the main term adds nothing there and the ``h0`` term supplies it.
    Padding steps have ``dG = 0`` and contribute nothing.
    """
    T, B, G = dG.shape
    if reverse:
        main, prev = dG[:-1], Y[1:]
        first_step = torch.full((B,), T - 1, dtype=torch.long) if lengths is None else lengths - 1
        dG_first = dG[first_step, torch.arange(B)]  # (B, G)
    else:
        main, prev = dG[1:], Y[:-1]
        dG_first = dG[0]
    dw = dG_first.t() @ h0  # (G, P)
    if T > 1:
        dw = dw.addmm_(main.reshape(-1, G).t(), prev.reshape(-1, prev.size(-1)))
    return dw


def input_grads(ctx, dG: Tensor, x: Tensor, w_ih: Tensor, i_x: int, i_w: int) -> tuple[Tensor | None, Tensor | None]:
    """``dX = dG W_ih`` (into a :func:`workspace`) and ``dW_ih = dG^T X``, each one GEMM over all ``T*B`` rows, when
    needed."""
    T, B, G = dG.shape
    dG2 = dG.view(T * B, G)
    dx = None
    if ctx.needs_input_grad[i_x]:
        dx = torch.mm(dG2, w_ih, out=workspace((T * B, w_ih.size(1)), dG.dtype)).view(T, B, -1)
    dw = dG2.t() @ x.reshape(T * B, -1) if ctx.needs_input_grad[i_w] else None
    return dx, dw



def _tensors(seq: SequenceRun) -> Iterable[Tensor]:
    yield seq.x
    yield from (seq.state if isinstance(seq.state, tuple) else (seq.state,))
    yield from seq.p.values()
    if seq.h_mask is not None:
        yield seq.h_mask
    yield from (k for k in seq.keep if k is not None)


def covers(seq: SequenceRun) -> bool:
    """Whether the compiled loops take ``seq``: every tensor on the CPU in one float32/float64 dtype, and the
    extension built (else a kernel declines and the run takes the reference loop)."""
    dtype = seq.x.dtype
    if dtype not in COMPILED_DTYPES:
        return False
    # is_cpu, not device.type: building a device object for each of a dozen tensors cost 20 us per call
    if any(not t.is_cpu or t.dtype != dtype for t in _tensors(seq)):
        return False
    return compiled_available()


def needs_grad(seq: SequenceRun) -> bool:
    """Whether the run is recorded for a backward (grad mode on and some tensor requires a gradient)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(seq))


def keep_of(seq: SequenceRun, k: int) -> Tensor | None:
    """The zoneout keep tensor of state ``k`` (contiguous), or ``None``."""
    keep = seq.keep[k] if k < len(seq.keep) else None
    return None if keep is None else keep.contiguous()


def dense(t: Tensor | None) -> Tensor | None:
    """``t.contiguous()``, or ``None`` (the compiled ops take contiguous buffers; optional inputs may be absent)."""
    return None if t is None else t.contiguous()


def grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    """An output's incoming gradient, contiguous; zeros when it had none (contiguous even for an expanded ``like``).
    A copy (of an expanded gradient, e.g. ``sum``'s) goes into a :func:`workspace`."""
    if g is None:
        return workspace(like.shape, like.dtype).zero_()
    return g if g.is_contiguous() else workspace(g.shape, g.dtype).copy_(g)


def takes(seq: SequenceRun, feeds_sink: bool = False) -> bool:
    """Whether a compiled kernel runs ``seq``: :func:`covers` it, its cell is given (``seq.cell``, whose step the
    double backward runs on the reference loop) and, unless the kernel feeds one, there is no gradient sink."""
    return seq.cell is not None and (feeds_sink or seq.sink is None) and covers(seq)


def op_options(seq: SequenceRun, n_states: int) -> tuple[Any, ...]:
    """The options of ``seq`` as the compiled ops take them, in their order: ``h_mask, keep (one per state; None
    where a state has no zoneout), lengths, reverse``."""
    return (dense(seq.h_mask), *(keep_of(seq, k) for k in range(n_states)), cpu_lengths(seq.lengths), seq.reverse)


def needed(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """What an autograd Function's backward returns: ``grads[k]`` for its ``k``-th input where
    ``ctx.needs_input_grad`` asks for it, else ``None`` (also for the inputs after ``grads``: masks, flags)."""
    need = ctx.needs_input_grad
    return tuple(grads[k] if k < len(grads) and need[k] else None for k in range(len(need)))


def param_dict(names: Iterable[str], tensors: Iterable[Tensor | None]) -> dict[str, Tensor]:
    """An autograd Function's weight inputs by parameter name (``SequenceRun.p`` of its double-backward run),
    without the absent ones (a missing bias is ``None`` there)."""
    return {name: t for name, t in zip(names, tensors, strict=True) if t is not None}


def named_gates(names: str, G: Tensor | None, on: bool) -> dict[str, Tensor] | None:
    """The recorded gates by name, ``(T, B, H)`` views of ``G`` ``(T, B, len(names) * H)`` (a kernel keeps them
    side by side in the cell's order), or ``None`` when they were not asked for (``on`` false)."""
    return dict(zip(names, G.chunk(len(names), dim=2))) if on and G is not None else None


def loop_outputs(seq: SequenceRun) -> tuple[Tensor, State, Tensor | None, Tensor | None]:
    """``seq`` on the reference loop (:func:`rnnlab.kernels.reference.run`), with the gates side by side
    ``(T, B, G)`` in the cell's order as a kernel returns them: an autograd Function's double-backward route
    (:func:`rnnlab.kernels.reference.backward_through_loop`)."""
    Y, final, C, G = reference.run(seq)
    return Y, final, C, None if G is None else torch.cat(list(G.values()), dim=2)
