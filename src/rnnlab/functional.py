"""One time step of each recurrent cell, as pure functions.

Everything else in rnnlab (cells, layers, the reference time loop, diagnostics) is built from these
functions, so this module is the one place where the maths and the weight layout are written down.

Weight layout (torch.nn's, so ``state_dict`` files load both ways with no converter)
-----------------------------------------------------------------------------------
The gate blocks of one cell are stacked along dim 0 of a single matrix:

* LSTM: ``W_ih = [W_ii | W_if | W_ig | W_io]`` of shape ``(4H, I)``, ``W_hh`` ``(4H, H_out)``, gate order
  **i, f, g, o** (input, forget, cell candidate, output). ``b_ih`` and ``b_hh`` are ``(4H,)`` each; only their
  sum matters for an LSTM, but torch keeps two vectors and so do we. With projections (Sak et al. 2014),
  ``W_hr`` ``(P, H)`` maps ``o * tanh(c)`` down to the hidden state, and ``H_out = P``.
* GRU: ``W_ih = [W_ir | W_iz | W_in]`` ``(3H, I)``, ``W_hh`` ``(3H, H)``, gate order **r, z, n** (reset, update,
  new). The reset gate multiplies ``W_hn h + b_hn`` (cuDNN's variant, which torch uses), not ``h`` itself, so
  the biases ``b_in`` and ``b_hn`` are *not* interchangeable.
* Elman RNN: ``W_ih`` ``(H, I)``, ``W_hh`` ``(H, H)``.
* The variants (:mod:`rnnlab.variants`) keep these blocks and gate orders and add their own vectors: the
  layer-normalised cells a gain per projection (``ln_ih_weight``, ``ln_hh_weight``) and, for the LSTM, a gain and
  shift of the cell (``ln_c_weight``, ``ln_c_bias``) with one bias ``b`` ``(4H,)`` instead of two; the peephole
  LSTM three diagonal weights ``w_ci``, ``w_cf``, ``w_co`` ``(H,)``.

Shapes: ``x`` is ``(B, I)``, states are ``(B, H)`` (or ``(B, P)`` for a projected LSTM's ``h``). The functions do
no shape checking: the modules check at the public boundary so that errors name the module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rnn_step", "lstm_step", "gru_step", "lstm_gates", "gru_gates", "preactivation", "layer_norm",
           "layer_norm_lstm_step", "layer_norm_lstm_gates", "layer_norm_gru_step", "layer_norm_gru_gates",
           "peephole_lstm_step", "peephole_lstm_gates", "NONLINEARITIES", "LAYER_NORM_EPS"]

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""One step of an Elman RNN.

    .. math::
        h' = \phi(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}), \quad \phi \in \{\tanh, \mathrm{relu}\}

    Args:
        x: input ``(B, I)``. h: previous hidden state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh: weights in torch.nn's layout (module docstring); biases may be ``None``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        The new hidden state ``(B, H)``.

    Example:
        >>> h = rnn_step(torch.zeros(2, 3), torch.zeros(2, 4), torch.randn(4, 3), torch.randn(4, 4))
    """
    phi = NONLINEARITIES[nonlinearity]
    return phi(preactivation(x, h, w_ih, w_hh, b_ih, b_hh))


def preactivation(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> Tensor:
    """``W_ih x + b_ih + W_hh h + b_hh``: all gate blocks side by side ``(B, G*H)`` (an LSTM's ``4H``), or what an
    Elman cell squashes ``(B, H)``. An Elman cell has no gates, and this is what saturates (tanh) or explodes
    (relu), so the diagnostics read it where a gated cell shows its gates."""
    return F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)


def lstm_step(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One step of an LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    .. math::
        i, f, g, o &= \sigma(\cdot), \sigma(\cdot), \tanh(\cdot), \sigma(\cdot)
                       \text{ of the blocks of } W_{ih} x + b_{ih} + W_{hh} h + b_{hh} \\
        c' &= f \odot c + i \odot g \\
        h' &= o \odot \tanh(c') \quad (\text{then } h' \leftarrow W_{hr} h' \text{ with projections})

    The additive path ``c' = f * c + ...`` is why an LSTM remembers: ``dc'/dc = f``, with no squashing
    derivative and no weight matrix in between.

    Args:
        x: input ``(B, I)``. state: ``(h, c)`` with ``h`` ``(B, H_out)`` and ``c`` ``(B, H)``.
        w_ih ``(4H, I)``, w_hh ``(4H, H_out)``, b_ih, b_hh ``(4H,)`` or ``None``, w_hr ``(P, H)`` or ``None``.

    Returns:
        ``(h', c')``.
    """
    h, c = state
    i, f, g, o = lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)  # (B, P)
    return h, c


def lstm_gates(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four activated LSTM gates ``(i, f, g, o)``, each ``(B, H)``, for input ``x`` and state ``h``."""
    return _lstm_activations(preactivation(x, h, w_ih, w_hh, b_ih, b_hh))


