r"""The kernels of torch's three cells (LSTM, GRU, Elman): the reference maths, reorganised for speed.

The recipe is cuDNN's and haste's (Appleyard et al. 2016, "Optimizing performance of recurrent neural networks
on GPUs"), done on the CPU:

Forward, one layer and direction (``G`` = 4H LSTM, 3H GRU, H Elman):

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

Inference (no gradient needed) without options saves nothing and projects the input a few steps at a time into
one small cache-resident buffer instead of a whole ``(T, B, G)`` one.

Steps 2 and the per-step backward run in a compiled C++ loop (``csrc/fused.cpp``, built on first use, see
:mod:`rnnlab.kernels._extension`): at small sizes the Python dispatch of a step costs more than its maths. A
kernel declines (returns ``None``) what the compiled loops do not take (:func:`rnnlab.kernels.common.covers`: a
non-CPU tensor, a dtype other than float32/float64, mixed dtypes, no compiler), and the run then takes the
reference loop.

The layer options run on the same loops, through the same Function and the same op (each option is an argument,
``None``/``False`` when off; with all of them off the op runs its plain instantiation). Per step, for a state
``s`` with new value ``s~_t`` from the cell:

.. math::
    a_t = x_t W_{ih}^\top + (h_{t-1} \odot m) W_{hh}^\top + b, \qquad
    s_t = k_t \odot s_{t-1} + (1 - k_t) \odot \tilde s_t

with ``m`` the recurrent dropout mask (``SequenceRun.h_mask``, one per sequence) and ``k_t`` the zoneout keep
(``SequenceRun.keep``; 0/1 in training, the rate in eval mode). The GRU's carry ``z h_{t-1}`` uses the unmasked
``h``. The layer output is the blended ``h_t``. Recorded (``record``, ``gates``): the LSTM's ``c_t`` (blended) and
gates ``i, f, g, o``; the GRU's ``r, z, n``; the Elman cell's pre-activation ``pre``; each is a differentiable
output whose gradient the backward adds where it enters the chain rule. The backward:

.. math::
    \frac{\partial L}{\partial \tilde s_t} = (1 - k_t) \odot \frac{\partial L}{\partial s_t}, \quad
    \frac{\partial L}{\partial s_{t-1}} \mathrel{+}= k_t \odot \frac{\partial L}{\partial s_t} +
    (dA_t W_{hh}) \odot m, \quad
    dW_{hh} = \sum_t dA_t^\top (h_{t-1} \odot m)

with ``dA_t`` the pre-activation gradient of step ``t``; e.g. for the LSTM's input gate
``dA_i = (dL/dc~_t g + dL/di_ext) i (1 - i)``, and ``dL/dc_t`` includes the recorded ``c_t``'s own gradient.

``SequenceRun.sink`` (the diagnostics, :class:`rnnlab.sequence.GradientSink`) gets the per-step states in the
forward and the per-step gradients ``dL/dh_t`` (``dL/dc_t``) that the backward forms anyway, when a gradient is
needed; the caller, not the kernel, hands it the outputs (``sink.outputs``).

Variable lengths follow the reference loop exactly: steps ``t >= lengths[b]`` output zeros and leave row ``b``'s
state unchanged; their gate gradients are zero.

Double backward: the compiled backward is not made of autograd ops, so under ``create_graph=True`` each Function
differentiates the same layer-direction on the reference loop instead
(:func:`rnnlab.kernels.reference.backward_through_loop` over :func:`rnnlab.kernels.reference.run` of
``seq.cell``), and its gradients have a graph to the inputs, the weights and the incoming gradients. A
first-order backward never takes that route.

Example:
    >>> from rnnlab.cellspec import LSTM_SPEC
    >>> p = dict(rnnlab.LSTM(8, 16).layer_params(0))
    >>> seq = SequenceRun(torch.randn(5, 3, 8), (torch.zeros(3, 16), torch.zeros(3, 16)), p, cell=LSTM_SPEC)
    >>> out, (h, c), _, _ = lstm_kernel(seq)  # None where the compiled loops do not cover the run
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..sequence import GradientSink, SequenceResult, SequenceRun, State, masked
from . import native, reference
from .common import (bias_sum, compiled_available, covers, cpu_lengths, dense, grad_or_zeros, input_grads, keep_of,
                     loop_outputs, named_gates, needs_grad, ops, projection, recurrent_weight_grad, uses_compiled)

__all__ = ["lstm_kernel", "gru_kernel", "rnn_tanh_kernel", "rnn_relu_kernel", "lstm_stepper", "lstm_sampler",
           "gru_stepper", "rnn_tanh_stepper", "rnn_relu_stepper", "LSTM", "GRU", "Elman",
           "run_layer", "compiled_available", "uses_compiled", "GradientSink"]

# Parameter names in the order of a ``weights`` sequence (the deprecated :func:`run_layer`'s).
_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _weights(p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")


def _params(*weights: Tensor | None) -> dict[str, Tensor]:
    """``{name: tensor}`` of ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``, a missing one absent (a step's ``p``)."""
    return {name: w for name, w in zip(_NAMES, weights) if w is not None}


def _plain(seq: SequenceRun) -> bool:
    """No option changes the step and no gate is asked for (the LSTM's recorded cell states aside)."""
    return seq.h_mask is None and all(k is None for k in seq.keep) and not seq.gates


def _feed_sink(ctx: Any, first_order: Any, *grads: Tensor | None) -> None:
    """Under ``create_graph`` the gradients come from the reference loop, but a gradient sink (the diagnostics)
    still gets its per-step gradients, from the hand-written backward as in any backward."""
    if ctx.sink is not None:
        with torch.no_grad():
            first_order(ctx, *grads)


# -- the double-backward route: the same layer-direction on the reference loop --------------------------------------

# Each takes its Function's inputs and returns its outputs (``None`` for one the loop does not compute).
def _lstm_loop(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, keep_h, keep_c, record, gates,
               sink, cell) -> tuple[Tensor | None, ...]:
    Y, (hn, cn), C, G = loop_outputs(SequenceRun(x, (h0, c0), _params(w_ih, w_hh, b_ih, b_hh, w_hr), reverse,  # type: ignore[misc]
                                                 lengths, h_mask, (keep_h, keep_c), record, gates, cell=cell))
    return Y, hn, cn, C, G


def _gru_loop(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, keep_h, gates, sink,
              cell) -> tuple[Tensor | None, ...]:
    Y, hn, _, G = loop_outputs(SequenceRun(x, h0, _params(w_ih, w_hh, b_ih, b_hh), reverse, lengths, h_mask,
                                           (keep_h,), False, gates, cell=cell))
    return Y, hn, G


def _elman_loop(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu, *options) -> tuple[Tensor | None, ...]:
    return _gru_loop(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, *options)  # the cell knows its activation


# -- the autograd Functions: one per cell family, one op per pass --------------------------------------------------


def _sink_and_input_grads(ctx: Any, dG: Tensor, x: Tensor, w_ih: Tensor, i_w: int, sink_h: Tensor | None,
                          sink_c: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """After a backward loop: the sink gets its per-step gradients, and ``dX``, ``dW_ih`` (input ``i_w``) are
    GEMMs over all ``T*B`` rows."""
    if ctx.sink is not None:
        ctx.sink.backward(sink_h, sink_c)
    return input_grads(ctx, dG, x, w_ih, 0, i_w)


class LSTM(torch.autograd.Function):
    """LSTM layer-direction (projections included); inputs ``x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
    reverse, h_mask, keep_h, keep_c, record, gates, sink, cell`` (an option that is off: ``None``/``False``);
    outputs ``Y, h_n, c_n, C (T,B,H) or None, gates (T,B,4H) or None`` (an output not asked for is ``None``, and
    so is its incoming gradient). ``cell`` is the spec whose step the double-backward route reruns."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, h_mask, keep_h, keep_c,  # type: ignore[override]
                record, gates, sink, cell):
        ctx.set_materialize_grads(False)
        xw = projection(x, w_ih)  # (T, B, 4H), becomes the activated gates
        Y, hn, cn, C, M, CR = ops().lstm_forward(xw, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(),
                                                 w_hh.contiguous(), dense(w_hr), lengths, reverse, True,
                                                 dense(h_mask), dense(keep_h), dense(keep_c), record)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, xw, C, M, CR, Y, lengths, h_mask, keep_h, keep_c, b_ih,
                              b_hh)
        ctx.reverse, ctx.sink, ctx.record, ctx.gates, ctx.cell = reverse, sink, record, gates, cell
        ctx.has_b = (b_ih is not None, b_hh is not None)
        if sink is not None:
            sink.forward(C.detach(), xw.detach())
        return Y, hn, cn, C if record else None, xw if gates else None

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC, dGates):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, w_hr, gates, C, M, CR, Y, lengths, h_mask, keep_h, keep_c, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, LSTM.backward, dY, dhn, dcn, dC, dGates)
            return reference.backward_through_loop(ctx, _lstm_loop, (
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, ctx.reverse, h_mask, keep_h, keep_c, ctx.record,
                ctx.gates, ctx.sink, ctx.cell), (dY, dhn, dcn, dC, dGates))
        h0c = h0.contiguous()
        dG, dh0, dc0, dH, db, sink_h, sink_c = ops().lstm_backward(
            grad_or_zeros(dY, Y), grad_or_zeros(dhn, h0), grad_or_zeros(dcn, c0), gates, C, CR,
            c0.contiguous(), w_hh.contiguous(), dense(w_hr), lengths, ctx.reverse, dense(h_mask), dense(keep_h),
            dense(keep_c), dense(dC), dense(dGates), ctx.sink is not None)
        T, B, _ = dG.shape
        dx, dw_ih = _sink_and_input_grads(ctx, dG, x, w_ih, 3, sink_h, sink_c)
        dw_hh = None
        if ctx.needs_input_grad[4]:
            prev, first = masked(Y, h_mask), masked(h0c, h_mask)  # the states as they entered W_hh
            dw_hh = recurrent_weight_grad(dG, prev, first, lengths, ctx.reverse)
        dw_hr = None
        if w_hr is not None and ctx.needs_input_grad[7]:
            dw_hr = dH.view(T * B, -1).t() @ M.view(T * B, -1)  # (P, H); dH is dL/dh~_t (after zoneout's 1 - k)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dc0 if ctx.needs_input_grad[2] else None,
                dw_ih, dw_hh, db if ctx.has_b[0] else None, db if ctx.has_b[1] else None, dw_hr,
                None, None, None, None, None, None, None, None, None)


class GRU(torch.autograd.Function):
    """GRU layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, keep_h, gates, sink,
    cell``; outputs ``Y, h_n, gates (T,B,3H) or None`` (see :class:`LSTM`)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, h_mask, keep_h, gates, sink,  # type: ignore[override]
                cell):
        ctx.set_materialize_grads(False)
        xw = projection(x, w_ih)  # (T, B, 3H), becomes r, z, n
        Y, hn, HN = ops().gru_forward(xw, bias_sum(w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                      bias_sum(w_hh, b_hh), lengths, reverse, True, dense(h_mask), dense(keep_h))
        ctx.save_for_backward(x, h0, w_ih, w_hh, xw, HN, Y, lengths, h_mask, keep_h, b_ih, b_hh)
        ctx.reverse, ctx.sink, ctx.gates, ctx.cell = reverse, sink, gates, cell
        if sink is not None:
            sink.forward(None, xw.detach())
        return Y, hn, xw if gates else None

    @staticmethod
    def backward(ctx, dY, dhn, dGates):  # type: ignore[override]
        x, h0, w_ih, w_hh, gates, HN, Y, lengths, h_mask, keep_h, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, GRU.backward, dY, dhn, dGates)
            return reference.backward_through_loop(ctx, _gru_loop, (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, h_mask, keep_h, ctx.gates, ctx.sink, ctx.cell),
                (dY, dhn, dGates))
        h0c = h0.contiguous()
        dGx, dHn, dh0, db_ih, db_hh, sink_h = ops().gru_backward(
            grad_or_zeros(dY, Y), grad_or_zeros(dhn, h0), gates, HN, Y, h0c, w_hh.contiguous(), lengths, ctx.reverse,
            dense(h_mask), dense(keep_h), dense(dGates), ctx.sink is not None)
        dx, dw_ih = _sink_and_input_grads(ctx, dGx, x, w_ih, 2, sink_h)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            # rows r, z of dW_hh from dGx's r, z blocks (the same numbers), rows n from dHn: no (T, B, 3H) copy;
            # the carry z * h uses the unmasked h, W_hh sees the masked one
            H = dHn.size(-1)
            prev, first = masked(Y, h_mask), masked(h0c, h_mask)  # the states as they entered W_hh
            dw_hh = torch.cat([recurrent_weight_grad(dGx[..., :2 * H], prev, first, lengths, ctx.reverse),
                               recurrent_weight_grad(dHn, prev, first, lengths, ctx.reverse)])  # (3H, H)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db_ih if ctx.needs_input_grad[4] else None, db_hh if ctx.needs_input_grad[5] else None,
                None, None, None, None, None, None, None)


