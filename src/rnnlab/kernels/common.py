"""The glue every compiled kernel shares: the extension's ops, what the compiled loops cover, and the GEMMs over
all ``T*B`` rows that surround each per-step loop (the input projection, the weight and input gradients).

The recipe these serve is described in :mod:`rnnlab.kernels.fused`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..sequence import SequenceRun
from ._extension import load_extension

__all__ = ["ops", "compiled_available", "uses_compiled", "covers", "needs_grad", "keep_of", "projection",
           "bias_sum", "cpu_lengths", "dense", "grad_or_zeros", "recurrent_weight_grad", "input_grads"]

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


def projection(x: Tensor, w_ih: Tensor, *biases: Tensor | None) -> Tensor:
    """``X W_ih^T + sum(biases)`` for all steps at once: ``(T, B, I) -> (T, B, G)``, one GEMM, contiguous."""
    T, B, _ = x.shape
    bias = None
    for b in biases:
        if b is not None:
            bias = b if bias is None else bias + b
    x2 = x.reshape(T * B, -1)
    out = torch.addmm(bias, x2, w_ih.t()) if bias is not None else x2 @ w_ih.t()  # (T*B, G)
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
    """``dX = dG W_ih`` and ``dW_ih = dG^T X``, each one GEMM over all ``T*B`` rows, when needed."""
    T, B, G = dG.shape
    dG2 = dG.view(T * B, G)
    dx = (dG2 @ w_ih).view(T, B, -1) if ctx.needs_input_grad[i_x] else None
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
    if any(t.device.type != "cpu" or t.dtype != dtype for t in _tensors(seq)):
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
    """An output's incoming gradient, contiguous; zeros when it had none (contiguous even for an expanded ``like``)."""
    return like.new_zeros(like.shape) if g is None else g.contiguous()