def _lstm_activations(a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sigma(a_i), sigma(a_f), tanh(a_g), sigma(a_o))`` of the pre-activations ``a`` ``(B, 4H)`` (i, f, g, o)."""
    i, f, g, o = a.chunk(4, dim=1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)


def gru_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    h_mask: Tensor | None = None,
) -> Tensor:
    r"""One step of a GRU (Cho et al. 2014), in torch.nn's (and cuDNN's) formulation.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    Args:
        x: input ``(B, I)``. h: previous hidden state ``(B, H)``.
        w_ih ``(3H, I)``, w_hh ``(3H, H)``, b_ih, b_hh ``(3H,)`` or ``None``.
        h_mask: recurrent dropout (Gal & Ghahramani 2016), ``(B, H)`` or ``None``: multiplied into ``h`` where it
            enters ``W_hh`` only. The carry ``z * h`` keeps the whole state, which is why a GRU step takes the
            mask and an LSTM step does not (an LSTM's ``h`` enters the step only through ``W_hh``).

    Returns:
        The new hidden state ``(B, H)``.
    """
    r, z, n = gru_gates(x, h if h_mask is None else h * h_mask, w_ih, w_hh, b_ih, b_hh)
    return (1 - z) * n + z * h


def gru_gates(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The activated GRU gates ``(r, z, n)``, each ``(B, H)``; ``h`` is the state as it enters ``W_hh``."""
    return _gru_activations(F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh))


def _gru_activations(xs: Tensor, hs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(r, z, n)`` from the input's and the state's projections ``xs``, ``hs`` ``(B, 3H)`` (order r, z, n): the
    reset gate multiplies the state's ``n`` block, bias included."""
    x_r, x_z, x_n = xs.chunk(3, dim=1)
    h_r, h_z, h_n = hs.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return r, z, n


# -- the variants (rnnlab.variants) ----------------------------------------------------------------------------

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; the compiled kernels (csrc/layernorm.cpp) use the same


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Layer normalisation of each row over its features (Ba, Kiros & Hinton 2016), as ``torch.nn.LayerNorm``.

    .. math::
        \mathrm{LN}(v; \gamma, \beta) = \frac{v - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta, \qquad
        \mu, \sigma^2 = \text{mean and (biased) variance of the row}, \quad \epsilon = 10^{-5}

    Args:
        v: ``(B, N)``. gain: ``\gamma`` ``(N,)``. bias: ``\beta`` ``(N,)`` or ``None`` (no shift).

    Returns:
        ``(B, N)``.
    """
    return F.layer_norm(v, v.shape[-1:], gain, bias, eps=LAYER_NORM_EPS)


def layer_norm_lstm_gates(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None, ln_ih_weight: Tensor, ln_hh_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The four activated gates ``(i, f, g, o)``, each ``(B, H)``, of :func:`layer_norm_lstm_step`.

    .. math::
        [a_i, a_f, a_g, a_o] = \mathrm{LN}(W_{ih} x; \gamma_{ih}) + \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b, \quad
        i, f, g, o = \sigma(a_i), \sigma(a_f), \tanh(a_g), \sigma(a_o)

    Each projection is normalised over all ``4H`` of its features, then the one bias ``b`` shifts the sum (the
    normalised terms have no shift of their own).
    """
    gates = layer_norm(F.linear(x, w_ih), ln_ih_weight) + layer_norm(F.linear(h, w_hh), ln_hh_weight)  # (B, 4H)
    if bias is not None:
        gates = gates + bias
    return _lstm_activations(gates)


def layer_norm_lstm_step(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    bias: Tensor | None,
    ln_ih_weight: Tensor,
    ln_hh_weight: Tensor,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""One step of the layer-normalised LSTM (Ba, Kiros & Hinton 2016, section 3.1 and the LSTM appendix).

    .. math::
        i, f, g, o &= \text{gates of } \mathrm{LN}(W_{ih} x; \gamma_{ih}) + \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b \\
        c' &= f \odot c + i \odot g \\
        h' &= o \odot \tanh(\mathrm{LN}(c'; \gamma_c, \beta_c))

    The cell itself is not normalised, only what ``h`` reads of it, so the additive path ``dc'/dc = f`` is the
    plain LSTM's.

    Args:
        x: input ``(B, I)``. state: ``(h, c)``, each ``(B, H)``.
        w_ih ``(4H, I)``, w_hh ``(4H, H)``, bias ``(4H,)`` or ``None``; ln_ih_weight, ln_hh_weight ``(4H,)``;
        ln_c_weight, ln_c_bias ``(H,)``.

    Returns:
        ``(h', c')``.
    """
    h, c = state
    i, f, g, o = layer_norm_lstm_gates(x, h, w_ih, w_hh, bias, ln_ih_weight, ln_hh_weight)
    c = f * c + i * g
    h = o * torch.tanh(layer_norm(c, ln_c_weight, ln_c_bias))
    return h, c


def layer_norm_gru_gates(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, ln_ih_weight: Tensor,
    ln_hh_weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The activated gates ``(r, z, n)``, each ``(B, H)``, of :func:`layer_norm_gru_step`; ``h`` is the state as it
    enters ``W_hh``.

    .. math::
        [x_r, x_z, x_n] = \mathrm{LN}(W_{ih} x; \gamma_{ih}) + b_{ih}, \quad
        [h_r, h_z, h_n] = \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b_{hh} \\
        r = \sigma(x_r + h_r), \quad z = \sigma(x_z + h_z), \quad n = \tanh(x_n + r \odot h_n)
    """
    xs = layer_norm(F.linear(x, w_ih), ln_ih_weight)  # (B, 3H)
    hs = layer_norm(F.linear(h, w_hh), ln_hh_weight)  # (B, 3H)
    if b_ih is not None and b_hh is not None:
        xs, hs = xs + b_ih, hs + b_hh
    return _gru_activations(xs, hs)


def layer_norm_gru_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    ln_ih_weight: Tensor,
    ln_hh_weight: Tensor,
    h_mask: Tensor | None = None,
) -> Tensor:
    r"""One step of the layer-normalised GRU: torch's GRU (:func:`gru_step`) with its two projections normalised.

    .. math::
        r, z, n &= \text{the gates of } \mathrm{LN}(W_{ih} x; \gamma_{ih}) + b_{ih} \text{ and }
                   \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b_{hh} \\
        h' &= (1 - z) \odot n + z \odot h

    Args:
        x: input ``(B, I)``. h: previous hidden state ``(B, H)``.
        w_ih ``(3H, I)``, w_hh ``(3H, H)``, b_ih, b_hh ``(3H,)`` or ``None``; ln_ih_weight, ln_hh_weight ``(3H,)``.
        h_mask: recurrent dropout ``(B, H)`` or ``None``, on ``h`` where it enters ``W_hh`` only (as :func:`gru_step`).

    Returns:
        The new hidden state ``(B, H)``.
    """
    r, z, n = layer_norm_gru_gates(x, h if h_mask is None else h * h_mask, w_ih, w_hh, b_ih, b_hh, ln_ih_weight,
                                   ln_hh_weight)
    return (1 - z) * n + z * h


