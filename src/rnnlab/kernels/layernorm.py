r"""Whole-sequence kernels of the layer-normalised LSTM and GRU (:attr:`rnnlab.cellspec.CellSpec.kernel`).

The cells (Ba, Kiros & Hinton 2016, section 3.1; ``LN`` normalises each row over its features, eps 1e-5):

.. math::
    \text{LSTM:}\quad a_t &= \underbrace{LN(W_{ih} x_t)\,\gamma_{ih} + b}_{s_t} + LN(W_{hh} (h_{t-1} m))\,\gamma_{hh},
    \qquad [i, f, g, o] = [\sigma, \sigma, \tanh, \sigma](a_t) \\
    c'_t &= f c_{t-1} + i g, \qquad h'_t = o \tanh(LN(c'_t)\,\gamma_c + \beta_c) \\
    \text{GRU:}\quad s_t &= LN(W_{ih} x_t)\,\gamma_{ih} + b_{ih}, \qquad
    [u_r, u_z, u_n] = LN(W_{hh} (h_{t-1} m))\,\gamma_{hh} + b_{hh} \\
    r &= \sigma(s_r + u_r), \quad z = \sigma(s_z + u_z), \quad n = \tanh(s_n + r u_n), \quad
    h'_t = (1 - z) n + z h_{t-1}

with ``m`` the recurrent-dropout mask (ones without it) and zoneout ``h_t = k_t h_{t-1} + (1 - k_t) h'_t`` (the
same for ``c``; ``k = 0`` without it).

How it is split (the fused backend's recipe, :mod:`rnnlab.kernels.fused`): the input projection
``xw = X W_ih^T`` is one GEMM over all ``T*B`` rows; everything else runs in the compiled loop
(``csrc/layernorm.cpp``): per step one GEMM ``hw = (h_{t-1} m) W_{hh}^T``, then per row the layer norms of
``xw_t`` and ``hw``, the gates and the cell (for the LSTM also the layer norm of ``c'``). Its hand-written
backward walks the steps in reverse with, per row, the layer-norm derivative

.. math::
    y = n\gamma + \beta,\; n = (x - \mu)\,\rho \;\Rightarrow\;
    \partial x = \rho\,(\partial n - \overline{\partial n} - n\,\overline{\partial n \cdot n}),
    \quad \partial n = \partial y\,\gamma,\; \partial\gamma \mathrel{+}= \partial y\, n,\;
    \partial\beta \mathrel{+}= \partial y

(``ρ = 1/sqrt(var + eps)``, bars are row means), applied to the cell's ``LN(c')`` (LSTM), to ``LN(hw)`` and to
``LN(xw)``, and ``∂h_{t-1} += (∂hw_t W_{hh}) m`` as one GEMM per step. It returns ``∂xw`` for every step, so
that ``∂X = ∂xw W_{ih}`` and ``∂W_{ih} = ∂xw^T X`` are GEMMs over all rows, as in the plain fused backward;
``∂W_{hh} = Σ_t ∂hw_t^T (h_{t-1} m)`` is summed inside the loop, one GEMM per chunk of about 256 rows (a small
reused buffer instead of a ``(T, B, G)`` one). The input half's layer norm runs in the loop too, rather than as
one ``F.layer_norm`` over all rows with autograd doing its backward: that needed two more ``(T, B, G)`` buffers
(the normalised input and its gradient) and their passes (1.55x the plain fused LSTM at S1 in one run of
``benchmarks/variants.py``). The activated gates (and the LSTM's ``tanh(LN(c')γ_c + β_c)``) are kept by the
forward for the backward in small runs (a gate buffer of at most :data:`KEEP_GATES_BYTES`), and the backward then
writes ``∂xw`` over them; larger runs recompute them in the backward from the two saved normalised halves.

Cost at small sizes is mostly memory, not arithmetic: the forward writes three ``(T, B, G)`` buffers where the
plain LSTM writes one, and a first write to memory that is not in cache costs more than the maths of a row
(removing a 400 KB copy saved as much as removing the row statistics of both halves). Measured 2026-11-27
(``benchmarks/variants.py --sizes S4 S1 --rounds 9``, forward + backward, 1 thread, CPU-time medians, ratio to
the plain fused layer in the same run; six runs at S4, three at S1, load average 0.8-1.0 on the shared 2-core
machine): LayerNormLSTM 1.20-1.28x at S4 (B=8, T=50, H=64; the previous kernels 1.23-1.35x alternately with
them) and 1.04-1.28x at S1 (B=64, T=100, H=256; S1's medians of 9 single calls vary that much between runs);
LayerNormGRU 1.09-1.18x at S4. The same-process A/B against the previous kernels
(``benchmarks/ab_layernorm.py --rev <older> --rounds 11``): new/old 0.90 (LSTM) and 0.94 (GRU) at S4, 1.01 and
0.99 at S1.

The recorded cell states (``record``, ``return_all_states``: the LSTM's ``c_t``, which the backward keeps anyway)
and gates (``gates``, ``return_gates``: the activated ``i, f, g, o`` / ``r, z, n``, a ``(T, B, G)`` buffer
written then, or kept for the backward in small runs) are outputs of the same autograd function; their own gradients join in the backward loop:
``∂c_t`` is added to the carried ``∂L/∂c_t``, and a gate's ``∂`` times its activation's derivative to the
pre-activation gradient (for the GRU's ``n`` also on through ``r u_n`` to ``r``).

Declined (``None``, the run then takes the reference loop): what :func:`rnnlab.kernels.common.covers` rejects
(a tensor on another device, in another dtype or in a dtype other than the input's; no compiled extension), a run
without its cell (``seq.cell``, the spec whose step the double backward runs on the loop), and a run with a
gradient sink (``seq.sink``: the loops here do not form the per-step ``dL/dh_t`` the diagnostics read).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..sequence import SequenceResult, SequenceRun
from .common import (bias_sum, dense, grad_or_zeros, input_grads, loop_outputs, named_gates, needed, needs_grad,
                     op_options, ops, param_dict, projection, takes)
from .reference import backward_through_loop

__all__ = ["ln_lstm_kernel", "ln_gru_kernel"]

# A run whose (T, B, G) gate buffer is at most this large keeps its activated gates for the backward (the forward
# writes them, as the plain fused LSTM does) instead of the backward recomputing them from the two normalised
# halves (an exp and a division per gate and row, about a third of the backward loop at H=64). Measured on the
# compiled ops alone, 1 thread: at S4 (400 KB) the backward 0.82x for a forward 1.03x, and LayerNormLSTM in
# variants.py-like interleaved rounds 1.21-1.24x the plain LSTM kept vs 1.27-1.29x recomputed; at S1 (26 MB, a
# fresh mapping page-faulted on every call) the forward 1.29x for a backward 0.94x, so large runs recompute.
KEEP_GATES_BYTES = 1 << 20

# The parameters' names in the order of the Functions' weight inputs.
_LSTM_PARAMS = ("weight_ih", "weight_hh", "bias", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")
_GRU_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight")


def _keep_gates(xw: Tensor, gates: bool) -> bool:
    return gates or xw.numel() * xw.element_size() <= KEEP_GATES_BYTES


def _gates_for_backward(ctx: Any, A: Tensor | None) -> tuple[Tensor | None, bool]:
    """The kept gates for this backward and whether its ``dXW`` may overwrite them (saving a fresh ``(T, B, G)``
    buffer). Gates kept for the backward alone are overwritten by the first backward; a second one through the
    same graph (``retain_graph``) gets ``None`` and recomputes them from the normalised halves."""
    if not ctx.gates_free:
        return A, False
    if ctx.gates_used:
        return None, False
    ctx.gates_used = True
    return A, True


def _ln_lstm_op(xw: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None, g_ih: Tensor,
                g_hh: Tensor, g_c: Tensor, b_c: Tensor, mask: Tensor | None, keep_h: Tensor | None,
                keep_c: Tensor | None, lengths: Tensor | None, reverse: bool, *, train: bool, gates: bool
                ) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """The compiled LSTM forward over the projection ``xw`` (normalised in place): the parameters as the ops take
    them (contiguous, the bias summed) and the op's outputs (see ``csrc/layernorm.cpp``)."""
    params = (w_hh.contiguous(), bias_sum(w_ih, bias), g_ih.contiguous(), g_hh.contiguous(), g_c.contiguous(),
              b_c.contiguous())
    return params, ops().ln_lstm_forward(xw, h0.contiguous(), c0.contiguous(), *params, mask, keep_h, keep_c,
                                         lengths, reverse, train, gates)


