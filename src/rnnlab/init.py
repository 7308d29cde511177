r"""Initialisation presets for rnnlab recurrent layers and cells, selectable by name (``--init`` on the CLI).

Every preset starts from the weights the module already has (torch.nn's ``U(-1/sqrt(H), 1/sqrt(H))``) and changes
only what its paper changes:

* ``"torch"``: no change (torch.nn's default).
* ``"orthogonal"``: each ``H x H`` gate block of every ``W_hh`` is a random orthogonal matrix (Saxe, McClelland &
  Ganguli 2014, "Exact solutions to the nonlinear dynamics of learning in deep linear networks"): all singular
  values 1, so ``W_hh`` alone neither shrinks nor grows the gradient over many steps.
* ``"forget_bias"``: the LSTM forget-gate bias is 1 (Gers, Schmidhuber & Cummins 2000; Jozefowicz, Zaremba &
  Sutskever 2015, "An empirical exploration of recurrent network architectures"), so ``f = sigma(1 + ...)`` starts
  near 0.73 and the cell state, and its gradient, survive more steps. For a GRU the same idea biases the
  update gate ``z`` (torch's ``h' = (1 - z) n + z h``, so ``z`` is the "keep" gate) by 1.
* ``"irnn"``: ``W_hh = I`` and zero biases (Le, Jaitly & Hinton 2015, "A simple way to initialize recurrent
  networks of rectified linear units"), for Elman RNNs; the paper's cell is ReLU, a tanh RNN gets the same
  weights.
* ``"chrono"``: (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?") for an LSTM
  ``b_f ~ log(U(1, T_max - 1))`` and ``b_i = -b_f``, so the forget gates' characteristic forgetting times
  ``1 / (1 - f)`` spread over ``[2, T_max]``; for a GRU ``b_z ~ log(U(1, T_max - 1))`` (the paper writes the GRU
  with ``z`` on the new candidate; with torch's ``z`` on the old state the sign is +).

Gate presets (``forget_bias``, ``chrono``) on an Elman RNN, which has no gate, leave it unchanged and warn; the
bias is put in ``b_ih`` with the matching block of ``b_hh`` zeroed, since only their sum enters the gates.
"""

from __future__ import annotations

import math
import warnings
from typing import cast

import torch
from torch import Tensor, nn

from .cells import GRUCell, LSTMCell, RNNCell, _CellBase
from .layers import RNNBase

__all__ = ["INIT_PRESETS", "apply_init"]

INIT_PRESETS = ("torch", "orthogonal", "forget_bias", "irnn", "chrono")
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _groups(module: nn.Module) -> list[tuple[str, str, tuple[Tensor | None, ...]]]:
    """``(label, mode, (w_ih, w_hh, b_ih, b_hh))`` for each layer-direction of a layer, or the one of a cell."""
    if isinstance(module, RNNBase):
        if module.mode not in _GATES:
            raise ValueError(f"apply_init: {type(module).__name__} has a custom cell ({module.mode}); the presets "
                             f"know the gate layouts of {sorted(_GATES)}")
        return [(f"{type(module).__name__} l{layer}{'_reverse' if d else ''}", module.mode,
                 tuple(module.layer_weights(layer, d))[:4])
                for layer in range(module.num_layers) for d in range(module.num_directions)]
    modes: dict[type[nn.Module], str] = {LSTMCell: "LSTM", GRUCell: "GRU"}
    mode = modes.get(type(module))
    if mode is None and isinstance(module, RNNCell):
        mode = "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"
    weights = cast(tuple[Tensor | None, ...], (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh))
    return [(type(module).__name__, cast(str, mode), weights)]


def _set_gate_bias(label: str, mode: str, b_ih: Tensor | None, b_hh: Tensor | None, gate: int,
                   value: Tensor | float) -> None:
    if b_ih is None or b_hh is None:
        raise ValueError(f"apply_init: {label} has bias=False; this preset sets a gate bias and needs bias=True")
    H = b_ih.numel() // _GATES[mode]
    b_ih[gate * H:(gate + 1) * H] = value
    b_hh[gate * H:(gate + 1) * H] = 0.0


