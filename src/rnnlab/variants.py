r"""The cells users keep asking torch.nn for, each written as a :class:`~rnnlab.cellspec.CellSpec`.

* :class:`LayerNormLSTM` (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1 and its LSTM appendix):

  .. math::
      [i, f, g, o] &= \mathrm{LN}(W_{ih} x_t; \gamma_{ih}) + \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}) + b \\
      c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g) \\
      h_t &= \sigma(o) \odot \tanh(\mathrm{LN}(c_t; \gamma_c, \beta_c))

  Parameters per layer: ``weight_ih``, ``weight_hh``, ``bias`` (one ``4H`` vector: the normalised terms have no
  shift of their own), ``ln_ih_weight``, ``ln_hh_weight`` (``4H``, init 1), ``ln_c_weight`` (init 1),
  ``ln_c_bias`` (init 0). LN normalises each row over its features, eps 1e-5.

* :class:`LayerNormGRU`: torch's GRU with the two projections normalised,
  ``[x_r, x_z, x_n] = LN(W_ih x; γ_ih) + b_ih``, ``[h_r, h_z, h_n] = LN(W_hh h; γ_hh) + b_hh``, then
  ``r = σ(x_r + h_r)``, ``z = σ(x_z + h_z)``, ``n = tanh(x_n + r ⊙ h_n)``, ``h' = (1 - z) ⊙ n + z ⊙ h``.

* :class:`PeepholeLSTM` (Gers & Schmidhuber 2000, "Recurrent nets that time and count"): the gates also see the
  cell, through diagonal weights: ``i = σ(a_i + w_ci ⊙ c_{t-1})``, ``f = σ(a_f + w_cf ⊙ c_{t-1})``,
  ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``o = σ(a_o + w_co ⊙ c_t)``, ``h_t = o ⊙ tanh(c_t)``, where ``a`` are torch's
  LSTM pre-activations. With ``w_c* = 0`` it is exactly ``rnnlab.LSTM``.

Each is a layer (multi-layer, bidirectional, packed input, all of :class:`rnnlab.RNNBase`'s options) and a cell.
Each has a compiled whole-sequence kernel with a hand-written backward (``rnnlab.kernels.peephole``,
``rnnlab.kernels.layernorm``), tested against the reference loop of its step; costs are in docs/variants.md.
"""

from __future__ import annotations

from .cellspec import LAYER_NORM_GRU_SPEC, LAYER_NORM_LSTM_SPEC, PEEPHOLE_LSTM_SPEC, CellSpec
from .cells import SpecCell
from .layers import RNNBase

__all__ = ["Recurrent", "LayerNormLSTM", "LayerNormGRU", "PeepholeLSTM", "LayerNormLSTMCell",
           "LayerNormGRUCell", "PeepholeLSTMCell"]


class Recurrent(RNNBase):
    """A multi-layer recurrent layer for any :class:`~rnnlab.cellspec.CellSpec` (see that module for how to write one).

    Example:
        >>> from rnnlab.cellspec import LAYER_NORM_LSTM_SPEC
        >>> layer = Recurrent(LAYER_NORM_LSTM_SPEC, 8, 16, num_layers=2, bidirectional=True)
        >>> out, (h, c) = layer(torch.randn(5, 3, 8))
    """

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, **options) -> None:
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, **options)


def _layer(spec: CellSpec, doc: str) -> type[RNNBase]:
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **options) -> None:
        # no projections in these cells: a proj_size other than 0 is refused by RNNBase (ValueError, as torch's GRU)
        proj_size = options.pop("proj_size", 0)
        RNNBase.__init__(self, spec, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, **options)

    return type(spec.name, (RNNBase,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


def _cell(spec: CellSpec, doc: str) -> type[SpecCell]:
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        SpecCell.__init__(self, spec, input_size, hidden_size, bias, device=device, dtype=dtype)

    return type(f"{spec.name}Cell", (SpecCell,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


LayerNormLSTM = _layer(LAYER_NORM_LSTM_SPEC, "Layer-normalised LSTM layer (Ba et al. 2016); see the module docstring.")
LayerNormGRU = _layer(LAYER_NORM_GRU_SPEC, "Layer-normalised GRU layer; see the module docstring.")
PeepholeLSTM = _layer(PEEPHOLE_LSTM_SPEC, "Peephole LSTM layer (Gers & Schmidhuber 2000); see the module docstring.")
LayerNormLSTMCell = _cell(LAYER_NORM_LSTM_SPEC, "One step of :class:`LayerNormLSTM`.")
LayerNormGRUCell = _cell(LAYER_NORM_GRU_SPEC, "One step of :class:`LayerNormGRU`.")
PeepholeLSTMCell = _cell(PEEPHOLE_LSTM_SPEC, "One step of :class:`PeepholeLSTM`.")
