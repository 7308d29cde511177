r"""The fused whole-sequence backend: the reference maths, reorganised for speed.

The recipe is cuDNN's and haste's (Appleyard et al. 2016, "Optimizing performance of recurrent neural networks
on GPUs"), done on the CPU:

Forward, one layer and direction (``G`` = 4H LSTM, 3H GRU, H RNN):

1. the input projection of every step at once, one GEMM over all ``T*B`` rows: ``XW = X W_ih^T`` ``(T, B, G)``
   (the biases are added in the gate loop, which saves a broadcast copy of the whole buffer);
2. per step, one recurrent GEMM with the gate blocks concatenated, accumulated into ``XW[t]`` in place
   (``XW[t] += h_{t-1} W_hh^T``), then one fused pointwise loop over the gates (activations, cell update);
3. the activated gates are kept in the same ``XW`` buffer for the backward (no extra allocation).

Backward (a hand-written :class:`torch.autograd.Function`), per step only the pointwise derivative and
``dh_{t-1} = dG_t W_hh`` (and ``db += sum_b dG_t`` while ``dG_t`` is in cache); then every weight and input
gradient as one GEMM over all ``T*B`` rows:

.. math::
    dX = dG\, W_{ih}, \quad dW_{ih} = dG^\top X, \quad dW_{hh} = dG^\top H_{prev}

Inference (no gradient needed) saves nothing and projects the input a few steps at a time into one small
cache-resident buffer instead of a whole ``(T, B, G)`` one.

Steps 2 and the per-step backward run in a compiled C++ loop (``csrc/fused.cpp``, built on first use, see
:mod:`rnnlab.kernels._extension`): at small sizes the Python dispatch of a step costs more than its maths. With
no compiler (or on a GPU, or a dtype other than float32/float64) the same recipe runs as a pure-PyTorch loop:
step 1 as one GEMM, then :func:`rnnlab.kernels.reference.recurrence` over the remaining per-step maths, with
autograd doing the backward.

The layer options that change the per-step maths (recurrent dropout, zoneout, the recorded cell states and gates)
run on the same loops through ``LSTMEx``/``GRUEx``/``RNNEx`` (called by :mod:`rnnlab.kernels.options`), and
:func:`run_layer`'s ``sink=`` hands the per-step gradients ``dL/dh_t`` (``dL/dc_t``) of its backward to the
diagnostics.

Variable lengths follow the reference loop exactly: steps ``t >= lengths[b]`` output zeros and leave row ``b``'s
state unchanged; their gate gradients are zero.

Double backward: the compiled backward is not made of autograd ops, so under ``create_graph=True`` every
Function here (and in the variants' kernels) differentiates the same layer-direction on the reference loop
instead (:func:`rnnlab.kernels.reference.backward_through_loop`), and its gradients have a graph to the inputs,
the weights and the incoming gradients. A first-order backward never takes that route.

Example:
    >>> import rnnlab
    >>> lstm = rnnlab.LSTM(8, 16, backend="fused")
    >>> out, (h, c) = lstm(torch.randn(5, 3, 8))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sequence import GradientSink
from . import reference
from .common import (bias_sum, compiled_available, cpu_lengths, dense, grad_or_zeros as _grad, input_grads, ops,
                     projection, recurrent_weight_grad, uses_compiled)

__all__ = ["run_layer", "compiled_available", "uses_compiled", "GradientSink",
           # building blocks shared with the other compiled kernels (options.py, peephole.py, layernorm.py)
           "ops", "projection", "bias_sum", "cpu_lengths", "recurrent_weight_grad", "input_grads", "dense",
           "LSTMEx", "GRUEx", "RNNEx"]

class _LSTM(torch.autograd.Function):
    """Fused LSTM layer-direction; inputs ``x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse``."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):  # type: ignore[override]
        xw = projection(x, w_ih)  # (T, B, 4H), becomes the activated gates
        Y, hn, cn, C, M = ops().lstm_forward(xw, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(),
                                             w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(),
                                             lengths, reverse, True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, xw, C, M, Y, lengths, b_ih, b_hh)
        ctx.reverse = reverse
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return Y, hn, cn

    @staticmethod
    def backward(ctx, dY, dhn, dcn):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, w_hr, gates, C, M, Y, lengths, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return reference.backward_through_loop(ctx, lambda *a: _lstm_loop(*a)[:3], (
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, ctx.reverse), (dY, dhn, dcn))
        w_hh_c = w_hh.contiguous()
        w_hr_c = None if w_hr is None else w_hr.contiguous()
        dG, dh0, dc0, dH, db = ops().lstm_backward(dY.contiguous(), dhn.contiguous(), dcn.contiguous(), gates, C,
                                                   c0.contiguous(), w_hh_c, w_hr_c, lengths, ctx.reverse)
        T, B, G = dG.shape
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 3)
        dw_hh = recurrent_weight_grad(dG, Y, h0, lengths, ctx.reverse) if ctx.needs_input_grad[4] else None
        dw_hr = None
        if w_hr is not None and ctx.needs_input_grad[7]:
            dw_hr = dH.view(T * B, -1).t() @ M.view(T * B, -1)  # (P, H)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dc0 if ctx.needs_input_grad[2] else None,
                dw_ih, dw_hh, db if ctx.has_b[0] else None, db if ctx.has_b[1] else None, dw_hr, None, None)


