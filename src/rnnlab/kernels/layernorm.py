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
pre-activation gradient (for the GRU's ``n`` also on through ``r u_n`` to ``r``). A run on another device or in
another dtype is declined (``None``): the layer then runs the reference loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from ..cellspec import LAYER_NORM_GRU_SPEC, LAYER_NORM_LSTM_SPEC
from ..sequence import SequenceResult, SequenceRun
from ._extension import load_extension
from .common import bias_sum, cpu_lengths, input_grads, projection
from .reference import backward_through_loop, run_cell

__all__ = ["ln_lstm_kernel", "ln_gru_kernel"]

_DTYPES = (torch.float32, torch.float64)


def ops() -> Any:
    return torch.ops.rnnlab_fused


# A run whose (T, B, G) gate buffer is at most this large keeps its activated gates for the backward (the forward
# writes them, as the plain fused LSTM does) instead of the backward recomputing them from the two normalised
# halves (an exp and a division per gate and row, about a third of the backward loop at H=64). Measured on the
# compiled ops alone, 1 thread: at S4 (400 KB) the backward 0.82x for a forward 1.03x, and LayerNormLSTM in
# variants.py-like interleaved rounds 1.21-1.24x the plain LSTM kept vs 1.27-1.29x recomputed; at S1 (26 MB, a
# fresh mapping page-faulted on every call) the forward 1.29x for a backward 0.94x, so large runs recompute.
KEEP_GATES_BYTES = 1 << 20


def _keep_gates(xw: Tensor, gates: bool) -> bool:
    return gates or xw.numel() * xw.element_size() <= KEEP_GATES_BYTES


def _covers(run: SequenceRun) -> bool:
    """Whether the compiled loop can run ``run`` (else the layer falls back to the reference loop)."""
    x = run.x
    return x.device.type == "cpu" and x.dtype in _DTYPES and load_extension()


def _keep(run: SequenceRun, k: int) -> Tensor | None:
    keep = run.keep[k] if k < len(run.keep) else None
    return None if keep is None else keep.contiguous()


def _mask(run: SequenceRun) -> Tensor | None:
    return None if run.h_mask is None else run.h_mask.contiguous()


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    """An output's incoming gradient (``None`` when that output was unused: grads are not materialised)."""
    return torch.zeros_like(like) if g is None else g.contiguous()


def _contiguous_or_none(g: Tensor | None) -> Tensor | None:
    return None if g is None else g.contiguous()


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


class _LNLSTM(torch.autograd.Function):
    """A LayerNormLSTM layer-direction; inputs ``x, h0, c0, w_ih, w_hh, bias, g_ih, g_hh, g_c, b_c, mask,
    keep_h, keep_c, lengths, reverse, gates``; outputs ``Y (T, B, H), h_n, c_n``, the cell states ``C (T, B, H)``
    and the activated gates ``(T, B, 4H)`` when ``gates`` or when the forward keeps them for the backward
    (:data:`KEEP_GATES_BYTES`; else an empty tensor)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, g_ih, g_hh, g_c, b_c, mask, keep_h, keep_c, lengths,  # type: ignore[override]
                reverse, gates):
        xw = projection(x, w_ih)  # (T, B, 4H), becomes LN(xw) without its gain
        h0c, c0c, b = h0.contiguous(), c0.contiguous(), bias_sum(w_ih, bias)
        params = (w_hh.contiguous(), b, g_ih.contiguous(), g_hh.contiguous(), g_c.contiguous(), b_c.contiguous())
        keep = _keep_gates(xw, gates)  # the gates, returned or kept for the backward (else it recomputes them)
        Y, hn, cn, NHW, RX, RH, NC, RC, C, GS, TY = ops().ln_lstm_forward(xw, h0c, c0c, *params, mask, keep_h,
                                                                          keep_c, lengths, reverse, True, keep)
        # the kernel's buffers, then the inputs as given (with their graph) for a double backward
        ctx.save_for_backward(x, h0c, c0c, w_ih, *params, mask, keep_h, keep_c, lengths, xw, RX, NHW, RH, NC, RC, C,
                              Y, GS if keep else None, TY if keep else None, h0, c0, w_hh, bias, g_ih, g_hh, g_c, b_c)
        ctx.reverse, ctx.gates, ctx.has_bias = reverse, gates, bias is not None
        # gates kept for the backward alone: its dXW may overwrite them (once, see _gates_for_backward)
        ctx.gates_free, ctx.gates_used = keep and not gates, False
        ctx.set_materialize_grads(False)  # no zeros passes for the unused outputs (C, the gates, often h_n)
        return Y, hn, cn, C, GS

    @staticmethod
    def backward(ctx, dY, dhn, dcn, dC, dGS):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, *rest = ctx.saved_tensors
        params, (mask, keep_h, keep_c, lengths, NX, RX, NHW, RH, NC, RC, C, Y, A, TY), given = (rest[:5], rest[5:19],
                                                                                               rest[19:])
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            h0, c0, *weights = given
            return backward_through_loop(ctx, _ln_lstm_loop, (x, h0, c0, w_ih, *weights, mask, keep_h, keep_c, lengths,
                                                              ctx.reverse, ctx.gates), (dY, dhn, dcn, dC, dGS))
        need = ctx.needs_input_grad
        A, into_gates = _gates_for_backward(ctx, A)
        dXW, dw_hh, dh0, dc0, db, dg_ih, dg_hh, dg_c, db_c = ops().ln_lstm_backward(
            _zeros_if_none(dY, Y), dhn, dcn, NX, RX, NHW, RH, NC, RC, C, Y, h0, c0, w_hh, *params, mask, keep_h,
            keep_c, lengths, ctx.reverse, need[4], _contiguous_or_none(dC), _contiguous_or_none(dGS), A, TY,
            into_gates)
        dx, dw_ih = input_grads(ctx, dXW, x, w_ih, 0, 3)
        return (dx, dh0 if need[1] else None, dc0 if need[2] else None, dw_ih, dw_hh if need[4] else None,
                db if ctx.has_bias and need[5] else None, dg_ih if need[6] else None, dg_hh if need[7] else None,
                dg_c if need[8] else None, db_c if need[9] else None, None, None, None, None, None, None)


class _LNGRU(torch.autograd.Function):
    """A LayerNormGRU layer-direction; inputs ``x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, mask, keep_h,
    lengths, reverse, gates``; outputs ``Y (T, B, H), h_n`` and the activated gates ``(T, B, 3H)`` when ``gates``
    or when the forward keeps them for the backward (:data:`KEEP_GATES_BYTES`; else an empty tensor)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, mask, keep_h, lengths, reverse,  # type: ignore[override]
                gates):
        xw = projection(x, w_ih)  # (T, B, 3H), becomes LN(xw) without its gain
        h0c = h0.contiguous()
        params = (w_hh.contiguous(), bias_sum(w_ih, b_ih), bias_sum(w_hh, b_hh), g_ih.contiguous(), g_hh.contiguous())
        keep = _keep_gates(xw, gates)
        Y, hn, NHW, RX, RH, GS = ops().ln_gru_forward(xw, h0c, *params, mask, keep_h, lengths, reverse, True, keep)
        # the kernel's buffers, then the inputs as given (with their graph) for a double backward
        ctx.save_for_backward(x, h0c, w_ih, *params, mask, keep_h, lengths, xw, RX, NHW, RH, Y, GS if keep else None,
                              h0, w_hh, b_ih, b_hh, g_ih, g_hh)
        ctx.reverse, ctx.gates = reverse, gates
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.gates_free, ctx.gates_used = keep and not gates, False
        ctx.set_materialize_grads(False)
        return Y, hn, GS

    @staticmethod
    def backward(ctx, dY, dhn, dGS):  # type: ignore[override]
        x, h0, w_ih, *rest = ctx.saved_tensors
        params, (mask, keep_h, lengths, NX, RX, NHW, RH, Y, A), given = rest[:5], rest[5:14], rest[14:]
        if torch.is_grad_enabled():  # create_graph=True: the reference loop's gradients, which have a graph
            h0, *weights = given
            return backward_through_loop(ctx, _ln_gru_loop, (x, h0, w_ih, *weights, mask, keep_h, lengths, ctx.reverse,
                                                             ctx.gates), (dY, dhn, dGS))
        need = ctx.needs_input_grad
        A, into_gates = _gates_for_backward(ctx, A)
        dXW, dw_hh, dh0, db_ih, db_hh, dg_ih, dg_hh = ops().ln_gru_backward(
            _zeros_if_none(dY, Y), dhn, NX, RX, NHW, RH, Y, h0, *params, mask, keep_h, lengths, ctx.reverse,
            need[3], _contiguous_or_none(dGS), A, into_gates)
        dx, dw_ih = input_grads(ctx, dXW, x, w_ih, 0, 2)
        return (dx, dh0 if need[1] else None, dw_ih, dw_hh if need[3] else None,
                db_ih if ctx.has_bias[0] and need[4] else None, db_hh if ctx.has_bias[1] and need[5] else None,
                dg_ih if need[6] else None, dg_hh if need[7] else None, None, None, None, None, None)


