"""Weight converters between split-gate textbook layouts and rnnlab's (torch.nn's) packed layout.

Textbooks and the blog this project started from write one matrix per gate acting on the concatenation
``[h, x]`` (or ``[x, h]``): ``f_t = σ(W_f [h_{t-1}, x_t] + b_f)``. That is the same maths as torch's packed
layout with the blocks split differently:

* the columns of ``W_f`` that multiply ``h`` go to the forget block of ``weight_hh``, the columns that
  multiply ``x`` go to the forget block of ``weight_ih``;
* the blocks are stacked in torch's gate order **i, f, g, o** (the blog's ``W_C`` is the candidate ``g``);
* one bias per gate becomes ``bias_ih``; ``bias_hh`` is zero (only the sum of the two biases matters).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_gates_to_lstm", "lstm_to_split_gates", "concat_linear_to_rnn"]

# torch's LSTM gate order, with the blog's names for the same gates
LSTM_GATES = ("i", "f", "g", "o")


def split_gates_to_lstm(
    weights: dict[str, Tensor], biases: dict[str, Tensor] | None, input_size: int, hidden_size: int,
    *, state_first: bool = True,
) -> dict[str, Tensor]:
    """Map per-gate matrices on ``cat(h, x)`` to an ``LSTMCell`` state_dict.

    Args:
        weights: ``{"i": W_i, "f": W_f, "g": W_C, "o": W_o}``, each ``(H, H + I)``.
        biases: the same keys, each ``(H,)``, or ``None`` for a cell without bias.
        input_size, hidden_size: ``I`` and ``H``.
        state_first: the concatenation is ``cat(h, x)`` (the blog's order); ``False`` for ``cat(x, h)``.

    Returns:
        ``{"weight_ih": (4H, I), "weight_hh": (4H, H)[, "bias_ih", "bias_hh"]}`` for :class:`rnnlab.LSTMCell`
        (or ``torch.nn.LSTMCell``).

    Raises:
        ValueError: a gate is missing or a matrix has the wrong shape.
    """
    H, I = hidden_size, input_size
    for gate in LSTM_GATES:
        if gate not in weights:
            raise ValueError(f"split_gates_to_lstm: missing gate {gate!r}; expected keys {LSTM_GATES}")
        if tuple(weights[gate].shape) != (H, H + I):
            raise ValueError(f"split_gates_to_lstm: W_{gate} must have shape {(H, H + I)}, "
                             f"got {tuple(weights[gate].shape)}")
    h_cols = slice(0, H) if state_first else slice(I, I + H)
    x_cols = slice(H, H + I) if state_first else slice(0, I)
    out = {
        "weight_ih": torch.cat([weights[g][:, x_cols] for g in LSTM_GATES]),  # (4H, I)
        "weight_hh": torch.cat([weights[g][:, h_cols] for g in LSTM_GATES]),  # (4H, H)
    }
    if biases is not None:
        out["bias_ih"] = torch.cat([biases[g] for g in LSTM_GATES])  # (4H,)
        out["bias_hh"] = torch.zeros_like(out["bias_ih"])
    return out


def lstm_to_split_gates(
    state_dict: dict[str, Tensor], *, state_first: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Inverse of :func:`split_gates_to_lstm`: per-gate ``(H, H + I)`` matrices and folded biases."""
    w_ih, w_hh = state_dict["weight_ih"], state_dict["weight_hh"]
    parts_x, parts_h = w_ih.chunk(4), w_hh.chunk(4)
    weights = {g: torch.cat([h, x] if state_first else [x, h], dim=1)
               for g, x, h in zip(LSTM_GATES, parts_x, parts_h)}
    if "bias_ih" not in state_dict:
        return weights, None
    bias = state_dict["bias_ih"] + state_dict["bias_hh"]  # only the sum matters for an LSTM
    return weights, dict(zip(LSTM_GATES, bias.chunk(4)))


def concat_linear_to_rnn(weight: Tensor, bias: Tensor | None, input_size: int) -> dict[str, Tensor]:
    """Map an ``nn.Linear(I + H, H)`` applied to ``cat(x, h)`` (a textbook Elman RNN) to an ``RNNCell`` state_dict.

    Raises:
        ValueError: ``weight`` is not ``(H, I + H)``.
    """
    H = weight.size(0)
    if weight.dim() != 2 or weight.size(1) != input_size + H:
        raise ValueError(f"concat_linear_to_rnn: weight must have shape {(H, input_size + H)}, "
                         f"got {tuple(weight.shape)}")
    out = {"weight_ih": weight[:, :input_size].clone(), "weight_hh": weight[:, input_size:].clone()}
    if bias is not None:
        out["bias_ih"] = bias.clone()
        out["bias_hh"] = torch.zeros_like(bias)
    return out