def _ln_gru_op(xw: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
               g_ih: Tensor, g_hh: Tensor, mask: Tensor | None, keep_h: Tensor | None, lengths: Tensor | None,
               reverse: bool, *, train: bool, gates: bool) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """The compiled GRU forward (see :func:`_ln_lstm_op`)."""
    params = (w_hh.contiguous(), bias_sum(w_ih, b_ih), bias_sum(w_hh, b_hh), g_ih.contiguous(), g_hh.contiguous())
    return params, ops().ln_gru_forward(xw, h0.contiguous(), *params, mask, keep_h, lengths, reverse, train, gates)


class _LNLSTM(torch.autograd.Function):
    """A LayerNormLSTM layer-direction; inputs ``x, h0, c0, w_ih, w_hh, bias, g_ih, g_hh, g_c, b_c, mask,
    keep_h, keep_c, lengths, reverse, gates, cell``; outputs ``Y (T, B, H), h_n, c_n``, the cell states
    ``C (T, B, H)`` and the activated gates ``(T, B, 4H)`` when ``gates`` or when the forward keeps them for the
    backward (:data:`KEEP_GATES_BYTES`; else an empty tensor). ``cell`` is the run's cell spec, whose step the
    double backward runs on the reference loop (:func:`_ln_lstm_loop`)."""

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        tensors, (reverse, gates, cell) = inputs[:14], inputs[14:]
        xw = projection(inputs[0], inputs[3])  # x W_ih^T (T, B, 4H), becomes LN(xw) without its gain
        keep = _keep_gates(xw, gates)  # the gates, returned or kept for the backward (else it recomputes them)
        params, (Y, hn, cn, NHW, RX, RH, NC, RC, C, GS, TY) = _ln_lstm_op(xw, *tensors[1:], reverse, train=True,
                                                                            gates=keep)
        # the inputs as given (with their graph, for a double backward), then the kernel's buffers
        ctx.save_for_backward(*tensors, *params, xw, RX, NHW, RH, NC, RC, C, Y, GS if keep else None,
                              TY if keep else None)
        ctx.reverse, ctx.gates, ctx.cell = reverse, gates, cell
        # gates kept for the backward alone: its dXW may overwrite them (once, see _gates_for_backward)
        ctx.gates_free, ctx.gates_used = keep and not gates, False
        ctx.set_materialize_grads(False)  # no zeros passes for the unused outputs (C, the gates, often h_n)
        return Y, hn, cn, C, GS

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC, dGS):  # type: ignore[override]
        saved = ctx.saved_tensors
        inputs, params, (NX, RX, NHW, RH, NC, RC, C, Y, A, TY) = saved[:14], saved[14:20], saved[20:]
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return backward_through_loop(ctx, _ln_lstm_loop, (*inputs, ctx.reverse, ctx.gates, ctx.cell),
                                         (dY, dhn, dcn, dC, dGS))
        x, h0, c0, w_ih, *_, mask, keep_h, keep_c, lengths = inputs
        A, into_gates = _gates_for_backward(ctx, A)
        dXW, dw_hh, dh0, dc0, db, dg_ih, dg_hh, dg_c, db_c = ops().ln_lstm_backward(
            grad_or_zeros(dY, Y), dhn, dcn, NX, RX, NHW, RH, NC, RC, C, Y, h0.contiguous(), c0.contiguous(), *params,
            mask, keep_h, keep_c, lengths, ctx.reverse, ctx.needs_input_grad[4], dense(dC), dense(dGS), A, TY,
            into_gates)
        dx, dw_ih = input_grads(ctx, dXW, x, w_ih, 0, 3)
        return needed(ctx, dx, dh0, dc0, dw_ih, dw_hh, db, dg_ih, dg_hh, dg_c, db_c)


