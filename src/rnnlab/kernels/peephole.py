r"""The peephole LSTM's whole-sequence kernel (Gers & Schmidhuber 2000): compiled step loops, hand-written backward.

The reference maths is :func:`rnnlab.cellspec._peephole_step`; with ``a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``
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
gradient is scaled by ``1 - k_t``), and recorded cell states and gates (differentiable). Anything else (another
device or dtype, no compiler) is declined and runs on the reference loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from ..cellspec import PEEPHOLE_LSTM_SPEC
from ..sequence import SequenceResult, SequenceRun
from ._extension import load_extension
from .common import bias_sum, cpu_lengths, input_grads, projection, recurrent_weight_grad
from .reference import backward_through_loop, run_cell

__all__ = ["peephole_kernel"]

_DTYPES = (torch.float32, torch.float64)


def ops() -> Any:
    return torch.ops.rnnlab_fused


class _Peephole(torch.autograd.Function):
    """One layer-direction; inputs ``x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, h_mask, keep_h, keep_c,
    lengths, reverse, record``. Outputs ``Y, h_n, c_n`` and, when ``record``, ``C`` (T,B,H) and the activated
    gates (T,B,4H)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,  # type: ignore[override]
                h_mask, keep_h, keep_c, lengths, reverse, record):
        xw = projection(x, w_ih)  # (T, B, 4H), becomes the activated gates i, f, g, o
        wc = torch.stack([w_ci, w_cf, w_co])  # (3, H)
        h0c = h0.contiguous()
        Y, hn, cn, C = ops().peephole_forward(xw, bias_sum(w_ih, b_ih, b_hh), h0c, c0.contiguous(),
                                              w_hh.contiguous(), wc, h_mask, keep_h, keep_c, lengths, reverse,
                                              True)
        # the kernel's buffers, then the inputs as given (with their graph) for a double backward
        ctx.save_for_backward(x, h0c, c0, w_ih, w_hh, wc, xw, C, Y, h_mask, keep_h, keep_c, lengths, h0, b_ih, b_hh,
                              w_ci, w_cf, w_co)
        ctx.reverse, ctx.record = reverse, record
        ctx.has_b = (b_ih is not None, b_hh is not None)
        # Unused outputs (the recorded states in most runs) then come back as None, not as zeros to allocate.
        ctx.set_materialize_grads(False)
        return (Y, hn, cn, C, xw) if record else (Y, hn, cn)

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC=None, dgates=None):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, wc, gates, C, Y, h_mask, keep_h, keep_c, lengths, *given = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            h0, b_ih, b_hh, w_ci, w_cf, w_co = given
            return backward_through_loop(ctx, _peephole_loop, (
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, h_mask, keep_h, keep_c, lengths, ctx.reverse,
                ctx.record), (dY, dhn, dcn, dC, dgates) if ctx.record else (dY, dhn, dcn))
        if dC is not None or dgates is not None:  # the kernel takes both or neither
            dC = torch.zeros_like(C) if dC is None else dC.contiguous()
            dgates = torch.zeros_like(gates) if dgates is None else dgates.contiguous()
        dY = torch.zeros_like(Y) if dY is None else dY.contiguous()
        dhn = torch.zeros_like(h0) if dhn is None else dhn.contiguous()
        dcn = torch.zeros_like(h0) if dcn is None else dcn.contiguous()
        dG, dh0, dc0, db, dwc = ops().peephole_backward(dY, dhn, dcn, gates, C, c0.contiguous(), w_hh.contiguous(),
                                                        wc, h_mask, keep_h, keep_c, dC, dgates, lengths,
                                                        ctx.reverse)
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 3)
        dw_hh = None
        if ctx.needs_input_grad[4]:
            # the GEMM multiplied h_{t-1} * mask, so that is what W_hh's gradient sees
            prev, first = (Y, h0) if h_mask is None else (Y * h_mask, h0 * h_mask)
            dw_hh = recurrent_weight_grad(dG, prev, first, lengths, ctx.reverse)
        need = ctx.needs_input_grad
        return (dx, dh0 if need[1] else None, dc0 if need[2] else None, dw_ih, dw_hh,
                db if ctx.has_b[0] and need[5] else None, db if ctx.has_b[1] and need[6] else None,
                dwc[0] if need[7] else None, dwc[1] if need[8] else None, dwc[2] if need[9] else None,
                None, None, None, None, None, None)


