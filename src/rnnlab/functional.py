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

Shapes: ``x`` is ``(B, I)``, states are ``(B, H)`` (or ``(B, P)`` for a projected LSTM's ``h``). The functions do
no shape checking: the modules check at the public boundary so that errors name the module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rnn_step", "lstm_step", "gru_step", "lstm_gates", "gru_gates", "NONLINEARITIES"]

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
    return phi(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


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
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)


def gru_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
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

    Returns:
        The new hidden state ``(B, H)``.
    """
    r, z, n = gru_gates(x, h, w_ih, w_hh, b_ih, b_hh)
    return (1 - z) * n + z * h


def gru_gates(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The activated GRU gates ``(r, z, n)``, each ``(B, H)``; ``h`` is the state as it enters ``W_hh``."""
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return r, z, n