def peephole_lstm_gates(
    x: Tensor, state: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
    w_ci: Tensor, w_cf: Tensor, w_co: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""The gates ``(i, f, g, o)`` of :func:`peephole_lstm_step` and the new cell ``c'`` they make, each ``(B, H)``.

    The output gate looks at the new cell, so the cell update sits between the gates and comes back with them.

    .. math::
        [a_i, a_f, a_g, a_o] &= W_{ih} x + b_{ih} + W_{hh} h + b_{hh} \quad (\text{torch's LSTM pre-activations}) \\
        i &= \sigma(a_i + w_{ci} \odot c), \quad f = \sigma(a_f + w_{cf} \odot c), \quad g = \tanh(a_g) \\
        c' &= f \odot c + i \odot g \\
        o &= \sigma(a_o + w_{co} \odot c')
    """
    h, c = state
    a_i, a_f, a_g, a_o = preactivation(x, h, w_ih, w_hh, b_ih, b_hh).chunk(4, dim=1)  # (B, H) each
    i = torch.sigmoid(a_i + w_ci * c)  # the input and forget gates look at the old cell
    f = torch.sigmoid(a_f + w_cf * c)
    g = torch.tanh(a_g)
    c = f * c + i * g
    o = torch.sigmoid(a_o + w_co * c)  # the output gate looks at the new cell
    return i, f, g, o, c


def peephole_lstm_step(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_ci: Tensor,
    w_cf: Tensor,
    w_co: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""One step of the peephole LSTM (Gers & Schmidhuber 2000, "Recurrent nets that time and count").

    The gates also see the cell, through diagonal weights (:func:`peephole_lstm_gates`):

    .. math::
        i &= \sigma(a_i + w_{ci} \odot c), \quad f = \sigma(a_f + w_{cf} \odot c), \quad g = \tanh(a_g) \\
        c' &= f \odot c + i \odot g \\
        o &= \sigma(a_o + w_{co} \odot c'), \quad h' = o \odot \tanh(c')

    where ``a`` are torch's LSTM pre-activations ``W_ih x + b_ih + W_hh h + b_hh``.

    With ``w_ci = w_cf = w_co = 0`` it is exactly :func:`lstm_step`.

    Args:
        x: input ``(B, I)``. state: ``(h, c)``, each ``(B, H)``.
        w_ih ``(4H, I)``, w_hh ``(4H, H)``, b_ih, b_hh ``(4H,)`` or ``None``; w_ci, w_cf, w_co ``(H,)``.

    Returns:
        ``(h', c')``.
    """
    i, f, g, o, c = peephole_lstm_gates(x, state, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)
    return o * torch.tanh(c), c