class Elman(torch.autograd.Function):
    """Elman (tanh, or relu with ``relu``) layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
    reverse, relu, h_mask, keep_h, gates, sink, cell``; outputs ``Y, h_n, pre-activation (T,B,H) or None`` (see
    :class:`LSTM`). With a sink the pre-activation is formed for the sink's gate statistics even when not asked
    for."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, relu, h_mask, keep_h, gates,  # type: ignore[override]
                sink, cell):
        ctx.set_materialize_grads(False)
        Y = projection(x, w_ih)  # (T, B, H), becomes the output in place
        hn, HR, PRE = ops().rnn_forward(Y, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), w_hh.contiguous(), relu,
                                        lengths, reverse, True, dense(h_mask), dense(keep_h), gates or sink is not None)
        ctx.save_for_backward(x, h0, w_ih, w_hh, Y, HR, lengths, h_mask, keep_h, b_ih, b_hh)
        ctx.reverse, ctx.relu, ctx.sink, ctx.gates, ctx.cell = reverse, relu, sink, gates, cell
        ctx.has_b = (b_ih is not None, b_hh is not None)
        if sink is not None:
            sink.forward(None, PRE.detach())
        return Y, hn, PRE if gates else None

    @staticmethod
    def backward(ctx, dY, dhn, dPre):  # type: ignore[override]
        x, h0, w_ih, w_hh, Y, HR, lengths, h_mask, keep_h, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            _feed_sink(ctx, Elman.backward, dY, dhn, dPre)
            return reference.backward_through_loop(ctx, _elman_loop, (
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, ctx.relu, h_mask, keep_h, ctx.gates, ctx.sink,
                ctx.cell), (dY, dhn, dPre))
        dG, dh0, db, sink_h = ops().rnn_backward(
            grad_or_zeros(dY, Y), grad_or_zeros(dhn, h0), Y, HR, w_hh.contiguous(), ctx.relu, lengths, ctx.reverse,
            dense(h_mask), dense(keep_h), dense(dPre), ctx.sink is not None)
        dx, dw_ih = _sink_and_input_grads(ctx, dG, x, w_ih, 2, sink_h)
        dw_hh = None
        if ctx.needs_input_grad[3]:
            prev, first = masked(Y, h_mask), masked(h0.contiguous(), h_mask)
            dw_hh = recurrent_weight_grad(dG, prev, first, lengths, ctx.reverse)
        return (dx, dh0 if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
                db if ctx.has_b[0] else None, db if ctx.has_b[1] else None,
                None, None, None, None, None, None, None, None)


# -- the kernels: (seq: SequenceRun) -> SequenceResult | None --------------------------------------------------------


def _elsewhere(seq: SequenceRun) -> SequenceResult | None:
    """A run the compiled loops do not take: on another device (a GPU) torch's own op, cuDNN there, when it covers
    the run (:mod:`rnnlab.kernels.native`); else ``None`` (the reference loop)."""
    return native.native_kernel(seq) if seq.x.device.type != "cpu" else None


def lstm_kernel(seq: SequenceRun) -> SequenceResult | None:
    """torch's LSTM (projections included) with every option of ``seq`` on the compiled loops, or ``None`` where
    they do not cover the run (:func:`rnnlab.kernels.common.covers`)."""
    if not covers(seq):
        return _elsewhere(seq)
    w_ih, w_hh, b_ih, b_hh = _weights(seq.p)
    w_hr = seq.p.get("weight_hr")
    h0, c0 = seq.state  # type: ignore[misc]
    lengths = cpu_lengths(seq.lengths)
    keep_h, keep_c = keep_of(seq, 0), keep_of(seq, 1)
    C: Tensor | None = None
    G: Tensor | None = None
    if needs_grad(seq):
        Y, hn, cn, C, G = LSTM.apply(seq.x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, seq.reverse, seq.h_mask,
                                     keep_h, keep_c, seq.record, seq.gates, seq.sink, seq.cell)
    elif _plain(seq) and not seq.record:  # inference: the input projected a few steps at a time, nothing saved
        Y, hn, cn = ops().lstm_infer(seq.x.contiguous(), w_ih.contiguous(), bias_sum(w_ih, b_ih, b_hh),
                                     h0.contiguous(), c0.contiguous(), w_hh.contiguous(), dense(w_hr), lengths,
                                     seq.reverse)
    else:  # inference with the options: the training forward, nothing saved
        G = projection(seq.x, w_ih)  # (T, B, 4H), becomes the activated gates
        Y, hn, cn, C, _, _ = ops().lstm_forward(G, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(),
                                                w_hh.contiguous(), dense(w_hr), lengths, seq.reverse, False,
                                                dense(seq.h_mask), keep_h, keep_c, seq.record)
    gates = named_gates("ifgo", G, seq.gates)  # (T, B, H) each
    return Y, (hn, cn), C if seq.record else None, gates


def _one_state(seq: SequenceRun) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A one-state cell's initial ``h``, its lengths for the compiled loops and its zoneout keep."""
    h0 = seq.state
    assert isinstance(h0, Tensor)
    return h0, cpu_lengths(seq.lengths), keep_of(seq, 0)