class _GRU(torch.autograd.Function):
    """Fused GRU layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse``."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):  # type: ignore[override]
        xw = projection(x, w_ih)  # (T, B, 3H), becomes r, z, n
        Y, hn, HN = ops().gru_forward(xw, bias_sum(w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                      bias_sum(w_hh, b_hh), lengths, reverse, True)
        ctx.save_for_backward(x, h0, w_ih, w_hh, xw, HN, Y, lengths, b_ih, b_hh)
        ctx.reverse = reverse
        return Y, hn

    @staticmethod
    def backward(ctx, dY, dhn):  # type: ignore[override]
        x, h0, w_ih, w_hh, gates, HN, Y, lengths, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return reference.backward_through_loop(ctx, lambda *a: _gru_loop(*a)[:2], (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse), (dY, dhn))
        h0c = h0.contiguous()
        dGx, dHn, dh0, db_ih, db_hh = ops().gru_backward(dY.contiguous(), dhn.contiguous(), gates, HN, Y, h0c,
                                                         w_hh.contiguous(), lengths, ctx.reverse)
        dx, dw_ih = input_grads(ctx, dGx, x, w_ih, 0, 2)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            # rows r, z of dW_hh from dGx's r, z blocks (the same numbers), rows n from dHn: no (T, B, 3H) copy
            H = dHn.size(-1)
            dw_hh = torch.cat([recurrent_weight_grad(dGx[..., :2 * H], Y, h0c, lengths, ctx.reverse),
                               recurrent_weight_grad(dHn, Y, h0c, lengths, ctx.reverse)])  # (3H, H)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db_ih if ctx.needs_input_grad[4] else None, db_hh if ctx.needs_input_grad[5] else None, None, None)


class _RNN(torch.autograd.Function):
    """Fused Elman RNN layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu``."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu):  # type: ignore[override]
        Y = projection(x, w_ih)  # (T, B, H), becomes the output in place
        hn = ops().rnn_forward(Y, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), w_hh.contiguous(), relu, lengths,
                               reverse)
        ctx.save_for_backward(x, h0, w_ih, w_hh, Y, lengths, b_ih, b_hh)
        ctx.reverse, ctx.relu = reverse, relu
        ctx.has_b = (b_ih is not None, b_hh is not None)
        return Y, hn

    @staticmethod
    def backward(ctx, dY, dhn):  # type: ignore[override]
        x, h0, w_ih, w_hh, Y, lengths, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            return reference.backward_through_loop(ctx, lambda *a: _rnn_loop(*a)[:2], (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, ctx.relu), (dY, dhn))
        dG, dh0, db = ops().rnn_backward(dY.contiguous(), dhn.contiguous(), Y, w_hh.contiguous(), ctx.relu,
                                         lengths, ctx.reverse)
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 2)
        dw_hh = recurrent_weight_grad(dG, Y, h0.contiguous(), lengths, ctx.reverse) if ctx.needs_input_grad[3] else None
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db if ctx.has_b[0] else None, db if ctx.has_b[1] else None, None, None, None)


