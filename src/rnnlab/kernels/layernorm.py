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

How it is split: the input half ``s_t`` does not depend on the state, so it is computed here for all ``T*B`` rows
at once (one GEMM and one :func:`torch.nn.functional.layer_norm`) and autograd differentiates it. The recurrent
half runs in the compiled loop (``csrc/layernorm.cpp``): per step one GEMM ``hw = (h_{t-1} m) W_{hh}^T``, the
row-wise layer norm of ``hw``, the gates and the cell (for the LSTM also the layer norm of ``c'``). Its
hand-written backward walks the steps in reverse with, per row, the layer-norm derivative

.. math::
    y = n\gamma + \beta,\; n = (x - \mu)\,\rho \;\Rightarrow\;
    \partial x = \rho\,(\partial n - \overline{\partial n} - n\,\overline{\partial n \cdot n}),
    \quad \partial n = \partial y\,\gamma,\; \partial\gamma \mathrel{+}= \partial y\, n,\;
    \partial\beta \mathrel{+}= \partial y

(``ρ = 1/sqrt(var + eps)``, bars are row means), applied to the cell's ``LN(c')`` (LSTM) and to ``LN(hw)``, and
``∂h_{t-1} += (∂hw_t W_{hh}) m`` as one GEMM. It returns ``∂s`` (``(T, B, G)``, handed back to autograd for the
input half) and ``∂hw`` for every step, so that ``∂W_{hh} = Σ_t ∂hw_t^T (h_{t-1} m)`` is one GEMM over all rows.

A run on another device, in another dtype, or asking for the recorded cell states or gates (``record``,
``gates``) is declined (``None``): the layer then runs the reference loop.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cellspec import SequenceResult, SequenceRun
from ._extension import load_extension
from .fused import _dw_hh, _lengths

__all__ = ["ln_lstm_kernel", "ln_gru_kernel"]

_EPS = 1e-5  # as cellspec._ln (torch.nn.LayerNorm's default); the C++ loop uses the same constant
_DTYPES = (torch.float32, torch.float64)


def _ops() -> Any:
    return torch.ops.rnnlab_fused


def _covers(run: SequenceRun) -> bool:
    """Whether the compiled loop can run ``run`` (else the layer falls back to the reference loop)."""
    x = run.x
    return (x.device.type == "cpu" and x.dtype in _DTYPES and not run.record and not run.gates
            and load_extension())


def _keep(run: SequenceRun, k: int) -> Tensor | None:
    keep = run.keep[k] if k < len(run.keep) else None
    return None if keep is None else keep.contiguous()


def _mask(run: SequenceRun) -> Tensor | None:
    return None if run.h_mask is None else run.h_mask.contiguous()


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _recurrent_weight_grad(dHW: Tensor, Y: Tensor, h0: Tensor, mask: Tensor | None, lengths: Tensor | None,
                           reverse: bool) -> Tensor:
    """``∂W_hh = Σ_t ∂hw_t^T (h_{t-1} m)``: the outputs are the states (zoneout included), masked like the
    forward's recurrent input."""
    if mask is not None:
        Y, h0 = Y * mask, h0 * mask
    return _dw_hh(dHW, Y, h0.contiguous(), lengths, reverse)


class _LNLSTM(torch.autograd.Function):
    """The recurrent half of a LayerNormLSTM layer-direction; inputs ``s, h0, c0, w_hh, g_hh, g_c, b_c, mask,
    keep_h, keep_c, lengths, reverse``; outputs ``Y (T, B, H), h_n, c_n``."""

    @staticmethod
    def forward(ctx, s, h0, c0, w_hh, g_hh, g_c, b_c, mask, keep_h, keep_c, lengths, reverse):  # type: ignore[override]
        h0, c0 = h0.contiguous(), c0.contiguous()
        Y, hn, cn, A, NHW, RH, NC, RC, C = _ops().ln_lstm_forward(
            s, h0, c0, w_hh.contiguous(), g_hh.contiguous(), g_c.contiguous(), b_c.contiguous(), mask, keep_h,
            keep_c, lengths, reverse, True)
        ctx.save_for_backward(h0, c0, w_hh, g_hh, g_c, b_c, mask, keep_h, keep_c, lengths, Y, A, NHW, RH, NC, RC,
                              C)
        ctx.reverse = reverse
        return Y, hn, cn

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dhn, dcn):  # type: ignore[override]
        h0, c0, w_hh, g_hh, g_c, b_c, mask, keep_h, keep_c, lengths, Y, A, NHW, RH, NC, RC, C = ctx.saved_tensors
        dA, dHW, dh0, dc0, dg_hh, dg_c, db_c = _ops().ln_lstm_backward(
            dY.contiguous(), dhn.contiguous(), dcn.contiguous(), A, NHW, RH, NC, RC, C, c0, w_hh.contiguous(),
            g_hh.contiguous(), g_c.contiguous(), b_c.contiguous(), mask, keep_h, keep_c, lengths, ctx.reverse)
        need = ctx.needs_input_grad
        dw_hh = _recurrent_weight_grad(dHW, Y, h0, mask, lengths, ctx.reverse) if need[3] else None
        return (dA, dh0 if need[1] else None, dc0 if need[2] else None, dw_hh, dg_hh if need[4] else None,
                dg_c if need[5] else None, db_c if need[6] else None, None, None, None, None, None)