def gru_kernel(seq: SequenceRun) -> SequenceResult | None:
    """torch's GRU with every option of ``seq`` on the compiled loops, or ``None`` (see :func:`lstm_kernel`)."""
    if not covers(seq):
        return _elsewhere(seq)
    w_ih, w_hh, b_ih, b_hh = _weights(seq.p)
    h0, lengths, keep_h = _one_state(seq)
    G: Tensor | None = None
    if needs_grad(seq):
        Y, hn, G = GRU.apply(seq.x, h0, w_ih, w_hh, b_ih, b_hh, lengths, seq.reverse, seq.h_mask, keep_h, seq.gates,
                             seq.sink, seq.cell)
    elif _plain(seq):  # inference: the input projected a few steps at a time, nothing saved
        Y, hn = ops().gru_infer(seq.x.contiguous(), w_ih.contiguous(), bias_sum(w_ih, b_ih), h0.contiguous(),
                                w_hh.contiguous(), bias_sum(w_hh, b_hh), lengths, seq.reverse)
    else:  # inference with the options: the training forward, nothing saved
        G = projection(seq.x, w_ih)  # (T, B, 3H), becomes r, z, n
        Y, hn, _ = ops().gru_forward(G, bias_sum(w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                     bias_sum(w_hh, b_hh), lengths, seq.reverse, False, dense(seq.h_mask), keep_h)
    return Y, hn, None, named_gates("rzn", G, seq.gates)


def _elman_kernel(seq: SequenceRun, relu: bool) -> SequenceResult | None:
    if not covers(seq):
        return _elsewhere(seq)
    w_ih, w_hh, b_ih, b_hh = _weights(seq.p)
    h0, lengths, keep_h = _one_state(seq)
    if needs_grad(seq):
        Y, hn, pre = Elman.apply(seq.x, h0, w_ih, w_hh, b_ih, b_hh, lengths, seq.reverse, relu, seq.h_mask, keep_h,
                                 seq.gates, seq.sink, seq.cell)
    else:  # inference: the training forward (the Elman step has no gates to keep), nothing saved
        Y = projection(seq.x, w_ih)  # (T, B, H), becomes the output in place
        hn, _, pre = ops().rnn_forward(Y, bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), w_hh.contiguous(), relu,
                                       lengths, seq.reverse, False, dense(seq.h_mask), keep_h, seq.gates)
    return Y, hn, None, {"pre": pre} if seq.gates else None


