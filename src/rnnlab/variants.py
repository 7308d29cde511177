r"""The cells users keep asking torch.nn for, as layers and cells with torch's arguments and conventions.

* :class:`LayerNormLSTM`, :class:`LayerNormLSTMCell`: the layer-normalised LSTM (Ba, Kiros & Hinton 2016).
* :class:`LayerNormGRU`, :class:`LayerNormGRUCell`: torch's GRU with its two projections layer-normalised.
* :class:`PeepholeLSTM`, :class:`PeepholeLSTMCell`: the peephole LSTM (Gers & Schmidhuber 2000).
* :class:`Recurrent`: the layer of any :class:`~rnnlab.cellspec.CellSpec`, for a cell of your own.

The equations are in each class's docstring and, as code, in :mod:`rnnlab.functional`; the cells' specs are in
:data:`rnnlab.cellspec.SPECS`. Each layer is multi-layer, bidirectional, takes packed input and all of
:class:`rnnlab.RNNBase`'s options. Each has a compiled whole-sequence kernel with a hand-written backward
(``rnnlab.kernels.peephole``, ``rnnlab.kernels.layernorm``), tested against the reference loop of its step;
costs are in docs/variants.md.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from . import layers
from .cellspec import LAYER_NORM_GRU_SPEC, LAYER_NORM_LSTM_SPEC, PEEPHOLE_LSTM_SPEC, CellSpec
from .cells import SpecCell
from .layers import RNN, RNNBase

__all__ = ["Recurrent", "LayerNormLSTM", "LayerNormGRU", "PeepholeLSTM", "LayerNormLSTMCell",
           "LayerNormGRUCell", "PeepholeLSTMCell", "layer_class"]


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


# -- the layers ----------------------------------------------------------------------------------------------
# Each takes torch.nn.GRU's arguments (no projections: a ``proj_size`` other than 0 is refused by RNNBase with a
# ValueError naming the cell) and RNNBase's keyword-only options.

class LayerNormLSTM(RNNBase):
    r"""Multi-layer layer-normalised LSTM (Ba, Kiros & Hinton 2016, section 3.1 and the LSTM appendix).

    For each element of the input sequence, each layer computes (:func:`rnnlab.functional.layer_norm_lstm_step`)

    .. math::
        [a_i, a_f, a_g, a_o] &= \mathrm{LN}(W_{ih} x_t; \gamma_{ih}) + \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}) + b \\
        i_t, f_t, g_t, o_t &= \sigma(a_i), \sigma(a_f), \tanh(a_g), \sigma(a_o) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \tanh(\mathrm{LN}(c_t; \gamma_c, \beta_c))

    where :math:`\mathrm{LN}` normalises each row over its features (eps 1e-5, as ``torch.nn.LayerNorm``).

    Args:
        input_size: features of the input ``x``. hidden_size: features of ``h`` and ``c``.
        num_layers: stacked layers (default 1). bias: use ``b`` (default ``True``).
        batch_first: input and output as ``(B, T, *)`` (default ``False``).
        dropout: dropout on the outputs of each layer but the last (default 0).
        bidirectional: run a second direction backwards and concatenate (default ``False``).
        device, dtype: of the parameters.
        options: :class:`rnnlab.RNNBase`'s keyword-only options (``backend``, ``recurrent_dropout``, ``zoneout``,
            ``weight_dropout``, ``forget_bias``, ``learn_init``, ``return_all_states``, ``return_gates``).

    Parameters (per layer ``k``, ``_reverse`` for the second direction): ``weight_ih_l{k}`` ``(4H, I)`` (``(4H,
    D*H)`` above the first layer), ``weight_hh_l{k}`` ``(4H, H)``, ``bias_l{k}`` ``(4H,)`` (one vector: the
    normalised terms have no shift of their own), all ``U(-1/sqrt(H), 1/sqrt(H))``; ``ln_ih_weight_l{k}``,
    ``ln_hh_weight_l{k}`` ``(4H,)`` and ``ln_c_weight_l{k}`` ``(H,)``, init 1; ``ln_c_bias_l{k}`` ``(H,)``, init 0.

    Shape (as ``torch.nn.LSTM``, ``D = 2`` if bidirectional else 1):
        input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or a PackedSequence.
        hx: ``(h_0, c_0)``, each ``(D * num_layers, B, H)`` (``(D * num_layers, H)`` unbatched); zeros if omitted.
        output: ``(T, B, D * H)``; ``(h_n, c_n)`` like ``hx``.

    Example:
        >>> layer = LayerNormLSTM(10, 20, num_layers=2)
        >>> output, (h_n, c_n) = layer(torch.randn(5, 3, 10))   # (5, 3, 20), (2, 3, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **options) -> None:
        super().__init__(LAYER_NORM_LSTM_SPEC, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, options.pop("proj_size", 0), device, dtype, **options)