class _LNGRU(torch.autograd.Function):
    """A LayerNormGRU layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, mask, keep_h,
    lengths, reverse, gates, cell``; outputs ``Y (T, B, H), h_n`` and the activated gates ``(T, B, 3H)`` when
    ``gates`` or when the forward keeps them for the backward (:data:`KEEP_GATES_BYTES`; else an empty tensor).
    ``cell`` as :class:`_LNLSTM`'s."""

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        tensors, (reverse, gates, cell) = inputs[:11], inputs[11:]
        xw = projection(inputs[0], inputs[2])  # x W_ih^T (T, B, 3H), becomes LN(xw) without its gain
        keep = _keep_gates(xw, gates)
        params, (Y, hn, NHW, RX, RH, GS) = _ln_gru_op(xw, *tensors[1:], reverse, train=True, gates=keep)
        ctx.save_for_backward(*tensors, *params, xw, RX, NHW, RH, Y, GS if keep else None)
        ctx.reverse, ctx.gates, ctx.cell = reverse, gates, cell
        ctx.gates_free, ctx.gates_used = keep and not gates, False
        ctx.set_materialize_grads(False)
        return Y, hn, GS

    @staticmethod
    def backward(ctx, dY, dhn, dGS):  # type: ignore[override]
        saved = ctx.saved_tensors
        inputs, params, (NX, RX, NHW, RH, Y, A) = saved[:11], saved[11:16], saved[16:]
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return backward_through_loop(ctx, _ln_gru_loop, (*inputs, ctx.reverse, ctx.gates, ctx.cell),
                                         (dY, dhn, dGS))
        x, h0, w_ih, *_, mask, keep_h, lengths = inputs
        A, into_gates = _gates_for_backward(ctx, A)
        dXW, dw_hh, dh0, db_ih, db_hh, dg_ih, dg_hh = ops().ln_gru_backward(
            grad_or_zeros(dY, Y), dhn, NX, RX, NHW, RH, Y, h0.contiguous(), *params, mask, keep_h, lengths,
            ctx.reverse, ctx.needs_input_grad[3], dense(dGS), A, into_gates)
        dx, dw_ih = input_grads(ctx, dXW, x, w_ih, 0, 2)
        return needed(ctx, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh)


