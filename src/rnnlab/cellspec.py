r"""A recurrent cell as data: one step function plus its parameter shapes.

Everything a layer needs to know about a cell type is a :class:`CellSpec`. Give one to
:class:`rnnlab.Recurrent` (or subclass :class:`rnnlab.RNNBase`) and the cell gets the whole layer machinery:
stacked layers, bidirectional runs, ``batch_first``, unbatched and packed input, initial states, inter-layer
dropout, the layer options (recurrent dropout, zoneout, DropConnect, forget-gate bias, learnable initial state,
all-step outputs) and the diagnostics, which all run on the one reference time loop.

Writing a new cell
------------------
A step function takes the input ``x`` ``(B, I)``, the state (a tensor ``(B, H)``, or a tuple such as ``(h, c)``),
a mapping ``p`` from parameter names to tensors (one layer and direction; a missing bias reads as ``None``) and an
optional recurrent dropout mask ``h_mask`` ``(B, H)`` to multiply into ``h`` where it enters the recurrent matmul.
It returns the new state. The parameter function returns the shapes, in registration order::

    def params(input_size, hidden_size, bias, proj_size):
        return {"weight_ih": (hidden_size, input_size), "weight_hh": (hidden_size, hidden_size),
                **({"bias_ih": (hidden_size,)} if bias else {})}

    def step(x, h, p, h_mask):
        return torch.tanh(F.linear(x, p["weight_ih"], p.get("bias_ih")) + F.linear(masked(h, h_mask), p["weight_hh"]))

    MY_RNN = CellSpec("MyRNN", params, step)
    layer = rnnlab.Recurrent(MY_RNN, input_size=8, hidden_size=16, num_layers=2, bidirectional=True)

Parameters are initialised ``U(-1/sqrt(H), 1/sqrt(H))`` like torch.nn unless ``constant_init`` names a value.
A spec with a ``mode`` (torch's cell types) runs on a fused whole-sequence backend. A spec may also bring its own
whole-sequence ``kernel`` (a compiled loop with a hand-written backward, see :class:`SequenceRun`): the built-in
variants and torch's cells with recurrent dropout, zoneout or all-step outputs have one. Everything else runs on
the reference loop, and the layer says so once with a warning when a faster backend was selected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as RF
from .sequence import SequenceResult, SequenceRun, State, masked

__all__ = ["CellSpec", "SequenceRun", "SequenceResult", "masked", "SPECS", "LSTM_SPEC", "GRU_SPEC", "RNN_TANH_SPEC", "RNN_RELU_SPEC",
           "LAYER_NORM_LSTM_SPEC", "LAYER_NORM_GRU_SPEC", "PEEPHOLE_LSTM_SPEC"]

Params = Mapping[str, Tensor]
# ``(input_size, hidden_size, bias, proj_size=0) -> {name: shape}`` (Callable cannot spell the default).
ParamShapes = Callable[..., dict[str, tuple[int, ...]]]


@dataclass(frozen=True)
class CellSpec:
    """What a layer needs to know about a cell type.

    Attributes:
        name: shown in messages (``"LayerNormLSTM"``).
        params: ``(input_size, hidden_size, bias, proj_size) -> {name: shape}`` for one layer and direction.
        step: ``(x, state, p, h_mask) -> state``, one time step.
        gates: optional ``(x, state, p, h_mask) -> {gate name: activation (B, H)}`` for ``return_gates``.
        state_sizes: names of the state tensors, ``("h",)`` or ``("h", "c")``.
        mode: torch's cell type (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) when the parameters are
            exactly torch's, so a whole-sequence backend can run it; ``None`` otherwise.
        forget_gate: ``(bias name, chunk, chunks)``: where ``forget_bias`` writes (``None``: no such gate).
        constant_init: parameters initialised to a constant instead of ``U(-1/sqrt(H), 1/sqrt(H))``.
        supports_proj: whether ``proj_size > 0`` is meaningful (LSTM projections).
        kernel: optional whole-sequence implementation ``(SequenceRun) -> SequenceResult | None`` that a layer
            uses instead of the reference loop whenever its backend is not ``"reference"`` and the cell or an
            option changes the per-step maths (the variants; recurrent dropout, zoneout, all-step outputs on
            torch's cells). It must equal the reference loop of ``step`` (tested per kernel); returning ``None``
            declines a run it does not cover (a dtype, a device, an option), which then runs on the reference
            loop. A kernel with a hand-written backward must also support ``create_graph=True``: the built-in
            ones differentiate the reference loop then (:func:`rnnlab.kernels.reference.backward_through_loop`).
    """

    name: str
    params: ParamShapes
    # ``(x, state, params, h_mask)``; typed loosely because a one-state cell's step takes a Tensor, not the union.
    step: Callable[..., State]
    gates: Callable[..., dict[str, Tensor]] | None = None
    state_names: tuple[str, ...] = ("h",)
    mode: str | None = None
    forget_gate: tuple[str, int, int] | None = None
    constant_init: dict[str, float] = field(default_factory=dict)
    supports_proj: bool = False
    kernel: Callable[[SequenceRun], SequenceResult | None] | None = None

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def __reduce__(self):
        # The built-in specs pickle by name (their functions are closures); a user's spec pickles field by
        # field, which works when its functions are module-level.
        if SPECS.get(self.name) is self:
            return (_builtin_spec, (self.name,))
        return super().__reduce__()


def _builtin_spec(name: str) -> CellSpec:
    return SPECS[name]


def _torch_params(chunks: int, proj: bool = False) -> ParamShapes:
    """torch.nn's parameter shapes (and registration order) for a cell with ``chunks`` gate blocks."""

    def params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict[str, tuple[int, ...]]:
        gate_size, h_out = chunks * hidden_size, (proj_size or hidden_size)
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (gate_size, input_size), "weight_hh": (gate_size, h_out)}
        if bias:
            shapes |= {"bias_ih": (gate_size,), "bias_hh": (gate_size,)}
        if proj and proj_size > 0:
            shapes["weight_hr"] = (proj_size, hidden_size)
        return shapes

    return params


