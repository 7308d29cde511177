"""torch's own fused op for torch's three cells: the ``"torch"`` backend, and the fast path on a GPU.

``torch._VF.lstm``/``gru``/``rnn_tanh``/``rnn_relu`` are what ``torch.nn.LSTM/GRU/RNN`` call: cuDNN on a CUDA
device, oneDNN or torch's native loops on the CPU. A plain rnnlab layer moved to a GPU runs them (through
:func:`rnnlab.kernels.fused`'s kernels, which hand every run their compiled CPU loops cannot take to this one), and
``backend="torch"`` selects them on any device, which is how the benchmarks and ``rnnlab train --backend torch``
measure rnnlab against torch.nn on the same model and loop.

Covered: one layer-direction of an LSTM (with projections), GRU or Elman cell, full-length sequences, forwards or
reversed (the input is flipped in time, as a bidirectional torch layer does for its reverse direction). Declined
(the dispatch then runs the reference loop and says so once): the layer options (recurrent dropout, zoneout, the
recorded states and gates), variable lengths, a gradient sink, and cells of rnnlab's own (the variants). On a GPU,
cuDNN's backward cannot be differentiated again: a double backward there needs ``backend="reference"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sequence import SequenceResult, SequenceRun

__all__ = ["native_kernel", "covers_natively"]

_OPS: dict[str, Callable[..., Any]] = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh,
                                       "RNN_RELU": torch._VF.rnn_relu}


def covers_natively(seq: SequenceRun) -> bool:
    """Whether torch's op computes exactly this run: one of torch's cells, no option, no lengths, no sink."""
    return (getattr(seq.cell, "mode", None) in _OPS and seq.h_mask is None and all(k is None for k in seq.keep)
            and not seq.record and not seq.gates and seq.lengths is None and seq.sink is None)


def native_kernel(seq: SequenceRun) -> SequenceResult | None:
    """One layer-direction on torch's op (see the module docstring), or ``None`` for a run it does not cover."""
    if not covers_natively(seq):
        return None
    p, mode = seq.p, seq.cell.mode
    has_biases = "bias_ih" in p
    weights = [p["weight_ih"], p["weight_hh"], *((p["bias_ih"], p["bias_hh"]) if has_biases else ())]
    weights += [p["weight_hr"]] if "weight_hr" in p else []
    x = seq.x.flip(0) if seq.reverse else seq.x
    train = torch.is_grad_enabled()
    if mode == "LSTM":
        h0, c0 = seq.state  # type: ignore[misc]
        y, hn, cn = _OPS[mode](x, (h0.unsqueeze(0), c0.unsqueeze(0)), weights, has_biases, 1, 0.0, train, False,
                               False)
        final: Tensor | tuple[Tensor, ...] = (hn[0], cn[0])
    else:
        h0 = seq.state
        assert isinstance(h0, Tensor)
        y, hn = _OPS[mode](x, h0.unsqueeze(0), weights, has_biases, 1, 0.0, train, False, False)
        final = hn[0]
    return (y.flip(0) if seq.reverse else y), final, None, None
