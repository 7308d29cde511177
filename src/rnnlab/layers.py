"""Multi-layer, optionally bidirectional recurrent layers: drop-in replacements for ``torch.nn.RNN/LSTM/GRU``.

Same constructor arguments, input/output shapes, parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``) and initialisation as torch.nn, so ``state_dict`` files load both ways and, with the same
seed, a fresh rnnlab layer has exactly the weights of a fresh torch.nn layer.

The structure is composition: one whole-sequence kernel runs one layer in one direction
(:mod:`rnnlab.kernels`); a bidirectional layer concatenates a forward and a reversed run; layers feed each
other, with dropout in between in training mode. ``batch_first``, unbatched input and ``PackedSequence`` are
converted to the canonical ``(T, B, features)`` layout here, at the public edge.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional as RF
from ._checks import check_dtype_device, check_positive_int, check_probability, check_type
from .kernels import resolve_backend
from .kernels.reference import State, hidden_of

__all__ = ["RNNBase", "RNN", "LSTM", "GRU"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class RNNBase(nn.Module):
    """What RNN, LSTM and GRU share: parameters, checks, and the composition of layers and directions.

    Args (as torch.nn):
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype.
        backend: which whole-sequence kernel runs the layers (see :mod:`rnnlab.kernels`); ``None`` follows the
            process-wide default. Not a torch.nn argument: keyword only.
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if mode not in _GATES:
            raise ValueError(f"{name}: unrecognized RNN mode {mode!r}; expected one of {sorted(_GATES)}")
        check_positive_int(name, "input_size", input_size)
        check_positive_int(name, "hidden_size", hidden_size)
        check_positive_int(name, "num_layers", num_layers)
        for flag, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            check_type(name, flag, value, bool)
        check_probability(name, "dropout", dropout)
        check_type(name, "proj_size", proj_size, int)
        if proj_size < 0:
            raise ValueError(f"{name}: proj_size should be a positive integer or zero to disable projections, "
                             f"got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f"and hidden_size={hidden_size}")
        if proj_size and mode != "LSTM":
            raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{name}: dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3)
        if backend is not None:
            resolve_backend(backend)  # fail now, not at the first forward

        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend

        num_directions = 2 if bidirectional else 1
        gate_size = _GATES[mode] * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}
        # Registration order is torch's (per layer, per direction: w_ih, w_hh, b_ih, b_hh, w_hr) so that
        # reset_parameters draws the same numbers as torch.nn from the same seed.
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = {
                    f"weight_ih_l{layer}{suffix}": (gate_size, layer_input_size),
                    f"weight_hh_l{layer}{suffix}": (gate_size, real_hidden_size),
                }
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gate_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gate_size,)
                if proj_size > 0:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (proj_size, hidden_size)
                for param_name, shape in shapes.items():
                    setattr(self, param_name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(shapes)
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in registration order (torch.nn's rule)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per layer and direction, as torch.nn's ``all_weights``."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn (there is no cuDNN flat buffer to compact)."""

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor | None, ...]:
        """``(w_ih, w_hh, b_ih, b_hh[, w_hr])`` of one layer and direction; biases are ``None`` when ``bias=False``."""
        suffix = "_reverse" if direction == 1 else ""
        get = lambda n: getattr(self, f"{n}_l{layer}{suffix}", None)  # noqa: E731
        weights = (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))
        return weights + (get("weight_hr"),) if self.proj_size > 0 else weights

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s

    # -- forward ---------------------------------------------------------------------------------------------

    def _initial_states(self, hx, batch: int, batched: bool, x: Tensor) -> list[State]:
        """Per (layer, direction) initial states, checked against the expected shapes (never broadcast)."""
        name = type(self).__name__
        n = self.num_layers * self.num_directions
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = [h_size, self.hidden_size] if self.mode == "LSTM" else [h_size]
        if hx is None:
            zeros = [torch.zeros(n, batch, s, dtype=x.dtype, device=x.device) for s in sizes]
        else:
            if self.mode == "LSTM":
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
                given = list(hx)
            else:
                if not isinstance(hx, Tensor):
                    raise TypeError(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
                given = [hx]
            zeros = []
            for k, (s, size) in enumerate(zip(given, sizes)):
                label = f"hx[{k}]" if self.mode == "LSTM" else "hx"
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name}: {label} must be a Tensor, got {type(s).__name__}")
                check_dtype_device(name, label, s, x)
                expected = (n, batch, size) if batched else (n, size)
                if tuple(s.shape) != expected:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(f"{name}: for {kind} input, expected {label} of size {expected}, "
                                       f"got {tuple(s.shape)}")
                zeros.append(s if batched else s.unsqueeze(1))
        per_state = [z.unbind(0) for z in zeros]
        if self.mode == "LSTM":
            return list(zip(*per_state))
        return list(per_state[0])

    def forward(self, input: Tensor | PackedSequence, hx=None):
        """Run the stack over a whole sequence.

        Shape (``L`` layers, ``D`` directions, ``H_out = proj_size or hidden_size``):
            input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or a PackedSequence.
            hx: ``(L*D, B, H_out)`` (``(L*D, H_out)`` unbatched), for an LSTM a tuple ``(h_0, c_0)`` with ``c_0``
            ``(L*D, B, H)``; zeros if omitted.
            output: ``(T, B, D*H_out)`` (same layout conventions as input); h_n like hx.

        Raises:
            ValueError: input is not 2-D or 3-D. TypeError: wrong dtype or hx type.
            RuntimeError: input.size(-1) != input_size, or hx of the wrong shape or device.
        """
        name = type(self).__name__
        first_weight = self.weight_ih_l0
        lengths = None
        if isinstance(input, PackedSequence):
            check_dtype_device(name, "input", input.data, first_weight)
            x, lengths = pad_packed_sequence(input)  # (T, B, I), batch in the caller's (unsorted) order
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        check_dtype_device(name, "input", x, first_weight)
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.size(-1)}")
        if x.size(0) == 0 or x.size(1) == 0:
            raise ValueError(f"{name}: expected a non-empty sequence and batch, got input of shape "
                             f"{tuple(input.shape) if isinstance(input, Tensor) else tuple(x.shape)}")
        states = self._initial_states(hx, x.size(1), batched, x)

        run_layer = resolve_backend(self.backend)
        finals: list[State] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                out, final = run_layer(self.mode, x, states[layer * self.num_directions + direction],
                                       self.layer_weights(layer, direction), reverse=direction == 1,
                                       lengths=lengths)
                outputs.append(out)
                finals.append(final)
            x = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # (T, B, D*H_out)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)

        h_n = torch.stack([hidden_of(f) for f in finals])
        hidden = (h_n, torch.stack([f[1] for f in finals])) if self.mode == "LSTM" else h_n
        if isinstance(input, PackedSequence):
            return _repack(x, lengths, input), hidden
        if not batched:
            hidden = tuple(s.squeeze(1) for s in hidden) if self.mode == "LSTM" else hidden.squeeze(1)
            return x.squeeze(1), hidden
        return (x.transpose(0, 1) if self.batch_first else x), hidden


