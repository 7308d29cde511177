r"""A self-contained adding problem and last-step regressor, so diagnostics can run without the training stack.

The adding problem (Hochreiter & Schmidhuber 1997; the form of Le, Jaitly & Hinton 2015): each step's input is
``(u_t, m_t)`` with ``u_t ~ U(0, 1)`` and a marker ``m_t`` that is 1 at exactly two steps, one in each half of
the sequence; the target is the sum of the two marked values. Predicting the constant 1 gives an MSE of
``Var(u_a + u_b) = 1/6``, the baseline a model must beat; the information sits ``~T/2`` to ``T`` steps before the
loss, so it is the standard probe of long-range gradient flow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..cellspec import SPECS, CellSpec
from ..variants import layer_class

__all__ = ["adding_batch", "ADDING_BASELINE_MSE", "LastStepRegressor", "make_layer", "cell_name", "CELLS"]

ADDING_BASELINE_MSE = 1.0 / 6.0
# The cells the diagnostics report on: those of rnnlab.cellspec.SPECS with torch's weight layout (a ``mode``), whose
# gates and W_hh blocks the gate statistics and weight spectra read. {config name (as rnnlab.models spells it):
# label}, the Elman cells first, as the reports compare them; "rnn" is accepted for "rnn_tanh".
_SPECS: dict[str, CellSpec] = {spec.config_name: spec for spec in sorted(
    (spec for spec in SPECS.values() if spec.mode is not None), key=lambda spec: len(spec.gate_names) > 1)}
CELLS = {name: spec.label for name, spec in _SPECS.items()}


def cell_name(cell: str) -> str:
    """The canonical cell name (``"rnn"`` -> ``"rnn_tanh"``).

    Raises:
        ValueError: unknown cell name.
    """
    cell = "rnn_tanh" if cell == "rnn" else cell
    if cell not in CELLS:
        raise ValueError(f"rnnlab.diagnostics: unknown cell {cell!r}; expected one of {list(CELLS)} (or 'rnn')")
    return cell


def adding_batch(seq_len: int, batch_size: int, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """One adding-problem batch.

    Returns:
        ``x`` ``(T, B, 2)`` (values, markers) and ``y`` ``(B, 1)``.

    Raises:
        ValueError: ``seq_len < 2`` or ``batch_size < 1``.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"adding_batch: expected seq_len >= 2 and batch_size >= 1, got seq_len={seq_len}, "
                         f"batch_size={batch_size}")
    values = torch.rand(seq_len, batch_size, generator=generator, dtype=dtype)  # (T, B)
    half = seq_len // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, seq_len, (batch_size,), generator=generator)
    markers = torch.zeros(seq_len, batch_size, dtype=dtype)
    rows = torch.arange(batch_size)
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    y = (values * markers).sum(0, keepdim=True).T  # (B, 1)
    return torch.stack([values, markers], dim=2), y


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1) -> nn.Module:
    """An rnnlab layer for a cell name (one of :data:`CELLS`, or ``rnn`` for ``rnn_tanh``).

    Raises:
        ValueError: unknown cell name.
    """
    return layer_class(_SPECS[cell_name(cell)])(input_size, hidden_size, num_layers)


class LastStepRegressor(nn.Module):
    """A recurrent layer and a linear read-out of its last output: ``y = W h_T + b``.

    Shape: input ``(T, B, I)``; output ``(B, out_features)``.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 out_features: int = 1) -> None:
        super().__init__()
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (T, B, H)
        return self.head(out[-1])