class _LNGRU(torch.autograd.Function):
    """The recurrent half of a LayerNormGRU layer-direction; inputs ``s, h0, w_hh, g_hh, b_hh, mask, keep_h,
    lengths, reverse``; outputs ``Y (T, B, H), h_n``."""

    @staticmethod
    def forward(ctx, s, h0, w_hh, g_hh, b_hh, mask, keep_h, lengths, reverse):  # type: ignore[override]
        h0 = h0.contiguous()
        Y, hn, A, NHW, RH = _ops().ln_gru_forward(s, h0, w_hh.contiguous(), g_hh.contiguous(), b_hh.contiguous(),
                                                  mask, keep_h, lengths, reverse, True)
        ctx.save_for_backward(h0, w_hh, g_hh, b_hh, mask, keep_h, lengths, Y, A, NHW, RH)
        ctx.reverse = reverse
        return Y, hn

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dhn):  # type: ignore[override]
        h0, w_hh, g_hh, b_hh, mask, keep_h, lengths, Y, A, NHW, RH = ctx.saved_tensors
        dA, dHW, dh0, dg_hh, db_hh = _ops().ln_gru_backward(
            dY.contiguous(), dhn.contiguous(), A, NHW, RH, Y, h0, w_hh.contiguous(), g_hh.contiguous(),
            b_hh.contiguous(), mask, keep_h, lengths, ctx.reverse)
        need = ctx.needs_input_grad
        dw_hh = _recurrent_weight_grad(dHW, Y, h0, mask, lengths, ctx.reverse) if need[2] else None
        return (dA, dh0 if need[1] else None, dw_hh, dg_hh if need[3] else None, db_hh if need[4] else None,
                None, None, None, None)


def _input_half(x: Tensor, w_ih: Tensor, gain: Tensor, bias: Tensor | None) -> Tensor:
    """``s = LN(x W_ih^T) γ_ih + b`` for all ``T*B`` rows at once, ``(T, B, G)``; autograd differentiates it."""
    return F.layer_norm(F.linear(x, w_ih), (w_ih.size(0),), gain, bias, eps=_EPS).contiguous()


def ln_lstm_kernel(run: SequenceRun) -> SequenceResult | None:
    """LayerNormLSTM's whole-sequence kernel (the contract of :attr:`CellSpec.kernel`); ``None`` if not covered."""
    if not _covers(run):
        return None
    p = run.p
    h0, c0 = run.state  # type: ignore[misc]
    s = _input_half(run.x, p["weight_ih"], p["ln_ih_weight"], p.get("bias"))  # (T, B, 4H)
    mask, keep_h, keep_c, lengths = _mask(run), _keep(run, 0), _keep(run, 1), _lengths(run.lengths)
    weights = (p["weight_hh"], p["ln_hh_weight"], p["ln_c_weight"], p["ln_c_bias"])
    if _needs_graph(s, h0, c0, *weights):
        Y, hn, cn = _LNLSTM.apply(s, h0, c0, *weights, mask, keep_h, keep_c, lengths, run.reverse)
    else:  # inference: nothing saved for a backward
        Y, hn, cn = _ops().ln_lstm_forward(s, h0.contiguous(), c0.contiguous(), *(w.contiguous() for w in weights),
                                           mask, keep_h, keep_c, lengths, run.reverse, False)[:3]
    return Y, (hn, cn), None, None


def ln_gru_kernel(run: SequenceRun) -> SequenceResult | None:
    """LayerNormGRU's whole-sequence kernel (the contract of :attr:`CellSpec.kernel`); ``None`` if not covered."""
    if not _covers(run):
        return None
    p = run.p
    h0 = run.state
    assert isinstance(h0, Tensor)
    s = _input_half(run.x, p["weight_ih"], p["ln_ih_weight"], p.get("bias_ih"))  # (T, B, 3H)
    b_hh = p.get("bias_hh")
    # no bias: zeros for the loop, and no gradient asked for them
    b_hh_or_zeros = b_hh if b_hh is not None else p["weight_hh"].new_zeros(p["weight_hh"].size(0))
    mask, keep_h, lengths = _mask(run), _keep(run, 0), _lengths(run.lengths)
    weights = (p["weight_hh"], p["ln_hh_weight"], b_hh_or_zeros)
    if _needs_graph(s, h0, *weights):
        Y, hn = _LNGRU.apply(s, h0, *weights, mask, keep_h, lengths, run.reverse)
    else:
        Y, hn = _ops().ln_gru_forward(s, h0.contiguous(), *(w.contiguous() for w in weights), mask, keep_h,
                                      lengths, run.reverse, False)[:2]
    return Y, hn, None, None