def _repack(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack ``padded`` (T, B, F), batch in original order, with exactly the batch layout of ``like``."""
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices)
        lengths = lengths[like.sorted_indices.cpu()]
    packed = pack_padded_sequence(padded, lengths, enforce_sorted=True)
    return PackedSequence(packed.data, packed.batch_sizes, like.sorted_indices, like.unsorted_indices)


class RNN(RNNBase):
    r"""Multi-layer Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu).

    Drop-in for ``torch.nn.RNN``: same arguments (``nonlinearity`` is the fourth), shapes and parameter names.

    Example:
        >>> rnn = RNN(10, 20, 2)
        >>> output, h_n = rnn(torch.randn(5, 3, 10))   # (5, 3, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, proj_size: int = 0, backend: str | None = None) -> None:
        if nonlinearity not in RF.NONLINEARITIES:
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    r"""Multi-layer LSTM with optional projections; gates i, f, g, o (see :func:`rnnlab.functional.lstm_step`).

    Drop-in for ``torch.nn.LSTM``. Returns ``output, (h_n, c_n)``.

    Example:
        >>> lstm = LSTM(10, 20, num_layers=2, bidirectional=True)
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))   # (5, 3, 40), (4, 3, 20), (4, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str | None = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)


class GRU(RNNBase):
    r"""Multi-layer GRU; gates r, z, n with the reset gate on ``W_hn h + b_hn`` (see :func:`rnnlab.functional.gru_step`).

    Drop-in for ``torch.nn.GRU``.

    Example:
        >>> gru = GRU(10, 20, 2, batch_first=True)
        >>> output, h_n = gru(torch.randn(3, 5, 10))   # (3, 5, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, proj_size: int = 0, backend: str | None = None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)