# -- the layer options and the per-step gradient sink (csrc/fused.cpp's "_ex" ops) ---------------------------------
#
# Same recipe, with recurrent dropout (``h_{t-1} * mask`` enters W_hh, so dW_hh = dG^T (H_prev * mask)), zoneout
# (``s_t = k_t s_{t-1} + (1 - k_t) s~_t``), the recorded cell states and gates as differentiable outputs, and the
# sink (see :func:`run_layer`). The masks never need a gradient. Outputs not asked for are empty tensors marked
# non-differentiable; their (absent) gradients are passed to the C++ backward as ``None``.


def _empty_like_none(ctx, *outs: Tensor) -> None:
    """Mark the size-0 placeholder outputs (options not asked for) as non-differentiable."""
    empty = [o for o in outs if o.numel() == 0]
    if empty:
        ctx.mark_non_differentiable(*empty)


def _masked_prev(Y: Tensor, h0: Tensor, h_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The states as they enter W_hh: ``(Y * mask, h0 * mask)`` with recurrent dropout, else ``(Y, h0)``."""
    if h_mask is None:
        return Y, h0
    return Y * h_mask, h0 * h_mask  # (T, B, P), (B, P)


class LSTMEx(torch.autograd.Function):
    """LSTM layer-direction with the options; inputs ``x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
    h_mask, keep_h, keep_c, record, gates, sink, cell``; outputs ``Y, h_n, c_n, C (T,B,H) or empty, gates (T,B,4H)
    or empty``. ``cell`` is the CellSpec whose step the options change (see :func:`_reference_run`)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, keep_h, keep_c,  # type: ignore[override]
                record, gates, sink, cell):
        ctx.set_materialize_grads(False)
        xw = projection(x, w_ih)  # (T, B, 4H), becomes the activated gates
        w_hr_c = dense(w_hr)
        Y, hn, cn, C, M, CR = ops().lstm_forward_ex(xw, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(),
                                                    w_hh.contiguous(), w_hr_c, lengths, reverse, dense(h_mask),
                                                    dense(keep_h), dense(keep_c), True)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, xw, C, M, CR, Y, lengths, h_mask, keep_h, keep_c, b_ih,
                              b_hh)
        ctx.reverse, ctx.sink, ctx.record, ctx.gates, ctx.cell = reverse, sink, record, gates, cell
        ctx.has_b = (b_ih is not None, b_hh is not None)
        if sink is not None:
            sink.forward(C.detach(), xw.detach())
        C_out = C if record else C.new_empty(0)
        G_out = xw if gates else xw.new_empty(0)
        _empty_like_none(ctx, C_out, G_out)
        return Y, hn, cn, C_out, G_out

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC, dGates):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, w_hr, gates, C, M, CR, Y, lengths, h_mask, keep_h, keep_c, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, LSTMEx.backward, dY, dhn, dcn, dC, dGates)
            return reference.backward_through_loop(ctx, _lstm_loop, (
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, ctx.reverse, h_mask, keep_h, keep_c, ctx.record,
                ctx.gates, ctx.sink, ctx.cell), (dY, dhn, dcn, dC, dGates))
        dG, dh0, dc0, dH, db, sink_h, sink_c = ops().lstm_backward_ex(
            _grad(dY, Y), _grad(dhn, h0), _grad(dcn, c0), gates, C, CR if CR.numel() else None, c0.contiguous(),
            w_hh.contiguous(), dense(w_hr), lengths, ctx.reverse, dense(h_mask), dense(keep_h), dense(keep_c),
            None if dC is None or dC.numel() == 0 else dC.contiguous(),
            None if dGates is None or dGates.numel() == 0 else dGates.contiguous(), ctx.sink is not None)
        if ctx.sink is not None:
            ctx.sink.backward(sink_h, sink_c)
        T, B, _ = dG.shape
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 3)
        dw_hh = None
        if ctx.needs_input_grad[4]:
            prev, first = _masked_prev(Y, h0.contiguous(), h_mask)
            dw_hh = recurrent_weight_grad(dG, prev, first, lengths, ctx.reverse)
        dw_hr = None
        if w_hr is not None and ctx.needs_input_grad[7]:
            dw_hr = dH.view(T * B, -1).t() @ M.view(T * B, -1)  # (P, H); dH is dL/dh~_t (after zoneout's 1 - k)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dc0 if ctx.needs_input_grad[2] else None,
                dw_ih, dw_hh, db if ctx.has_b[0] else None, db if ctx.has_b[1] else None, dw_hr,
                None, None, None, None, None, None, None, None, None)