def rnn_tanh_kernel(seq: SequenceRun) -> SequenceResult | None:
    """torch's Elman cell with tanh, every option of ``seq``, or ``None`` (see :func:`lstm_kernel`)."""
    return _elman_kernel(seq, relu=False)


def rnn_relu_kernel(seq: SequenceRun) -> SequenceResult | None:
    """torch's Elman cell with relu, every option of ``seq``, or ``None`` (see :func:`lstm_kernel`)."""
    return _elman_kernel(seq, relu=True)


# -- one step at a time (generation) ----------------------------------------------------------------------------------

def _steps_plainly(seq: SequenceRun) -> bool:
    """Whether the kernel runs ``seq`` on its plain inference op: the compiled loops cover it, no gradient, no
    option, no lengths and nothing recorded."""
    return covers(seq) and not needs_grad(seq) and _plain(seq) and not seq.record and seq.lengths is None


def lstm_stepper(seq: SequenceRun) -> Callable[[Tensor, State], State] | None:
    """``(x (B, I), (h, c)) -> (h, c)``: one step of :func:`lstm_kernel`'s inference op on ``seq.p``, with the
    weights made contiguous and the biases summed once; ``None`` where the kernel would run ``seq`` otherwise."""
    if not _steps_plainly(seq):
        return None
    w_ih, w_hh, b_ih, b_hh = (dense(w) for w in _weights(seq.p))
    bias, w_hr, op, reverse = bias_sum(w_ih, b_ih, b_hh), dense(seq.p.get("weight_hr")), ops().lstm_infer, seq.reverse

    def step(x: Tensor, state: State) -> State:
        h, c = state  # type: ignore[misc]
        _, h, c = op(x[None], w_ih, bias, h.contiguous(), c.contiguous(), w_hh, w_hr, None, reverse)
        return h, c

    return step


