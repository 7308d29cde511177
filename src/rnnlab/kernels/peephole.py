r"""The peephole LSTM's whole-sequence kernel (Gers & Schmidhuber 2000): compiled step loops, hand-written backward.

The reference maths is the cell's step (:data:`rnnlab.cellspec.PEEPHOLE_LSTM_SPEC`); with ``a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``
in torch's ``i, f, g, o`` order and diagonal peephole weights ``w_ci, w_cf, w_co``:

.. math::
    i = \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f = \sigma(a_f + w_{cf} \odot c_{t-1}), \quad g = \tanh(a_g)

    c_t = f \odot c_{t-1} + i \odot g, \quad o = \sigma(a_o + w_{co} \odot c_t), \quad h_t = o \odot \tanh(c_t)

The recipe is the plain fused LSTM's (:mod:`rnnlab.kernels.fused`): the input projection ``X W_ih^T`` of every
step as one GEMM; per step (``csrc/peephole.cpp``) one recurrent GEMM accumulated into it and one pointwise loop
that also applies the peepholes. The backward per step, with ``dh_t, dc_t`` the total gradients of the state
and primes for pre-activation gradients:

.. math::
    do' = dh_t \tanh(c_t)\, o(1-o), \quad
    dc_t \mathrel{+}= dh_t\, o (1 - \tanh^2 c_t) + do' w_{co}

    di' = dc_t\, g\, i(1-i), \quad df' = dc_t\, c_{t-1} f(1-f), \quad dg' = dc_t\, i (1-g^2)

    dc_{t-1} = dc_t f + di' w_{ci} + df' w_{cf}, \quad dh_{t-1} = dG_t W_{hh}

    dw_{ci} \mathrel{+}= \textstyle\sum_b di' c_{t-1}, \quad dw_{cf} \mathrel{+}= \sum_b df' c_{t-1}, \quad
    dw_{co} \mathrel{+}= \sum_b do' c_t

and after the loop ``dX = dG W_ih``, ``dW_ih = dG^T X``, ``dW_hh = dG^T H_{prev}``, ``db = sum dG`` over all
``T*B`` rows at once.

Covered: float32/float64 on the CPU, lengths (packed input), reverse, recurrent dropout (``h_mask``: the GEMM
sees ``h_{t-1} * mask``, so ``dh_{t-1} = (dG_t W_hh) * mask`` and ``dW_hh = dG^T (H_{prev} * mask)``), zoneout
(``s_t = k_t s_{t-1} + (1 - k_t) s'_t`` for ``h`` and ``c``, so ``ds_{t-1} += k_t ds_t`` and the cell's
gradient is scaled by ``1 - k_t``; a state without zoneout has ``k = 0``), and recorded cell states and gates
(differentiable). Declined (``None``, the run then takes the reference loop): what
:func:`rnnlab.kernels.common.covers` rejects (a tensor on another device, in another dtype or in a dtype other
than the input's; no compiled extension), a run without its cell (``seq.cell``, the spec whose step the double
backward runs on the loop), and a run with a gradient sink (``seq.sink``: the loops here do not form the per-step
``dL/dh_t`` the diagnostics read).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..sequence import SequenceResult, SequenceRun, masked
from .common import (bias_sum, grad_or_zeros, input_grads, loop_outputs, named_gates, needed, needs_grad,
                     op_options, ops, param_dict, projection, recurrent_weight_grad, takes)
from .reference import backward_through_loop

__all__ = ["peephole_kernel"]

# The parameters' names in the order of the Function's weight inputs.
_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf", "weight_co")


def _peephole_op(xw: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                 b_hh: Tensor | None, w_ci: Tensor, w_cf: Tensor, w_co: Tensor, h_mask: Tensor | None,
                 keep_h: Tensor | None, keep_c: Tensor | None, lengths: Tensor | None, reverse: bool
                 ) -> tuple[Tensor, list[Tensor]]:
    """The compiled forward over the projection ``xw`` (overwritten with the activated gates): the peephole
    weights stacked ``(3, H)`` as the ops take them, and the op's ``Y, h_n, c_n, C``."""
    wc = torch.stack([w_ci, w_cf, w_co])
    return wc, ops().peephole_forward(xw, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(),
                                      w_hh.contiguous(), wc, h_mask, keep_h, keep_c, lengths, reverse, True)