class GRUEx(torch.autograd.Function):
    """GRU layer-direction with the options; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask,
    keep_h, gates, sink, cell``; outputs ``Y, h_n, gates (T,B,3H) or empty``."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, keep_h, gates, sink,  # type: ignore[override]
                cell):
        ctx.set_materialize_grads(False)
        xw = projection(x, w_ih)  # (T, B, 3H), becomes r, z, n
        Y, hn, HN = ops().gru_forward_ex(xw, bias_sum(w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                         bias_sum(w_hh, b_hh), lengths, reverse, dense(h_mask), dense(keep_h), True)
        ctx.save_for_backward(x, h0, w_ih, w_hh, xw, HN, Y, lengths, h_mask, keep_h, b_ih, b_hh)
        ctx.reverse, ctx.sink, ctx.gates, ctx.cell = reverse, sink, gates, cell
        if sink is not None:
            sink.forward(None, xw.detach())
        G_out = xw if gates else xw.new_empty(0)
        _empty_like_none(ctx, G_out)
        return Y, hn, G_out

    @staticmethod
    def backward(ctx, dY, dhn, dGates):  # type: ignore[override]
        x, h0, w_ih, w_hh, gates, HN, Y, lengths, h_mask, keep_h, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, GRUEx.backward, dY, dhn, dGates)
            return reference.backward_through_loop(ctx, _gru_loop, (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, h_mask, keep_h, ctx.gates, ctx.sink, ctx.cell),
                (dY, dhn, dGates))
        h0c = h0.contiguous()
        dGx, dHn, dh0, db_ih, db_hh, sink_h = ops().gru_backward_ex(
            _grad(dY, Y), _grad(dhn, h0), gates, HN, Y, h0c, w_hh.contiguous(), lengths, ctx.reverse, dense(h_mask),
            dense(keep_h), None if dGates is None or dGates.numel() == 0 else dGates.contiguous(), ctx.sink is not None)
        if ctx.sink is not None:
            ctx.sink.backward(sink_h, None)
        dx, dw_ih = input_grads(ctx, dGx, x, w_ih, 0, 2)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            H = dHn.size(-1)
            prev, first = _masked_prev(Y, h0c, h_mask)  # the carry z * h uses the unmasked h; W_hh sees the masked
            dw_hh = torch.cat([recurrent_weight_grad(dGx[..., :2 * H], prev, first, lengths, ctx.reverse),
                               recurrent_weight_grad(dHn, prev, first, lengths, ctx.reverse)])  # (3H, H)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db_ih if ctx.needs_input_grad[4] else None, db_hh if ctx.needs_input_grad[5] else None,
                None, None, None, None, None, None, None)


class RNNEx(torch.autograd.Function):
    """Elman layer-direction with the options; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu,
    h_mask, keep_h, gates, sink, cell``; outputs ``Y, h_n, pre-activation (T,B,H) or empty``."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu, h_mask, keep_h, gates,  # type: ignore[override]
                sink, cell):
        ctx.set_materialize_grads(False)
        Y = projection(x, w_ih)  # (T, B, H), becomes the output in place
        hn, HR, PRE = ops().rnn_forward_ex(Y, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), w_hh.contiguous(), relu,
                                           lengths, reverse, dense(h_mask), dense(keep_h), True, gates)
        ctx.save_for_backward(x, h0, w_ih, w_hh, Y, HR, lengths, h_mask, keep_h, b_ih, b_hh)
        ctx.reverse, ctx.relu, ctx.sink, ctx.gates, ctx.cell = reverse, relu, sink, gates, cell
        ctx.has_b = (b_ih is not None, b_hh is not None)
        if sink is not None:
            sink.forward(None, PRE.detach() if PRE.numel() else None)
        _empty_like_none(ctx, PRE)
        return Y, hn, PRE

    @staticmethod
    def backward(ctx, dY, dhn, dPre):  # type: ignore[override]
        x, h0, w_ih, w_hh, Y, HR, lengths, h_mask, keep_h, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, RNNEx.backward, dY, dhn, dPre)
            return reference.backward_through_loop(ctx, _rnn_loop, (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, ctx.relu, h_mask, keep_h, ctx.gates, ctx.sink,
                ctx.cell), (dY, dhn, dPre))
        dG, dh0, db, sink_h = ops().rnn_backward_ex(
            _grad(dY, Y), _grad(dhn, h0), Y, HR if HR.numel() else None, w_hh.contiguous(), ctx.relu, lengths,
            ctx.reverse, dense(h_mask), dense(keep_h), None if dPre is None or dPre.numel() == 0 else dPre.contiguous(),
            ctx.sink is not None)
        if ctx.sink is not None:
            ctx.sink.backward(sink_h, None)
        dx, dw_ih = input_grads(ctx, dG, x, w_ih, 0, 2)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            prev, first = _masked_prev(Y, h0.contiguous(), h_mask)
            dw_hh = recurrent_weight_grad(dG, prev, first, lengths, ctx.reverse)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db if ctx.has_b[0] else None, db if ctx.has_b[1] else None,
                None, None, None, None, None, None, None, None)