# -- torch.nn's cells ------------------------------------------------------------------------------------------

def _lstm_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    h, c = state
    return RF.lstm_step(x, (masked(h, h_mask), c), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                        p.get("bias_hh"), p.get("weight_hr"))


def _lstm_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    i, f, g, o = RF.lstm_gates(x, masked(state[0], h_mask), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                               p.get("bias_hh"))
    return {"i": i, "f": f, "g": g, "o": o}


def _gru_step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
    if h_mask is None:
        return RF.gru_step(x, h, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    # Gal & Ghahramani (2016) drop h only where it enters W_hh; the carry term z * h keeps the whole state.
    r, z, n = RF.gru_gates(x, h * h_mask, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    return (1 - z) * n + z * h


def _gru_gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    r, z, n = RF.gru_gates(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                           p.get("bias_hh"))
    return {"r": r, "z": z, "n": n}


def _rnn(nonlinearity: str) -> tuple[Callable[..., State], Callable[..., dict[str, Tensor]]]:
    def step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
        return RF.rnn_step(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                           p.get("bias_hh"), nonlinearity)

    def gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
        # An Elman cell has no gates; its pre-activation is what saturates (tanh) or explodes (relu).
        pre = F.linear(x, p["weight_ih"], p.get("bias_ih")) + F.linear(masked(h, h_mask), p["weight_hh"],
                                                                         p.get("bias_hh"))
        return {"pre": pre}

    return step, gates


# torch's cells' kernels (rnnlab.kernels.fused: the plain runs and the options on the compiled loops), imported on
# first use; a run without a cell gets this one (the double-backward route reruns it).
def _lstm_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.fused import lstm_kernel
    return lstm_kernel(run if run.cell is not None else replace(run, cell=LSTM_SPEC))


def _gru_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.fused import gru_kernel
    return gru_kernel(run if run.cell is not None else replace(run, cell=GRU_SPEC))


def _rnn_tanh_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.fused import rnn_tanh_kernel
    return rnn_tanh_kernel(run if run.cell is not None else replace(run, cell=RNN_TANH_SPEC))


def _rnn_relu_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.fused import rnn_relu_kernel
    return rnn_relu_kernel(run if run.cell is not None else replace(run, cell=RNN_RELU_SPEC))


LSTM_SPEC = CellSpec("LSTM", _torch_params(4, proj=True), _lstm_step, _lstm_gates, ("h", "c"), mode="LSTM",
                     forget_gate=("bias_ih", 1, 4), supports_proj=True, kernel=_lstm_kernel)
GRU_SPEC = CellSpec("GRU", _torch_params(3), _gru_step, _gru_gates, mode="GRU", forget_gate=("bias_ih", 1, 3),
                    kernel=_gru_kernel)
RNN_TANH_SPEC = CellSpec("RNN_TANH", _torch_params(1), *_rnn("tanh"), mode="RNN_TANH", kernel=_rnn_tanh_kernel)
RNN_RELU_SPEC = CellSpec("RNN_RELU", _torch_params(1), *_rnn("relu"), mode="RNN_RELU", kernel=_rnn_relu_kernel)


# -- layer-normalised cells (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1 and appendix) ---------

def _ln(v: Tensor, gain: Tensor, bias: Tensor | None = None) -> Tensor:
    """Layer normalisation over the features of each row (eps 1e-5, as torch.nn.LayerNorm)."""
    return F.layer_norm(v, v.shape[-1:], gain, bias, eps=1e-5)


def _ln_lstm_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    H = hidden_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (4 * H, input_size), "weight_hh": (4 * H, H)}
    if bias:
        shapes["bias"] = (4 * H,)
    return shapes | {"ln_ih_weight": (4 * H,), "ln_hh_weight": (4 * H,), "ln_c_weight": (H,), "ln_c_bias": (H,)}


def _ln_lstm_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    h = masked(state[0], h_mask)
    gates = (_ln(F.linear(x, p["weight_ih"]), p["ln_ih_weight"])
             + _ln(F.linear(h, p["weight_hh"]), p["ln_hh_weight"]))  # (B, 4H)
    if p.get("bias") is not None:
        gates = gates + p["bias"]
    i, f, g, o = gates.chunk(4, dim=1)
    return {"i": torch.sigmoid(i), "f": torch.sigmoid(f), "g": torch.tanh(g), "o": torch.sigmoid(o)}


def _ln_lstm_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    r"""``gates = LN(W_ih x) + LN(W_hh h) + b``; ``c' = f c + i g``; ``h' = o tanh(LN(c'))``."""
    gates = _ln_lstm_gates(x, state, p, h_mask)
    i, f, g, o = gates["i"], gates["f"], gates["g"], gates["o"]
    c = f * state[1] + i * g
    h = o * torch.tanh(_ln(c, p["ln_c_weight"], p["ln_c_bias"]))
    return h, c


def _ln_gru_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    shapes = _torch_params(3)(input_size, hidden_size, bias)
    return shapes | {"ln_ih_weight": (3 * hidden_size,), "ln_hh_weight": (3 * hidden_size,)}


def _ln_gru_gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    xs = _ln(F.linear(x, p["weight_ih"]), p["ln_ih_weight"])  # (B, 3H)
    hs = _ln(F.linear(masked(h, h_mask), p["weight_hh"]), p["ln_hh_weight"])  # (B, 3H)
    if p.get("bias_ih") is not None:
        xs, hs = xs + p["bias_ih"], hs + p["bias_hh"]
    x_r, x_z, x_n = xs.chunk(3, dim=1)
    h_r, h_z, h_n = hs.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    return {"r": r, "z": torch.sigmoid(x_z + h_z), "n": torch.tanh(x_n + r * h_n)}


def _ln_gru_step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
    r"""``[r, z, n]`` from ``LN(W_ih x) + b_ih`` and ``LN(W_hh h) + b_hh`` as in torch's GRU; ``h' = (1-z) n + z h``."""
    gates = _ln_gru_gates(x, h, p, h_mask)
    return (1 - gates["z"]) * gates["n"] + gates["z"] * h


def _ln_lstm_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.layernorm import ln_lstm_kernel  # lazy: the kernels module imports this one

    return ln_lstm_kernel(run)


def _ln_gru_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.layernorm import ln_gru_kernel

    return ln_gru_kernel(run)


LAYER_NORM_LSTM_SPEC = CellSpec(
    "LayerNormLSTM", _ln_lstm_params, _ln_lstm_step, _ln_lstm_gates, ("h", "c"), forget_gate=("bias", 1, 4),
    constant_init={"ln_ih_weight": 1.0, "ln_hh_weight": 1.0, "ln_c_weight": 1.0, "ln_c_bias": 0.0},
    kernel=_ln_lstm_kernel)
LAYER_NORM_GRU_SPEC = CellSpec(
    "LayerNormGRU", _ln_gru_params, _ln_gru_step, _ln_gru_gates, forget_gate=("bias_ih", 1, 3),
    constant_init={"ln_ih_weight": 1.0, "ln_hh_weight": 1.0}, kernel=_ln_gru_kernel)


# -- peephole LSTM (Gers & Schmidhuber 2000, "Recurrent nets that time and count") -----------------------------

def _peephole_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    shapes = _torch_params(4)(input_size, hidden_size, bias)
    return shapes | {"weight_ci": (hidden_size,), "weight_cf": (hidden_size,), "weight_co": (hidden_size,)}


def _peephole_parts(x: Tensor, state: State, p: Params, h_mask: Tensor | None):
    h, c = state
    a = F.linear(x, p["weight_ih"], p.get("bias_ih")) + F.linear(masked(h, h_mask), p["weight_hh"],
                                                                   p.get("bias_hh"))  # (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i = torch.sigmoid(a_i + p["weight_ci"] * c)  # the input and forget gates look at the old cell
    f = torch.sigmoid(a_f + p["weight_cf"] * c)
    g = torch.tanh(a_g)
    c = f * c + i * g
    o = torch.sigmoid(a_o + p["weight_co"] * c)  # the output gate looks at the new cell
    return i, f, g, o, c


def _peephole_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    r"""``i = σ(a_i + w_ci c)``, ``f = σ(a_f + w_cf c)``, ``c' = f c + i g``, ``o = σ(a_o + w_co c')``, ``h' = o tanh(c')``."""
    i, f, g, o, c = _peephole_parts(x, state, p, h_mask)
    return o * torch.tanh(c), c


def _peephole_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    return dict(zip("ifgo", _peephole_parts(x, state, p, h_mask)[:4]))


def _peephole_kernel(run: SequenceRun) -> SequenceResult | None:
    from .kernels.peephole import peephole_kernel  # lazy: the kernels package imports this module

    return peephole_kernel(run)


PEEPHOLE_LSTM_SPEC = CellSpec("PeepholeLSTM", _peephole_params, _peephole_step, _peephole_gates, ("h", "c"),
                              forget_gate=("bias_ih", 1, 4), kernel=_peephole_kernel)

SPECS: dict[str, CellSpec] = {s.name: s for s in (LSTM_SPEC, GRU_SPEC, RNN_TANH_SPEC, RNN_RELU_SPEC,
                                                   LAYER_NORM_LSTM_SPEC, LAYER_NORM_GRU_SPEC, PEEPHOLE_LSTM_SPEC)}