def _peephole_loop(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                   b_hh: Tensor | None, w_ci: Tensor, w_cf: Tensor, w_co: Tensor, h_mask: Tensor | None,
                   keep_h: Tensor | None, keep_c: Tensor | None, lengths: Tensor | None, reverse: bool,
                   record: bool) -> tuple[Tensor | None, ...]:
    """:class:`_Peephole` on the reference loop of the cell's step (its double-backward route): its inputs, its
    outputs."""
    p = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh, "weight_ci": w_ci,
         "weight_cf": w_cf, "weight_co": w_co}
    spec = PEEPHOLE_LSTM_SPEC
    Y, (hn, cn), C, G = run_cell(spec.step, spec.gates, x, (h0, c0), p, reverse=reverse,  # type: ignore[misc]
                                 lengths=lengths, h_mask=h_mask, keep=(keep_h, keep_c), record=record)
    if not record:
        return Y, hn, cn
    return Y, hn, cn, C, torch.cat(list(G.values()), dim=2)  # type: ignore[arg-type,union-attr]


def _contiguous(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype).contiguous()


def peephole_kernel(run: SequenceRun) -> SequenceResult | None:
    """The :attr:`~rnnlab.cellspec.CellSpec.kernel` of :data:`~rnnlab.cellspec.PEEPHOLE_LSTM_SPEC`.

    Returns ``(outputs (T, B, H), (h_n, c_n), cell states (T, B, H) or None, {i, f, g, o: (T, B, H)} or None)``,
    equal to the reference loop of the peephole step up to float rounding (float32: ~1e-6), or ``None`` to
    decline a run on another device or dtype, or when the compiled kernels are not available.
    """
    x, p = run.x, run.p
    if x.device.type != "cpu" or x.dtype not in _DTYPES or not load_extension():
        return None
    h0, c0 = run.state  # type: ignore[misc]
    H = c0.size(-1)
    keep_h, keep_c = (tuple(run.keep) + (None, None))[:2]
    if keep_h is None and keep_c is not None:
        # zoneout on one state only: k = 0 is the plain update for the other (0 * s + 1 * s' = s')
        keep_h = torch.zeros_like(keep_c)
    elif keep_c is None and keep_h is not None:
        keep_c = torch.zeros_like(keep_h)
    h_mask = _contiguous(run.h_mask, x.dtype)
    keep_h, keep_c = _contiguous(keep_h, x.dtype), _contiguous(keep_c, x.dtype)
    lengths = cpu_lengths(run.lengths)
    w_ih, w_hh, b_ih, b_hh = p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")
    w_ci, w_cf, w_co = p["weight_ci"], p["weight_cf"], p["weight_co"]
    tensors = (x, h0, c0, *p.values())
    train = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    C = gates = None
    if train:
        outs = _Peephole.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, h_mask, keep_h, keep_c,
                               lengths, run.reverse, run.record)
        Y, hn, cn = outs[:3]
        if run.record:
            C, gates = outs[3:]
    else:
        with torch.no_grad():
            wc = torch.stack([w_ci, w_cf, w_co])  # (3, H)
            bias = bias_sum(w_ih, b_ih, b_hh)
            if run.record:  # the states and gates of every step are wanted: the training loop keeps them
                gates = projection(x, w_ih)  # (T, B, 4H)
                Y, hn, cn, C = ops().peephole_forward(gates, bias, h0.contiguous(), c0.contiguous(),
                                                      w_hh.contiguous(), wc, h_mask, keep_h, keep_c, lengths,
                                                      run.reverse, True)
            else:
                Y, hn, cn = ops().peephole_infer(x.contiguous(), w_ih.contiguous(), bias, h0.contiguous(),
                                                 c0.contiguous(), w_hh.contiguous(), wc, h_mask, keep_h, keep_c,
                                                 lengths, run.reverse)
    gate_dict = None
    if run.gates and gates is not None:
        gate_dict = {name: gates[..., k * H:(k + 1) * H] for k, name in enumerate("ifgo")}  # (T, B, H) each
    return Y, (hn, cn), C, gate_dict