class _Peephole(torch.autograd.Function):
    """One layer-direction; inputs ``x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, h_mask, keep_h, keep_c,
    lengths, reverse, record, cell``. Outputs ``Y, h_n, c_n`` and, when ``record``, the cell states ``C`` (T,B,H)
    and the activated gates (T,B,4H) (differentiable; the backward keeps them anyway). ``cell`` is the run's cell
    spec, whose step the double backward runs on the reference loop (:func:`_peephole_loop`)."""

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        tensors, (reverse, record, cell) = inputs[:14], inputs[14:]
        xw = projection(inputs[0], inputs[3])  # x W_ih^T (T, B, 4H), becomes the activated gates i, f, g, o
        wc, (Y, hn, cn, C) = _peephole_op(xw, *tensors[1:], reverse)
        # the inputs as given (with their graph, for a double backward), then the kernel's buffers
        ctx.save_for_backward(*tensors, wc, xw, C, Y)
        ctx.reverse, ctx.record, ctx.cell = reverse, record, cell
        # Unused outputs (the recorded states in most runs) then come back as None, not as zeros to allocate.
        ctx.set_materialize_grads(False)
        # C and the gates are outputs only when recorded, so that autograd tracks no output nobody reads (returning
        # them always looked 3-5% slower at S4 in one A/B, but identical code varied by 4% there: not settled)
        return (Y, hn, cn, C, xw) if record else (Y, hn, cn)

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC=None, dgates=None):  # type: ignore[override]
        saved = ctx.saved_tensors
        inputs, (wc, gates, C, Y) = saved[:14], saved[14:]
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return backward_through_loop(ctx, _peephole_loop, (*inputs, ctx.reverse, ctx.record, ctx.cell),
                                         (dY, dhn, dcn, dC, dgates)[:5 if ctx.record else 3])
        x, h0, c0, w_ih, w_hh, *_, h_mask, keep_h, keep_c, lengths = inputs
        if dC is not None or dgates is not None:  # the kernel takes both or neither
            dC, dgates = grad_or_zeros(dC, C), grad_or_zeros(dgates, gates)
        dG, dh0, dc0, db, dwc = ops().peephole_backward(grad_or_zeros(dY, Y), grad_or_zeros(dhn, h0),
                                                        grad_or_zeros(dcn, c0), gates, C, c0.contiguous(),
                                                        w_hh.contiguous(), wc, h_mask, keep_h, keep_c, dC, dgates,
                                                        lengths, ctx.reverse)
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 3)
        dw_hh = None
        if ctx.needs_input_grad[4]:
            # the GEMM multiplied h_{t-1} * mask, so that is what W_hh's gradient sees
            dw_hh = recurrent_weight_grad(dG, masked(Y, h_mask), masked(h0, h_mask), lengths, ctx.reverse)
        return needed(ctx, dx, dh0, dc0, dw_ih, dw_hh, db, db, *dwc)


def _peephole_loop(x: Tensor, h0: Tensor, c0: Tensor, *rest: Any) -> tuple[Tensor | None, ...]:
    """:class:`_Peephole` on the reference loop of ``cell``'s step (its double-backward route): its inputs, its
    outputs (the cell states and gates with ``record``)."""
    weights, (h_mask, keep_h, keep_c, lengths, reverse, record, cell) = rest[:7], rest[7:]
    run = SequenceRun(x, (h0, c0), param_dict(_PARAMS, weights), reverse, lengths, h_mask, (keep_h, keep_c),
                      record, record, cell=cell)
    Y, (hn, cn), C, G = loop_outputs(run)  # type: ignore[misc]
    return (Y, hn, cn, C, G) if record else (Y, hn, cn)


def peephole_kernel(seq: SequenceRun) -> SequenceResult | None:
    """The :attr:`~rnnlab.cellspec.CellSpec.kernel` of :data:`~rnnlab.cellspec.PEEPHOLE_LSTM_SPEC`.

    Returns ``(outputs (T, B, H), (h_n, c_n), cell states (T, B, H) or None, {i, f, g, o: (T, B, H)} or None)``,
    equal to the reference loop of the peephole step up to float rounding (float32: ~1e-6), or ``None`` where it
    declines (see the module docstring: not covered, no ``seq.cell``, or a gradient sink).
    """
    if not takes(seq):
        return None
    h0, c0 = seq.state  # type: ignore[misc]
    inputs = (seq.x, h0, c0, *(seq.p.get(name) for name in _PARAMS), *op_options(seq, 2))
    record = seq.record or seq.gates
    C = gates = None
    if needs_grad(seq):
        Y, hn, cn, *recorded = _Peephole.apply(*inputs, record, seq.cell)
        if record:
            C, gates = recorded
    elif record:  # inference, with the states and gates of every step: the training loop keeps them
        with torch.no_grad():
            gates = projection(seq.x, seq.p["weight_ih"])  # (T, B, 4H)
            _, (Y, hn, cn, C) = _peephole_op(gates, *inputs[1:])
    else:  # inference: the input projected a few steps at a time, nothing kept
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, *options = inputs
        with torch.no_grad():
            Y, hn, cn = ops().peephole_infer(x.contiguous(), w_ih.contiguous(), bias_sum(w_ih, b_ih, b_hh),
                                             h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
                                             torch.stack([w_ci, w_cf, w_co]), *options)
    return Y, (hn, cn), C if seq.record else None, named_gates("ifgo", gates, seq.gates)