# -- the double-backward route: the same layer-direction on the reference loop --------------------------------------


def _reference_run(mode: str, cell: Any, x: Tensor, state: reference.State, weights: Sequence[Tensor | None],
                   reverse: bool, lengths: Tensor | None, h_mask: Tensor | None, keep: Sequence[Tensor | None],
                   record: bool, gates: bool) -> tuple[Tensor, reference.State, Tensor | None, Tensor | None]:
    """One layer-direction of torch's cell ``mode`` on the reference loop, for
    :func:`reference.backward_through_loop`: with ``cell`` (the layer's :class:`rnnlab.cellspec.CellSpec`, passed
    where options change the step) the cell's own step and gates with the options, else torch's step of ``mode``
    (no option is on then). Returns ``(Y, final state, cell states or None, gates (T, B, G) or None)``, the gates
    side by side in the kernels' order."""
    if cell is None:
        Y, final = reference.run_layer(mode, x, state, weights, reverse=reverse, lengths=lengths)
        return Y, final, None, None
    p = dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), weights))
    Y, final, C, G = reference.run_cell(cell.step, cell.gates if gates else None, x, state, p, reverse=reverse,
                                        lengths=lengths, h_mask=h_mask, keep=keep, record=record or gates)
    return Y, final, C if record else None, None if G is None else torch.cat(list(G.values()), dim=2)


# Each takes its options Function's inputs and returns its outputs; the plain Function's are a prefix of both.
def _lstm_loop(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask=None, keep_h=None, keep_c=None,
               record=False, gates=False, sink=None, cell=None) -> tuple[Tensor | None, ...]:
    Y, (hn, cn), C, G = _reference_run("LSTM", cell, x, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_hr), reverse, lengths,
                                       h_mask, (keep_h, keep_c), record, gates)
    return Y, hn, cn, C, G