Sampler = Callable[[Tensor, int, float, int, "torch.Generator | None"], tuple[Tensor, Tensor]]


def lstm_sampler(seqs: Sequence[SequenceRun], table: Tensor, head_w: Tensor,
                 head_b: Tensor | None) -> Sampler | None:
    """``(logits, n, temperature, top_k, generator) -> (indices (n,), last logits)``: generation's whole loop in
    the compiled op ``lstm_sample`` for a stack of LSTM layers (``seqs``: each layer's first one-step run) and a
    linear head, the character's input being its row of ``table``; ``None`` where a layer's step is not
    :func:`lstm_stepper`'s op (projections are not taken either). Each step is that op's and each draw
    ``rnnlab.models._Sampler``'s (the same ATen ops), so the characters are the Python loop's; ``W_hh`` stays
    prepared for the whole sample and no Python runs between characters."""
    if not all(_steps_plainly(seq) and "weight_hr" not in seq.p for seq in seqs):
        return None
    w_ih = [dense(seq.p["weight_ih"]) for seq in seqs]
    w_hh = [dense(seq.p["weight_hh"]) for seq in seqs]
    bias = [bias_sum(w, seq.p.get("bias_ih"), seq.p.get("bias_hh")) for w, seq in zip(w_ih, seqs)]
    h0 = [seq.state[0].contiguous() for seq in seqs]  # type: ignore[index]
    c0 = [seq.state[1].contiguous() for seq in seqs]  # type: ignore[index]
    table, head_w, head_b = table.contiguous(), head_w.contiguous(), dense(head_b)

    def sample(logits: Tensor, n: int, temperature: float, top_k: int,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        return ops().lstm_sample(logits, table, w_ih, bias, w_hh, h0, c0, head_w, head_b, n, temperature, top_k,
                                 generator)

    return sample


def gru_stepper(seq: SequenceRun) -> Callable[[Tensor, State], State] | None:
    """One step of :func:`gru_kernel`'s inference op on ``seq.p`` (see :func:`lstm_stepper`)."""
    if not _steps_plainly(seq):
        return None
    w_ih, w_hh, b_ih, b_hh = (dense(w) for w in _weights(seq.p))
    b_i, b_h, op, reverse = bias_sum(w_ih, b_ih), bias_sum(w_hh, b_hh), ops().gru_infer, seq.reverse

    def step(x: Tensor, h: State) -> State:
        assert isinstance(h, Tensor)
        return op(x[None], w_ih, b_i, h.contiguous(), w_hh, b_h, None, reverse)[1]

    return step


def _elman_stepper(seq: SequenceRun, relu: bool) -> Callable[[Tensor, State], State] | None:
    if not _steps_plainly(seq):
        return None
    w_ih, w_hh, b_ih, b_hh = (dense(w) for w in _weights(seq.p))
    bias, op, reverse = bias_sum(w_ih, b_ih, b_hh), ops().rnn_forward, seq.reverse

    def step(x: Tensor, h: State) -> State:
        assert isinstance(h, Tensor)
        return op(projection(x[None], w_ih), bias, h.contiguous(), w_hh, relu, None, reverse, False, None, None,
                  False)[0]

    return step


def rnn_tanh_stepper(seq: SequenceRun) -> Callable[[Tensor, State], State] | None:
    """One step of :func:`rnn_tanh_kernel`'s inference op on ``seq.p`` (see :func:`lstm_stepper`)."""
    return _elman_stepper(seq, relu=False)


def rnn_relu_stepper(seq: SequenceRun) -> Callable[[Tensor, State], State] | None:
    """One step of :func:`rnn_relu_kernel`'s inference op on ``seq.p`` (see :func:`lstm_stepper`)."""
    return _elman_stepper(seq, relu=True)


# -- the deprecated backend signature --------------------------------------------------------------------------------

_KERNELS = {"LSTM": lstm_kernel, "GRU": gru_kernel, "RNN_TANH": rnn_tanh_kernel, "RNN_RELU": rnn_relu_kernel}


class _TorchStep:
    """The ``cell`` of :func:`run_layer`'s runs: torch's step of ``mode`` (no option, no gates), which their
    double-backward route reruns. (The kernels cannot name the cell specs: :mod:`rnnlab.cellspec` imports them.)"""

    gates = None

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def step(self, x: Tensor, state: State, p: Mapping[str, Tensor], h_mask: Tensor | None) -> State:
        return reference.step_function(self.mode, [p.get(name) for name in _NAMES])(x, state)


def run_layer(mode: str, x: Tensor, state: State, weights: Sequence[Tensor | None], *, reverse: bool = False,
              lengths: Tensor | None = None, sink: GradientSink | None = None) -> tuple[Tensor, State]:
    """Deprecated (kept for one release): one layer-direction of torch's cell ``mode`` (``"LSTM"``, ``"GRU"``,
    ``"RNN_TANH"``, ``"RNN_RELU"``) with ``weights`` ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``, on the matching kernel,
    else on the reference loop. Returns ``(outputs, final_state)``. Use :func:`rnnlab.kernels.run`.

    Raises:
        ValueError: unknown ``mode``.
        RuntimeError: a ``sink`` where the compiled loops cannot run.
    """
    warnings.warn("rnnlab.kernels.fused.run_layer is deprecated; use rnnlab.kernels.run", DeprecationWarning,
                  stacklevel=2)
    kernel = _KERNELS.get(mode)
    if kernel is None:
        raise ValueError(f"rnnlab fused backend: unknown RNN mode {mode!r}; "
                         "expected 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'")
    result = kernel(SequenceRun(x, state, _params(*weights), reverse, lengths, sink=sink, cell=_TorchStep(mode)))
    if result is not None:
        return result[0], result[1]
    if sink is not None:
        raise RuntimeError(f"rnnlab fused backend: sink= needs the compiled step loops (CPU, float32/float64, a C++ "
                           f"compiler); got a {x.dtype} input on {x.device.type}")
    return reference.run_layer(mode, x, state, weights, reverse=reverse, lengths=lengths)