def _apply_one(label: str, mode: str, weights: tuple[Tensor | None, ...], name: str, t_max: float,
               generator: torch.Generator | None) -> None:
    w_ih, w_hh, b_ih, b_hh = weights
    w_hh = cast(Tensor, w_hh)  # weights are never None (only biases may be)
    H = w_hh.size(0) // _GATES[mode]
    gated = mode in ("LSTM", "GRU")
    if name == "orthogonal":
        for k in range(_GATES[mode]):
            block = torch.empty(H, w_hh.size(1), dtype=torch.float64)
            nn.init.orthogonal_(block, generator=generator)
            w_hh[k * H:(k + 1) * H] = block.to(w_hh.dtype)
    elif name == "irnn":
        if gated:
            raise ValueError(f"apply_init: 'irnn' (Le et al. 2015) is defined for Elman RNNs, got {label} "
                             f"({mode}); use 'orthogonal', 'forget_bias' or 'chrono' for gated cells")
        w_hh.copy_(torch.eye(H, dtype=w_hh.dtype))
        for b in (b_ih, b_hh):
            if b is not None:
                b.zero_()
    elif name in ("forget_bias", "chrono"):
        if not gated:
            warnings.warn(f"apply_init: {name!r} sets gate biases; {label} ({mode}) has no gate and is left "
                          f"unchanged", stacklevel=4)
            return
        if name == "forget_bias":
            _set_gate_bias(label, mode, b_ih, b_hh, 1, 1.0)  # LSTM f and GRU z are both block 1
        else:
            u = torch.rand(H, generator=generator, dtype=torch.float64) * (t_max - 2) + 1  # U(1, T_max - 1)
            b = u.log().to(w_hh.dtype)
            if mode == "LSTM":
                _set_gate_bias(label, mode, b_ih, b_hh, 1, b)  # forget gate
                _set_gate_bias(label, mode, b_ih, b_hh, 0, -b)  # input gate
            else:
                _set_gate_bias(label, mode, b_ih, b_hh, 1, b)  # update gate z (keep gate in torch's GRU)


def apply_init(module: nn.Module, name: str, *, t_max: float = 100.0,
               generator: torch.Generator | None = None) -> None:
    """Re-initialise the recurrent weights of ``module`` in place with the preset ``name``.

    Args:
        module: an rnnlab ``RNN/LSTM/GRU`` layer, an ``RNNCell/LSTMCell/GRUCell``, or any module containing them
            (every rnnlab recurrent layer and cell inside is re-initialised).
        name: one of :data:`INIT_PRESETS` (see the module docstring for each one's rule and paper).
        t_max: for ``"chrono"``, the longest dependency range to expect (e.g. the task's sequence length); > 2.
        generator: random source for ``"orthogonal"`` and ``"chrono"`` (the global one by default).

    Raises:
        ValueError: unknown name, no rnnlab recurrent module inside, ``irnn`` on a gated cell, a bias preset
            with ``bias=False``, or ``t_max <= 2``.

    Example:
        >>> lstm = rnnlab.LSTM(8, 32)
        >>> apply_init(lstm, "forget_bias")
        >>> float(lstm.bias_ih_l0[32:64].mean() + lstm.bias_hh_l0[32:64].mean())
        1.0
    """
    if name not in INIT_PRESETS:
        raise ValueError(f"apply_init: unknown init {name!r}; expected one of {list(INIT_PRESETS)}")
    if name == "chrono" and not (isinstance(t_max, (int, float)) and t_max > 2 and math.isfinite(t_max)):
        raise ValueError(f"apply_init: 'chrono' needs t_max > 2 (the longest expected dependency), got {t_max!r}")
    targets = [m for m in module.modules() if isinstance(m, (RNNBase, _CellBase))]
    if not targets:
        raise ValueError(f"apply_init: expected an rnnlab RNN/LSTM/GRU layer or cell (or a module containing "
                         f"one), got {type(module).__name__} with none")
    if name == "torch":
        return
    with torch.no_grad():
        for target in targets:
            for label, mode, weights in _groups(target):
                _apply_one(label, mode, weights, name, float(t_max), generator)
