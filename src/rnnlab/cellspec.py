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
It returns the new state. The parameter function returns the shapes, in registration order. With the public API
alone (nothing to edit in rnnlab)::

    def params(input_size, hidden_size, bias, proj_size):
        return {"weight_ih": (hidden_size, input_size), "weight_hh": (hidden_size, hidden_size),
                **({"bias_ih": (hidden_size,)} if bias else {})}

    def step(x, h, p, h_mask):
        return torch.tanh(F.linear(x, p["weight_ih"], p.get("bias_ih")) + F.linear(masked(h, h_mask), p["weight_hh"]))

    MY_RNN = CellSpec("MyRNN", params, step)
    layer = rnnlab.Recurrent(MY_RNN, input_size=8, hidden_size=16, num_layers=2, bidirectional=True)

Such a cell runs on the reference loop (with a warning, once, when a faster backend was selected). A built-in cell
with a compiled fast path is four files, and nothing else lists cells:

1. its step (and gates) in :mod:`rnnlab.functional`, written like the equations;
2. one entry in :data:`SPECS` below: the adapters that bind ``p`` to that step, and the spec with its
   ``config_name`` (``--cell`` and the model zoo take it from here), ``gate_names`` and ``kernel``;
3. ``rnnlab/kernels/<cell>.py``: the kernel ``(SequenceRun) -> SequenceResult | None`` and its autograd Function;
4. ``rnnlab/kernels/csrc/<cell>.cpp``: the compiled forward and backward loops.

To make it public, add its written-out classes (layer and cell, in :mod:`rnnlab.variants`) and export them in
``rnnlab/__init__.py``. docs/variants.md, "Writing a new cell", walks through the peephole LSTM this way.