# The parameters' names in the order of the Functions' weight inputs (the order of ``weights`` in the kernels below).
_LSTM_PARAMS = ("weight_ih", "weight_hh", "bias", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias")
_GRU_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight")


def _ln_lstm_loop(x: Tensor, h0: Tensor, c0: Tensor, *rest: Any) -> tuple[Tensor | None, ...]:
    """:class:`_LNLSTM` on the reference loop of the cell's step (its double-backward route): its inputs, its
    outputs (``C`` always, the gates side by side with ``gates``)."""
    weights, (mask, keep_h, keep_c, lengths, reverse, gates) = rest[:7], rest[7:]
    spec = LAYER_NORM_LSTM_SPEC
    Y, (hn, cn), C, G = run_cell(spec.step, spec.gates if gates else None, x, (h0, c0),  # type: ignore[misc]
                                 dict(zip(_LSTM_PARAMS, weights)), reverse=reverse, lengths=lengths, h_mask=mask,
                                 keep=(keep_h, keep_c), record=True)
    return Y, hn, cn, C, None if G is None else torch.cat(list(G.values()), dim=2)


def _ln_gru_loop(x: Tensor, h0: Tensor, *rest: Any) -> tuple[Tensor | None, ...]:
    """:class:`_LNGRU` on the reference loop of the cell's step (see :func:`_ln_lstm_loop`)."""
    weights, (mask, keep_h, lengths, reverse, gates) = rest[:6], rest[6:]
    spec = LAYER_NORM_GRU_SPEC
    Y, hn, _, G = run_cell(spec.step, spec.gates if gates else None, x, h0, dict(zip(_GRU_PARAMS, weights)),
                           reverse=reverse, lengths=lengths, h_mask=mask, keep=(keep_h,), record=gates)
    return Y, hn, None if G is None else torch.cat(list(G.values()), dim=2)  # type: ignore[return-value]


def _gate_dict(names: str, GS: Tensor, on: bool) -> dict[str, Tensor] | None:
    """The recorded gates by name, ``(T, B, H)`` views of ``GS (T, B, len(names) * H)``."""
    return dict(zip(names, GS.chunk(len(names), dim=2))) if on else None


def ln_lstm_kernel(run: SequenceRun) -> SequenceResult | None:
    """LayerNormLSTM's whole-sequence kernel (the contract of :attr:`CellSpec.kernel`); ``None`` if not covered."""
    if not _covers(run):
        return None
    p = run.p
    h0, c0 = run.state  # type: ignore[misc]
    mask, keep_h, keep_c, lengths = _mask(run), _keep(run, 0), _keep(run, 1), cpu_lengths(run.lengths)
    weights = (p["weight_ih"], p["weight_hh"], p.get("bias"), p["ln_ih_weight"], p["ln_hh_weight"],
               p["ln_c_weight"], p["ln_c_bias"])
    if _needs_graph(run.x, h0, c0, *weights):
        Y, hn, cn, C, GS = _LNLSTM.apply(run.x, h0, c0, *weights, mask, keep_h, keep_c, lengths, run.reverse,
                                         run.gates)
        return Y, (hn, cn), C if run.record else None, _gate_dict("ifgo", GS, run.gates)
    with torch.no_grad():  # inference: nothing saved for a backward unless the cell states are asked for
        w_ih, w_hh, bias, *gains = weights
        keep = run.record or run.gates
        Y, hn, cn, *_, C, GS, _ = ops().ln_lstm_forward(
            projection(run.x, w_ih), h0.contiguous(), c0.contiguous(), w_hh.contiguous(), bias_sum(w_ih, bias),
            *(g.contiguous() for g in gains), mask, keep_h, keep_c, lengths, run.reverse, keep, run.gates)
    return Y, (hn, cn), C if run.record else None, _gate_dict("ifgo", GS, run.gates)


def ln_gru_kernel(run: SequenceRun) -> SequenceResult | None:
    """LayerNormGRU's whole-sequence kernel (the contract of :attr:`CellSpec.kernel`); ``None`` if not covered."""
    if not _covers(run):
        return None
    p = run.p
    h0 = run.state
    assert isinstance(h0, Tensor)
    mask, keep_h, lengths = _mask(run), _keep(run, 0), cpu_lengths(run.lengths)
    weights = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"), p["ln_ih_weight"],
               p["ln_hh_weight"])
    if _needs_graph(run.x, h0, *weights):
        Y, hn, GS = _LNGRU.apply(run.x, h0, *weights, mask, keep_h, lengths, run.reverse, run.gates)
        return Y, hn, None, _gate_dict("rzn", GS, run.gates)
    with torch.no_grad():
        w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = weights
        Y, hn, *_, GS = ops().ln_gru_forward(
            projection(run.x, w_ih), h0.contiguous(), w_hh.contiguous(), bias_sum(w_ih, b_ih), bias_sum(w_hh, b_hh),
            g_ih.contiguous(), g_hh.contiguous(), mask, keep_h, lengths, run.reverse, False, run.gates)
    return Y, hn, None, _gate_dict("rzn", GS, run.gates)