def _gru_loop(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask=None, keep_h=None, gates=False, sink=None,
              cell=None) -> tuple[Tensor | None, ...]:
    Y, hn, _, G = _reference_run("GRU", cell, x, h0, (w_ih, w_hh, b_ih, b_hh), reverse, lengths, h_mask, (keep_h,),
                                 False, gates)
    return Y, hn, G


def _rnn_loop(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu, h_mask=None, keep_h=None, gates=False,
              sink=None, cell=None) -> tuple[Tensor | None, ...]:
    Y, hn, _, G = _reference_run("RNN_RELU" if relu else "RNN_TANH", cell, x, h0, (w_ih, w_hh, b_ih, b_hh), reverse,
                                 lengths, h_mask, (keep_h,), False, gates)
    return Y, hn, G


def _feed_sink(ctx: Any, first_order: Any, *grads: Tensor | None) -> None:
    """Under ``create_graph`` the gradients come from the reference loop, but a gradient sink (the diagnostics)
    still gets its per-step gradients, from the hand-written backward as in any backward."""
    if ctx.sink is not None:
        with torch.no_grad():
            first_order(ctx, *grads)


def _run_compiled(mode: str, x: Tensor, state: reference.State, weights: Sequence[Tensor | None], reverse: bool,
                  lengths: Tensor | None, sink: GradientSink | None = None) -> tuple[Tensor, reference.State]:
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    w_hr = weights[4] if len(weights) > 4 else None
    lengths = cpu_lengths(lengths)
    tensors = [x, w_ih, w_hh, b_ih, b_hh, w_hr, *(state if isinstance(state, tuple) else (state,))]
    train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    cops = ops()
    if train and sink is not None:  # the options' loops, with no option but the per-step gradients
        if mode == "LSTM":
            h0, c0 = state  # type: ignore[misc]
            Y, hn, cn, _, _ = LSTMEx.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, None, None,
                                           None, False, False, sink, None)
            return Y, (hn, cn)
        if mode == "GRU":
            Y, hn, _ = GRUEx.apply(x, state, w_ih, w_hh, b_ih, b_hh, lengths, reverse, None, None, False, sink, None)
            return Y, hn
        # the pre-activation too (one (T, B, H) write), for the sink's gate statistics
        Y, hn, _ = RNNEx.apply(x, state, w_ih, w_hh, b_ih, b_hh, lengths, reverse, mode == "RNN_RELU", None, None,
                               True, sink, None)
        return Y, hn
    if mode == "LSTM":
        h0, c0 = state  # type: ignore[misc]
        if train:
            Y, hn, cn = _LSTM.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
            return Y, (hn, cn)
        with torch.no_grad():
            Y, hn, cn = cops.lstm_infer(x.contiguous(), w_ih.contiguous(), bias_sum(w_ih, b_ih, b_hh), h0.contiguous(),
                                        c0.contiguous(), w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(),
                                        lengths, reverse)
        return Y, (hn, cn)
    if mode == "GRU":
        if train:
            return _GRU.apply(x, state, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        with torch.no_grad():
            Y, hn = cops.gru_infer(x.contiguous(), w_ih.contiguous(), bias_sum(w_ih, b_ih),  # type: ignore[union-attr]
                                   state.contiguous(), w_hh.contiguous(), bias_sum(w_hh, b_hh), lengths, reverse)
        return Y, hn
    relu = mode == "RNN_RELU"
    if train:
        return _RNN.apply(x, state, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu)
    with torch.no_grad():
        Y = projection(x, w_ih)
        hn = cops.rnn_forward(Y, bias_sum(w_ih, b_ih, b_hh), state.contiguous(),  # type: ignore[union-attr]
                              w_hh.contiguous(), relu, lengths, reverse)
    return Y, hn


# -- pure-PyTorch fallback: the input GEMM hoisted out of the loop, the rest of each step as in functional.py --

def _lstm_step(xw: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor, w_hr: Tensor | None) -> tuple[Tensor, Tensor]:
    h, c = state
    i, f, g, o = torch.addmm(xw, h, w_hh.t()).chunk(4, dim=1)  # (B, H) each
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w_hr is None else h @ w_hr.t()), c


