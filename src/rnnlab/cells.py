"""One-step modules: drop-in replacements for ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell``.

A cell owns its parameters (torch's names and shapes, so ``state_dict`` files load both ways) and calls the
pure step function in :mod:`rnnlab.functional`. The boundary checks live here so that errors name the cell.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from . import functional as RF
from ._checks import check_cell_size, check_same_dtype, given_states
from .cellspec import GRU_SPEC, LSTM_SPEC, RNN_RELU_SPEC, RNN_TANH_SPEC, CellSpec

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "SpecCell"]


class _CellBase(nn.Module):
    """One step of a :class:`rnnlab.cellspec.CellSpec`: its parameters (the spec's names, no layer suffix) and init.

    For torch's cell types that is ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh``
    ``(G*H,)``, initialised exactly as torch.nn does.
    """

    spec: CellSpec
    weight_ih: Tensor  # registered in __init__ (from the spec); declared for type checkers

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        name = type(self).__name__
        # torch.nn's cells accept sizes of 0 (an empty input or state) and any truthy or falsy ``bias``
        # (PyTorch's own module tests build GRUCell(10, 20, 'relu'), which has biases).
        check_cell_size(name, "input_size", input_size)
        check_cell_size(name, "hidden_size", hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        for param_name, shape in self.spec.params(input_size, hidden_size, bool(bias), 0).items():
            setattr(self, param_name, nn.Parameter(torch.empty(shape, **factory)))
        if not bias and self.spec.mode is not None:  # torch.nn keeps the names, set to None
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in registration order, exactly as torch.nn does
        (except the spec's ``constant_init`` parameters, such as layer-norm gains)."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name in self.spec.constant_init:
                    weight.fill_(self.spec.constant_init[name])
                else:
                    nn.init.uniform_(weight, -stdv, stdv)

    def forward(self, input: Tensor, hx=None):
        """One step. ``hx`` is the state (a tuple for cells with a cell state), zeros when omitted."""
        n_states = self.spec.n_states
        x, states, batched = self._prepare(input, hx, n_states)
        params = dict(self.named_parameters())
        new = self.spec.step(x, tuple(states) if n_states > 1 else states[0], params, None)
        if batched:
            return new
        if n_states > 1:
            return tuple(s.squeeze(0) for s in new)
        return cast(Tensor, new).squeeze(0)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _prepare(self, input: Tensor, hx, n_states: int) -> tuple[Tensor, list[Tensor], bool]:
        """Check the call as torch.nn's cell does, in its order; return a batched input, batched states and
        whether the input was batched."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        given = given_states(name, hx, n_states)
        for k, s in enumerate(given or ()):
            if s.dim() not in (1, 2):
                label = "hidden" if n_states == 1 else f"hx[{k}]"
                raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {s.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if given is None:
            zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
            states = [zeros] * n_states
        else:
            states = [s if batched else s.unsqueeze(0) for s in given]
        # torch.nn's messages (from its C++ cell ops), in their order: input size, then per state batch and size
        if x.size(1) != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {x.size(1)} expected "
                               f"{self.input_size}")
        for k, s in enumerate(states):
            if s.size(0) != x.size(0):
                raise RuntimeError(f"{name}: Input batch size {x.size(0)} doesn't match hidden{k} batch size "
                                   f"{s.size(0)}")
            if s.size(1) != self.hidden_size:
                raise RuntimeError(f"{name}: hidden{k} has inconsistent hidden_size: got {s.size(1)}, expected "
                                   f"{self.hidden_size}")
            if s.dim() != 2:  # torch's check reads two dims and would run an unbatched input with an (H, B) state
                raise RuntimeError(f"{name}: for unbatched input, the state must have shape ({self.hidden_size},), "
                                   f"got {tuple(s.shape[1:])}")
        check_same_dtype(name, "input", x, self.weight_ih)
        for k, s in enumerate(states):
            check_same_dtype(name, "hx" if n_states == 1 else f"hx[{k}]", s, self.weight_ih)
        return x, states, batched


class RNNCell(_CellBase):
    r"""An Elman RNN cell: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu). Drop-in for ``torch.nn.RNNCell``.

    Args:
        input_size: features in ``x``. hidden_size: features in ``h``. bias: use ``b_ih`` and ``b_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(B, H)`` or ``(H,)``, zeros if omitted; output like hx.

    Raises (as torch.nn.RNNCell; see tests/test_conformance.py):
        ValueError: input or hx not 1-D or 2-D.
        RuntimeError: input or hx size does not match the cell, a dtype other than the weights', a negative size,
            an unknown nonlinearity.
        TypeError: a size that is not an int.

    Example:
        >>> cell = RNNCell(3, 5)
        >>> h = cell(torch.randn(2, 3))            # (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        if nonlinearity not in RF.NONLINEARITIES:
            # torch.nn raises this RuntimeError at the first forward; a cell that can never run fails here
            raise RuntimeError(f"RNNCell: Unknown nonlinearity: {nonlinearity}; select from 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        self.spec = RNN_TANH_SPEC if nonlinearity == "tanh" else RNN_RELU_SPEC
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return super().forward(input, hx)


class LSTMCell(_CellBase):
    r"""An LSTM cell (gates i, f, g, o; see :func:`rnnlab.functional.lstm_step`). Drop-in for ``torch.nn.LSTMCell``.

    .. math::
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(h, c)`` each ``(B, H)`` or ``(H,)``, zeros if omitted;
        returns ``(h', c')`` of the same shape.

    Example:
        >>> cell = LSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3))
    """

    spec = LSTM_SPEC

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return super().forward(input, hx)


class GRUCell(_CellBase):
    r"""A GRU cell (gates r, z, n; see :func:`rnnlab.functional.gru_step`). Drop-in for ``torch.nn.GRUCell``.

    .. math::
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})), \qquad h' = (1 - z) \odot n + z \odot h

    Shape:
        input ``(B, I)`` or ``(I,)``; hx ``(B, H)`` or ``(H,)``, zeros if omitted; output like hx.

    Example:
        >>> cell = GRUCell(3, 5)
        >>> h = cell(torch.randn(2, 3))
    """

    spec = GRU_SPEC

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return super().forward(input, hx)


class SpecCell(_CellBase):
    """The one-step module of any :class:`rnnlab.cellspec.CellSpec`.

    Example:
        >>> from rnnlab.cellspec import LAYER_NORM_LSTM_SPEC
        >>> cell = SpecCell(LAYER_NORM_LSTM_SPEC, 3, 5)
        >>> h, c = cell(torch.randn(2, 3))
    """

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        self.spec = spec
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
