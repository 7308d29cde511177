r"""Whole-sequence kernels for torch's cells with rnnlab's layer options (:attr:`rnnlab.cellspec.CellSpec.kernel`).

Recurrent dropout, zoneout and the all-step outputs (``return_all_states``, ``return_gates``) change the per-step
maths, so the plain fused path cannot run them; these kernels run them on the same compiled step loops
(``csrc/fused.cpp``'s ``_ex`` ops) with a hand-written backward (:mod:`rnnlab.kernels.fused`), and equal the
reference loop of the cell's step (tested in tests/test_options_kernel.py). Per step, for a state ``s`` with new
value ``s~_t`` from the cell:

.. math::
    a_t = x_t W_{ih}^\top + (h_{t-1} \odot m) W_{hh}^\top + b, \qquad
    s_t = k_t \odot s_{t-1} + (1 - k_t) \odot \tilde s_t

with ``m`` the recurrent dropout mask (``SequenceRun.h_mask``, one per sequence) and ``k_t`` the zoneout keep
(``SequenceRun.keep``; 0/1 in training, the rate in eval mode). The GRU's carry ``z h_{t-1}`` uses the unmasked
``h``. The layer output is the blended ``h_t``. Recorded: the LSTM's ``c_t`` (blended) and gates ``i, f, g, o``;
the GRU's ``r, z, n``; the Elman cell's pre-activation ``pre``; each is a differentiable output whose gradient the
backward adds where it enters the chain rule. The backward (per step in C++, the GEMMs over all steps in Python):

.. math::
    \frac{\partial L}{\partial \tilde s_t} = (1 - k_t) \odot \frac{\partial L}{\partial s_t}, \quad
    \frac{\partial L}{\partial s_{t-1}} \mathrel{+}= k_t \odot \frac{\partial L}{\partial s_t} +
    (dA_t W_{hh}) \odot m, \quad
    dW_{hh} = \sum_t dA_t^\top (h_{t-1} \odot m)

with ``dA_t`` the pre-activation gradient of step ``t``; e.g. for the LSTM's input gate
``dA_i = (dL/dc~_t g + dL/di_ext) i (1 - i)``, and ``dL/dc_t`` includes the recorded ``c_t``'s own gradient.

A kernel returns ``None`` (the layer then runs the reference loop) for what the compiled loops do not take: a
non-CPU tensor, a dtype other than float32/float64, mixed dtypes, or no compiled extension.

Example:
    >>> lstm = rnnlab.LSTM(8, 16, recurrent_dropout=0.3, zoneout=0.1, return_gates=True)  # the compiled loops
    >>> out, (h, c), states = lstm(torch.randn(5, 3, 8))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from ..cellspec import GRU_SPEC, LSTM_SPEC, RNN_RELU_SPEC, RNN_TANH_SPEC
from ..sequence import SequenceResult, SequenceRun
from . import fused

__all__ = ["lstm_kernel", "gru_kernel", "rnn_kernel"]


def _tensors(run: SequenceRun) -> Iterable[Tensor]:
    yield run.x
    yield from (run.state if isinstance(run.state, tuple) else (run.state,))
    yield from run.p.values()
    if run.h_mask is not None:
        yield run.h_mask
    yield from (k for k in run.keep if k is not None)


def _covered(run: SequenceRun) -> bool:
    """Whether the compiled loops take this run: every tensor on the CPU in one float32/float64 dtype."""
    dtype = run.x.dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in _tensors(run)):
        return False
    return fused.compiled_available()


def _needs_grad(run: SequenceRun) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(run))


def _keep(run: SequenceRun, k: int) -> Tensor | None:
    return run.keep[k] if len(run.keep) > k else None


def _weights(p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")


def lstm_kernel(run: SequenceRun) -> SequenceResult | None:
    """An LSTM layer-direction with the options (``SequenceRun`` in, ``SequenceResult`` out), or ``None``."""
    if not _covered(run):
        return None
    w_ih, w_hh, b_ih, b_hh = _weights(run.p)
    w_hr = run.p.get("weight_hr")
    h0, c0 = run.state  # type: ignore[misc]
    lengths = fused.cpu_lengths(run.lengths)
    keep_h, keep_c = _keep(run, 0), _keep(run, 1)
    if _needs_grad(run):
        Y, hn, cn, C, G = fused.LSTMEx.apply(run.x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, run.reverse,
                                             run.h_mask, keep_h, keep_c, run.record, run.gates, run.sink,
                                             LSTM_SPEC)
    else:
        # inference: the same loops, nothing saved for a backward
        with torch.no_grad():
            G = fused.projection(run.x, w_ih)  # (T, B, 4H), becomes the activated gates
            Y, hn, cn, C, _, _ = fused.ops().lstm_forward_ex(
                G, fused.bias_sum(w_ih, b_ih, b_hh), h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
                fused.dense(w_hr), lengths, run.reverse, fused.dense(run.h_mask), fused.dense(keep_h),
                fused.dense(keep_c), False)
    gates = dict(zip("ifgo", G.chunk(4, dim=2))) if run.gates else None  # (T, B, H) each
    return Y, (hn, cn), C if run.record else None, gates


def gru_kernel(run: SequenceRun) -> SequenceResult | None:
    """A GRU layer-direction with the options, or ``None`` (see :func:`lstm_kernel`)."""
    if not _covered(run):
        return None
    w_ih, w_hh, b_ih, b_hh = _weights(run.p)
    h0 = run.state
    assert isinstance(h0, Tensor)
    lengths = fused.cpu_lengths(run.lengths)
    keep_h = _keep(run, 0)
    if _needs_grad(run):
        Y, hn, G = fused.GRUEx.apply(run.x, h0, w_ih, w_hh, b_ih, b_hh, lengths, run.reverse, run.h_mask, keep_h,
                                     run.gates, run.sink, GRU_SPEC)
    else:
        with torch.no_grad():
            G = fused.projection(run.x, w_ih)  # (T, B, 3H), becomes r, z, n
            Y, hn, _ = fused.ops().gru_forward_ex(G, fused.bias_sum(w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                                  fused.bias_sum(w_hh, b_hh), lengths, run.reverse,
                                                  fused.dense(run.h_mask), fused.dense(keep_h), False)
    gates = dict(zip("rzn", G.chunk(3, dim=2))) if run.gates else None
    return Y, hn, None, gates


def rnn_kernel(run: SequenceRun, *, relu: bool = False) -> SequenceResult | None:
    """An Elman (tanh, or relu with ``relu=True``) layer-direction with the options, or ``None``."""
    if not _covered(run):
        return None
    w_ih, w_hh, b_ih, b_hh = _weights(run.p)
    h0 = run.state
    assert isinstance(h0, Tensor)
    lengths = fused.cpu_lengths(run.lengths)
    keep_h = _keep(run, 0)
    if _needs_grad(run):
        Y, hn, pre = fused.RNNEx.apply(run.x, h0, w_ih, w_hh, b_ih, b_hh, lengths, run.reverse, relu, run.h_mask,
                                       keep_h, run.gates or run.sink is not None, run.sink,
                                       RNN_RELU_SPEC if relu else RNN_TANH_SPEC)
    else:
        with torch.no_grad():
            Y = fused.projection(run.x, w_ih)  # (T, B, H), becomes the output in place
            hn, _, pre = fused.ops().rnn_forward_ex(Y, fused.bias_sum(w_ih, b_ih, b_hh), h0.contiguous(),
                                                    w_hh.contiguous(), relu, lengths, run.reverse,
                                                    fused.dense(run.h_mask), fused.dense(keep_h), False, run.gates)
    return Y, hn, None, {"pre": pre} if run.gates else None