class LayerNormGRU(RNNBase):
    r"""Multi-layer layer-normalised GRU: torch's GRU with its two projections normalised.

    For each element of the input sequence, each layer computes (:func:`rnnlab.functional.layer_norm_gru_step`)

    .. math::
        [x_r, x_z, x_n] &= \mathrm{LN}(W_{ih} x_t; \gamma_{ih}) + b_{ih}, \quad
        [h_r, h_z, h_n] = \mathrm{LN}(W_{hh} h_{t-1}; \gamma_{hh}) + b_{hh} \\
        r_t &= \sigma(x_r + h_r), \quad z_t = \sigma(x_z + h_z), \quad n_t = \tanh(x_n + r_t \odot h_n) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.GRU``.
        options: :class:`rnnlab.RNNBase`'s keyword-only options.

    Parameters (per layer ``k``): torch's GRU parameters ``weight_ih_l{k}`` ``(3H, I)``, ``weight_hh_l{k}``
    ``(3H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(3H,)``, all ``U(-1/sqrt(H), 1/sqrt(H))``, and the gains
    ``ln_ih_weight_l{k}``, ``ln_hh_weight_l{k}`` ``(3H,)``, init 1.

    Shape (as ``torch.nn.GRU``):
        input: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a PackedSequence.
        hx: ``(D * num_layers, B, H)``, zeros if omitted. output: ``(T, B, D * H)``; ``h_n`` like ``hx``.

    Example:
        >>> layer = LayerNormGRU(10, 20, bidirectional=True)
        >>> output, h_n = layer(torch.randn(5, 3, 10))   # (5, 3, 40), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **options) -> None:
        super().__init__(LAYER_NORM_GRU_SPEC, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, options.pop("proj_size", 0), device, dtype, **options)


class PeepholeLSTM(RNNBase):
    r"""Multi-layer peephole LSTM (Gers & Schmidhuber 2000, "Recurrent nets that time and count").

    The gates also see the cell, through diagonal weights (:func:`rnnlab.functional.peephole_lstm_step`):

    .. math::
        [a_i, a_f, a_g, a_o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
        i_t &= \sigma(a_i + w_{ci} \odot c_{t-1}), \quad f_t = \sigma(a_f + w_{cf} \odot c_{t-1}), \quad
        g_t = \tanh(a_g) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t &= \sigma(a_o + w_{co} \odot c_t), \quad h_t = o_t \odot \tanh(c_t)

    With ``w_c* = 0`` it is exactly :class:`rnnlab.LSTM` (and loads its ``state_dict`` with ``strict=False``).

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.LSTM`` (no ``proj_size``).
        options: :class:`rnnlab.RNNBase`'s keyword-only options.

    Parameters (per layer ``k``): torch's LSTM parameters and ``weight_ci_l{k}``, ``weight_cf_l{k}``,
    ``weight_co_l{k}`` ``(H,)``, all ``U(-1/sqrt(H), 1/sqrt(H))``.

    Shape (as ``torch.nn.LSTM``):
        input: ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a PackedSequence.
        hx: ``(h_0, c_0)``, each ``(D * num_layers, B, H)``, zeros if omitted. output: ``(T, B, D * H)``.

    Example:
        >>> layer = PeepholeLSTM(10, 20)
        >>> output, (h_n, c_n) = layer(torch.randn(5, 3, 10))   # (5, 3, 20), (1, 3, 20), (1, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, **options) -> None:
        super().__init__(PEEPHOLE_LSTM_SPEC, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, options.pop("proj_size", 0), device, dtype, **options)


# -- the cells: one step, with the layer's parameter names without the ``_l{k}`` suffix --------------------------

class LayerNormLSTMCell(SpecCell):
    r"""One step of :class:`LayerNormLSTM` (:func:`rnnlab.functional.layer_norm_lstm_step`).

    Args:
        input_size: features of ``x``. hidden_size: features of ``h`` and ``c``. bias: use ``bias``.
        device, dtype: of the parameters.

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(h, c)``, each ``(B, H)`` or ``(H,)``, zeros if omitted;
        returns ``(h', c')`` of the same shape.

    Example:
        >>> cell = LayerNormLSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3))   # (2, 5), (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(LAYER_NORM_LSTM_SPEC, input_size, hidden_size, bias, device=device, dtype=dtype)


class LayerNormGRUCell(SpecCell):
    r"""One step of :class:`LayerNormGRU` (:func:`rnnlab.functional.layer_norm_gru_step`).

    Args:
        input_size: features of ``x``. hidden_size: features of ``h``. bias: use ``bias_ih`` and ``bias_hh``.
        device, dtype: of the parameters.

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(B, H)`` or ``(H,)``, zeros if omitted; output like hx.

    Example:
        >>> cell = LayerNormGRUCell(3, 5)
        >>> h = cell(torch.randn(2, 3))   # (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(LAYER_NORM_GRU_SPEC, input_size, hidden_size, bias, device=device, dtype=dtype)


class PeepholeLSTMCell(SpecCell):
    r"""One step of :class:`PeepholeLSTM` (:func:`rnnlab.functional.peephole_lstm_step`).

    Args:
        input_size: features of ``x``. hidden_size: features of ``h`` and ``c``. bias: use ``bias_ih`` and
            ``bias_hh``. device, dtype: of the parameters.

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(h, c)``, each ``(B, H)`` or ``(H,)``, zeros if omitted;
        returns ``(h', c')`` of the same shape.

    Example:
        >>> cell = PeepholeLSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3))   # (2, 5), (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(PEEPHOLE_LSTM_SPEC, input_size, hidden_size, bias, device=device, dtype=dtype)


def layer_class(spec: CellSpec) -> Callable[..., RNNBase]:
    """The layer of a cell, called like ``torch.nn.GRU`` (``(input_size, hidden_size, num_layers, ...)``): its
    written-out class, the one named like the spec in :mod:`rnnlab.layers` or here (``LSTM``, ``LayerNormLSTM``);
    :class:`rnnlab.RNN` with its nonlinearity for torch's two Elman cells (one class, as in torch.nn); or
    :class:`Recurrent` bound to the spec for a cell without a class. The model zoo and the diagnostics build
    their layers with it, so a new entry in :data:`rnnlab.cellspec.SPECS` is all they need.

    Example:
        >>> from rnnlab.cellspec import SPECS
        >>> layer_class(SPECS["LayerNormGRU"]) is LayerNormGRU
        True
    """
    if spec.mode in ("RNN_TANH", "RNN_RELU"):
        return partial(RNN, nonlinearity=spec.mode[len("RNN_"):].lower())
    cls = getattr(layers, spec.name, None) or globals().get(spec.name)
    if isinstance(cls, type) and issubclass(cls, RNNBase):
        return cls
    return partial(Recurrent, spec)