def _gru_step(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    x_r, x_z, x_n = xw.chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return torch.lerp(n, h, z)  # (1 - z) n + z h


def _rnn_step(xw: Tensor, h: Tensor, w_hh: Tensor, relu: bool) -> Tensor:
    pre = torch.addmm(xw, h, w_hh.t())
    return torch.relu(pre) if relu else torch.tanh(pre)


def _run_fallback(mode: str, x: Tensor, state: reference.State, weights: Sequence[Tensor | None], reverse: bool,
                  lengths: Tensor | None) -> tuple[Tensor, reference.State]:
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    if mode == "LSTM":
        w_hr = weights[4] if len(weights) > 4 else None
        xw = projection(x, w_ih, b_ih, b_hh)  # type: ignore[arg-type]
        step = lambda xw_t, s: _lstm_step(xw_t, s, w_hh, w_hr)  # noqa: E731
    elif mode == "GRU":
        xw = projection(x, w_ih, b_ih)  # type: ignore[arg-type]
        step = lambda xw_t, s: _gru_step(xw_t, s, w_hh, b_hh)  # noqa: E731
    elif mode in ("RNN_TANH", "RNN_RELU"):
        xw = projection(x, w_ih, b_ih, b_hh)  # type: ignore[arg-type]
        relu = mode == "RNN_RELU"
        step = lambda xw_t, s: _rnn_step(xw_t, s, w_hh, relu)  # noqa: E731
    else:
        raise ValueError(f"rnnlab fused backend: unknown RNN mode {mode!r}; "
                         "expected 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'")
    return reference.recurrence(step, xw, state, reverse=reverse, lengths=lengths)


def run_layer(
    mode: str,
    x: Tensor,
    state: reference.State,
    weights: Sequence[Tensor | None],
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    sink: GradientSink | None = None,
) -> tuple[Tensor, reference.State]:
    """One layer, one direction, fused (the backend signature, see :mod:`rnnlab.kernels`).

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        x: ``(T, B, I)``. state: ``(B, H_out)``, or ``(h, c)`` for an LSTM.
        weights: ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``, biases may be ``None``.
        reverse, lengths: as :func:`rnnlab.kernels.reference.recurrence`.
        sink: per-step gradients for the diagnostics, on the training path (a gradient is needed) only: the
            forward calls ``sink.forward(C)`` with the detached cell states ``C`` ``(T, B, H)`` in time order
            (LSTM; ``None`` for GRU/RNN), the backward ``sink.backward(dh, dc)`` with the total ``dL/dh_t``
            ``(T, B, H_out)`` of the state after every step (the output's own gradient plus everything from later
            steps) and, for the LSTM, ``dL/dc_t`` ``(T, B, H)`` (else ``None``); zeros at padding steps. Both come
            from the compiled backward at no extra pass; without a gradient the sink is not called.

    Returns:
        ``(outputs (T, B, H_out), final_state)``, equal to the reference loop's up to float rounding.

    Raises:
        ValueError: unknown ``mode``.
        RuntimeError: a ``sink`` where the compiled loops cannot run (no compiler, a GPU, a dtype other than
            float32/float64).
    """
    if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        raise ValueError(f"rnnlab fused backend: unknown RNN mode {mode!r}; "
                         "expected 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'")
    if uses_compiled(x):
        return _run_compiled(mode, x, state, weights, reverse, lengths, sink)
    if sink is not None:
        raise RuntimeError(f"rnnlab fused backend: sink= needs the compiled step loops (CPU, float32/float64, a C++ "
                           f"compiler); got a {x.dtype} input on {x.device.type}")
    return _run_fallback(mode, x, state, weights, reverse, lengths)