def _ln_lstm_loop(x: Tensor, h0: Tensor, c0: Tensor, *rest: Any) -> tuple[Tensor | None, ...]:
    """:class:`_LNLSTM` on the reference loop of ``cell``'s step (its double-backward route): its inputs, its
    outputs (``C`` always, the gates side by side with ``gates``)."""
    weights, (mask, keep_h, keep_c, lengths, reverse, gates, cell) = rest[:7], rest[7:]
    run = SequenceRun(x, (h0, c0), param_dict(_LSTM_PARAMS, weights), reverse, lengths, mask, (keep_h, keep_c),
                      True, gates, cell=cell)
    Y, (hn, cn), C, G = loop_outputs(run)  # type: ignore[misc]
    return Y, hn, cn, C, G


def _ln_gru_loop(x: Tensor, h0: Tensor, *rest: Any) -> tuple[Tensor | None, ...]:
    """:class:`_LNGRU` on the reference loop of ``cell``'s step (see :func:`_ln_lstm_loop`)."""
    weights, (mask, keep_h, lengths, reverse, gates, cell) = rest[:6], rest[6:]
    Y, hn, _, G = loop_outputs(SequenceRun(x, h0, param_dict(_GRU_PARAMS, weights), reverse, lengths, mask,
                                           (keep_h,), False, gates, cell=cell))
    return Y, hn, G  # type: ignore[return-value]


def ln_lstm_kernel(seq: SequenceRun) -> SequenceResult | None:
    """LayerNormLSTM's whole-sequence kernel (the contract of :attr:`CellSpec.kernel`); ``None`` where it declines
    (see the module docstring: not covered, no ``seq.cell``, or a gradient sink)."""
    if not takes(seq):
        return None
    h0, c0 = seq.state  # type: ignore[misc]
    inputs = (seq.x, h0, c0, *(seq.p.get(name) for name in _LSTM_PARAMS), *op_options(seq, 2))
    if needs_grad(seq):
        Y, hn, cn, C, GS = _LNLSTM.apply(*inputs, seq.gates, seq.cell)
    else:
        with torch.no_grad():  # inference: nothing saved for a backward unless the cell states are asked for
            _, (Y, hn, cn, *_, C, GS, _) = _ln_lstm_op(projection(seq.x, seq.p["weight_ih"]), *inputs[1:],
                                                       train=seq.record or seq.gates, gates=seq.gates)
    return Y, (hn, cn), C if seq.record else None, named_gates("ifgo", GS, seq.gates)


def ln_gru_kernel(seq: SequenceRun) -> SequenceResult | None:
    """LayerNormGRU's whole-sequence kernel (see :func:`ln_lstm_kernel`)."""
    if not takes(seq):
        return None
    inputs = (seq.x, seq.state, *(seq.p.get(name) for name in _GRU_PARAMS), *op_options(seq, 1))
    if needs_grad(seq):
        Y, hn, GS = _LNGRU.apply(*inputs, seq.gates, seq.cell)
    else:
        with torch.no_grad():
            _, (Y, hn, *_, GS) = _ln_gru_op(projection(seq.x, seq.p["weight_ih"]), *inputs[1:], train=False,
                                            gates=seq.gates)
    return Y, hn, None, named_gates("rzn", GS, seq.gates)