Parameters are initialised ``U(-1/sqrt(H), 1/sqrt(H))`` like torch.nn unless ``constant_init`` names a value.
A spec with a ``mode`` (torch's cell types) runs on a fused whole-sequence backend. A spec may also bring its own
whole-sequence ``kernel`` (a compiled loop with a hand-written backward, see :class:`SequenceRun`): the built-in
variants and torch's cells with recurrent dropout, zoneout or all-step outputs have one. Everything else runs on
the reference loop, and the layer says so once with a warning when a faster backend was selected.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from . import functional as RF
from .kernels import fused, layernorm, peephole
from .sequence import State, masked

if TYPE_CHECKING:
    from .sequence import SequenceResult, SequenceRun

__all__ = ["CellSpec", "masked", "SPECS", "LSTM_SPEC", "GRU_SPEC", "RNN_TANH_SPEC",
           "RNN_RELU_SPEC", "LAYER_NORM_LSTM_SPEC", "LAYER_NORM_GRU_SPEC", "PEEPHOLE_LSTM_SPEC", "LSTM_GATES",
           "GRU_GATES", "ELMAN_GATES"]

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
        gates: optional ``(x, state, p, h_mask) -> {gate name: activation (B, H)}`` for ``return_gates``, keyed
            by ``gate_names``.
        state_names: names of the state tensors, ``("h",)`` or ``("h", "c")``.
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
        stepper: optional ``(SequenceRun) -> ((x, state) -> state) | None`` that prepares one-step calls of the
            kernel's compiled op for a stream of one-step inference runs like the given one (generation), or
            declines with ``None``; taken only through :func:`rnnlab.kernels.stepper`, where
            :func:`rnnlab.kernels.run` would take ``kernel``. Each step must equal ``kernel`` on that step.
        gate_names: the gates in the order of their blocks in ``W_ih`` and ``W_hh`` (``("i", "f", "g", "o")``,
            ``("r", "z", "n")``, ``("pre",)`` for an Elman cell's pre-activation); the keys of ``gates``, and the
            labels the diagnostics give each block of ``W_hh``. Empty for a cell that names none.
        config_name: the cell's name in configs, on the command line (``--cell``) and in the model zoo
            (:data:`rnnlab.models.CELLS`); the name lower-cased when not given (``"lstm"``, ``"rnn_tanh"``).
        label: the cell's name in reports and figures (``"RNN (tanh)"``); the name when not given.
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
    stepper: Callable[[SequenceRun], Callable[[Tensor, State], State] | None] | None = None
    gate_names: tuple[str, ...] = ()
    config_name: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        # the defaults of the two names follow ``name`` (a frozen dataclass sets them through object.__setattr__)
        object.__setattr__(self, "config_name", self.config_name or self.name.lower())
        object.__setattr__(self, "label", self.label or self.name)

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


# -- torch.nn's cells: adapters from the parameter dict to rnnlab.functional -------------------------------------

LSTM_GATES = ("i", "f", "g", "o")
GRU_GATES = ("r", "z", "n")
ELMAN_GATES = ("pre",)  # an Elman cell has no gates; its pre-activation is what saturates or explodes


def _lstm_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    h, c = state
    return RF.lstm_step(x, (masked(h, h_mask), c), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                        p.get("bias_hh"), p.get("weight_hr"))


def _lstm_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    return dict(zip(LSTM_GATES, RF.lstm_gates(x, masked(state[0], h_mask), p["weight_ih"], p["weight_hh"],
                                              p.get("bias_ih"), p.get("bias_hh"))))


def _gru_step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
    return RF.gru_step(x, h, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"), h_mask)


def _gru_gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    return dict(zip(GRU_GATES, RF.gru_gates(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                                            p.get("bias_hh"))))


def _rnn(nonlinearity: str) -> tuple[Callable[..., State], Callable[..., dict[str, Tensor]]]:
    def step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
        return RF.rnn_step(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                           p.get("bias_hh"), nonlinearity)

    def gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
        return dict(zip(ELMAN_GATES, (RF.preactivation(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"],
                                                       p.get("bias_ih"), p.get("bias_hh")),)))

    return step, gates


LSTM_SPEC = CellSpec("LSTM", _torch_params(4, proj=True), _lstm_step, _lstm_gates, ("h", "c"), mode="LSTM",
                     forget_gate=("bias_ih", 1, 4), supports_proj=True, kernel=fused.lstm_kernel,
                     stepper=fused.lstm_stepper, gate_names=LSTM_GATES)
GRU_SPEC = CellSpec("GRU", _torch_params(3), _gru_step, _gru_gates, mode="GRU", forget_gate=("bias_ih", 1, 3),
                    kernel=fused.gru_kernel, stepper=fused.gru_stepper, gate_names=GRU_GATES)
RNN_TANH_SPEC = CellSpec("RNN_TANH", _torch_params(1), *_rnn("tanh"), mode="RNN_TANH", kernel=fused.rnn_tanh_kernel,
                         stepper=fused.rnn_tanh_stepper, gate_names=ELMAN_GATES, label="RNN (tanh)")
RNN_RELU_SPEC = CellSpec("RNN_RELU", _torch_params(1), *_rnn("relu"), mode="RNN_RELU", kernel=fused.rnn_relu_kernel,
                         stepper=fused.rnn_relu_stepper, gate_names=ELMAN_GATES, label="RNN (relu)")


# -- layer-normalised cells (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1 and appendix) ---------

def _ln_lstm_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    H = hidden_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (4 * H, input_size), "weight_hh": (4 * H, H)}
    if bias:
        shapes["bias"] = (4 * H,)
    return shapes | {"ln_ih_weight": (4 * H,), "ln_hh_weight": (4 * H,), "ln_c_weight": (H,), "ln_c_bias": (H,)}


def _ln_lstm_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    h, c = state
    return RF.layer_norm_lstm_step(x, (masked(h, h_mask), c), p["weight_ih"], p["weight_hh"], p.get("bias"),
                                   p["ln_ih_weight"], p["ln_hh_weight"], p["ln_c_weight"], p["ln_c_bias"])


def _ln_lstm_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    return dict(zip(LSTM_GATES, RF.layer_norm_lstm_gates(x, masked(state[0], h_mask), p["weight_ih"],
                                                         p["weight_hh"], p.get("bias"), p["ln_ih_weight"],
                                                         p["ln_hh_weight"])))


def _ln_gru_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    shapes = _torch_params(3)(input_size, hidden_size, bias)
    return shapes | {"ln_ih_weight": (3 * hidden_size,), "ln_hh_weight": (3 * hidden_size,)}


def _ln_gru_step(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> Tensor:
    return RF.layer_norm_gru_step(x, h, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                                  p["ln_ih_weight"], p["ln_hh_weight"], h_mask)


def _ln_gru_gates(x: Tensor, h: Tensor, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    return dict(zip(GRU_GATES, RF.layer_norm_gru_gates(x, masked(h, h_mask), p["weight_ih"], p["weight_hh"],
                                                       p.get("bias_ih"), p.get("bias_hh"), p["ln_ih_weight"],
                                                       p["ln_hh_weight"])))


LAYER_NORM_LSTM_SPEC = CellSpec(
    "LayerNormLSTM", _ln_lstm_params, _ln_lstm_step, _ln_lstm_gates, ("h", "c"), forget_gate=("bias", 1, 4),
    constant_init={"ln_ih_weight": 1.0, "ln_hh_weight": 1.0, "ln_c_weight": 1.0, "ln_c_bias": 0.0},
    kernel=layernorm.ln_lstm_kernel, gate_names=LSTM_GATES, config_name="layernorm_lstm")
LAYER_NORM_GRU_SPEC = CellSpec(
    "LayerNormGRU", _ln_gru_params, _ln_gru_step, _ln_gru_gates, forget_gate=("bias_ih", 1, 3),
    constant_init={"ln_ih_weight": 1.0, "ln_hh_weight": 1.0}, kernel=layernorm.ln_gru_kernel, gate_names=GRU_GATES,
    config_name="layernorm_gru")


# -- peephole LSTM (Gers & Schmidhuber 2000, "Recurrent nets that time and count") -----------------------------

def _peephole_params(input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> dict:
    shapes = _torch_params(4)(input_size, hidden_size, bias)
    return shapes | {"weight_ci": (hidden_size,), "weight_cf": (hidden_size,), "weight_co": (hidden_size,)}


def _peephole_step(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> State:
    h, c = state
    return RF.peephole_lstm_step(x, (masked(h, h_mask), c), p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                                 p.get("bias_hh"), p["weight_ci"], p["weight_cf"], p["weight_co"])


def _peephole_gates(x: Tensor, state: State, p: Params, h_mask: Tensor | None) -> dict[str, Tensor]:
    h, c = state
    i, f, g, o, _ = RF.peephole_lstm_gates(x, (masked(h, h_mask), c), p["weight_ih"], p["weight_hh"],
                                           p.get("bias_ih"), p.get("bias_hh"), p["weight_ci"], p["weight_cf"],
                                           p["weight_co"])  # and the new cell, which is the step's business
    return dict(zip(LSTM_GATES, (i, f, g, o)))


PEEPHOLE_LSTM_SPEC = CellSpec("PeepholeLSTM", _peephole_params, _peephole_step, _peephole_gates, ("h", "c"),
                              forget_gate=("bias_ih", 1, 4), kernel=peephole.peephole_kernel, gate_names=LSTM_GATES,
                              config_name="peephole_lstm")

SPECS: dict[str, CellSpec] = {s.name: s for s in (LSTM_SPEC, GRU_SPEC, RNN_TANH_SPEC, RNN_RELU_SPEC,
                                                   LAYER_NORM_LSTM_SPEC, LAYER_NORM_GRU_SPEC, PEEPHOLE_LSTM_SPEC)}


def __getattr__(name: str):
    # rnnlab 0.1 kept the sequence types here; they moved below the kernels (kept one release)
    if name in ("SequenceRun", "SequenceResult"):
        from . import sequence

        warnings.warn(f"rnnlab.cellspec.{name} is deprecated; use rnnlab.sequence.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(sequence, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
