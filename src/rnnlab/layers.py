"""Multi-layer, optionally bidirectional recurrent layers: drop-in replacements for ``torch.nn.RNN/LSTM/GRU``.

Same constructor arguments, input/output shapes, parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``) and initialisation as torch.nn, so ``state_dict`` files load both ways and, with the same
seed, a fresh rnnlab layer has exactly the weights of a fresh torch.nn layer.

The structure is composition: the one dispatch :func:`rnnlab.kernels.run` runs one layer in one direction
(the cell's compiled kernel or the reference loop); a bidirectional layer concatenates a forward and a reversed
run; layers feed each other, with dropout in between in training mode. ``batch_first``, unbatched input and
``PackedSequence`` are converted to the canonical ``(T, B, features)`` layout here, at the public edge.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional as RF
from . import kernels
from ._checks import (check_input_dtype, check_positive_int, check_probability, check_same_dtype, check_type,
                      given_states)
from .cellspec import SPECS, CellSpec
from .kernels import capturing, transformed
from .kernels.masks import drop_connect, sequence_masks
from .sequence import GradientSink, SequenceResult, SequenceRun, State, Step, hidden_of

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "AllStates", "StepObserver", "observe_steps"]


class StepObserver(Protocol):
    """Sees every step of every layer-direction while :func:`observe_steps` is active (see there)."""

    def wrap(self, module: "RNNBase", layer: int, direction: int, step: Callable[[Tensor, State], State],
             state: State, steps: int) -> tuple[Callable[[Tensor, State], State], State]:
        """Return the step function (and initial state) to run instead of ``step`` (and ``state``)."""
        ...



_observer: ContextVar[StepObserver | None] = ContextVar("rnnlab_step_observer", default=None)


@contextmanager
def observe_steps(observer: StepObserver) -> Iterator[StepObserver]:
    """Run every rnnlab recurrent layer on the reference loop and let ``observer`` wrap each step function.

    This is the hook :mod:`rnnlab.diagnostics` uses to read ``h_t`` (and its gradient) at every step of any cell,
    variants included: the observer's ``wrap(module, layer, direction, step, state, steps)`` is called once per
    layer-direction and forward, with the step function the layer would run (options such as zoneout
    already applied) and its initial state; ``steps`` is T, walked from T-1 down to 0 when ``direction == 1``.
    Outside the block nothing is wrapped and it costs nothing.

    An observer may also define ``sink(module, layer, direction, x, state, steps) -> (GradientSink, state) |
    None``. It is asked first when a torch cell without options or lengths would run on its compiled kernel with
    gradients: a returned :class:`rnnlab.sequence.GradientSink` then receives the kernel's per-step cell states
    and total state gradients (which its backward forms anyway), so the layer keeps its fast kernel; ``None``
    means: use ``wrap`` and the reference loop. The choice is made by :func:`rnnlab.kernels.run`.

    Raises:
        RuntimeError: an observer is already active (blocks do not nest).
    """
    if _observer.get() is not None:
        raise RuntimeError("rnnlab.observe_steps: an observer is already active; blocks do not nest")
    token = _observer.set(observer)
    try:
        yield observer
    finally:
        _observer.reset(token)


class _BoundObserver:
    """The active observer bound to one layer-direction of one forward (:class:`rnnlab.kernels.BoundObserver`)."""

    def __init__(self, observer: StepObserver, module: "RNNBase", layer: int, direction: int, steps: int) -> None:
        self.observer, self.module, self.layer, self.direction, self.steps = observer, module, layer, direction, steps

    def wrap(self, step: Step, state: State) -> tuple[Step, State]:
        return self.observer.wrap(self.module, self.layer, self.direction, step, state, self.steps)

    def sink(self, seq: SequenceRun) -> tuple[GradientSink, State] | None:
        sink = getattr(self.observer, "sink", None)
        # A kernel trace follows torch's step of the cell (no options) over full-length sequences: the runs
        # torch's own op computes exactly.
        if sink is None or not kernels.native.covers_natively(seq):
            return None
        return sink(self.module, self.layer, self.direction, seq.x, seq.state, self.steps)


class AllStates(NamedTuple):
    """Every step of every layer, returned as a third output when ``return_all_states=True``.

    Shapes follow the output's layout with a leading layer axis: ``(L, T, B, D*H)`` (``(L, B, T, D*H)`` with
    ``batch_first``, ``(L, T, D*H)`` unbatched; packed input gives the padded ``(L, T, B, D*H)``). Steps past a
    sequence's length are zero.

    Attributes:
        h: the hidden state after every step (for the last layer this equals the output).
        c: the LSTM cell state after every step, or ``None`` for cells without one.
        gates: ``{gate name: activation}`` (``i, f, g, o``; ``r, z, n``; ``pre`` for Elman cells) when
            ``return_gates=True``, else ``None``.
    """

    h: Tensor
    c: Tensor | None
    gates: dict[str, Tensor] | None


class RNNBase(nn.Module):
    """What every recurrent layer shares: parameters, checks, options, and the composition of layers and directions.

    Args (as torch.nn):
        mode: a :class:`rnnlab.cellspec.CellSpec`, or torch's name of one (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``,
            ``"RNN_RELU"``).
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype.

    Keyword-only options (not in torch.nn; all off by default, and then the layer equals torch.nn's):
        backend: the whole-sequence kernel (see :mod:`rnnlab.kernels`); ``None`` follows the process default.
        recurrent_dropout: variational dropout of ``h_{t-1}`` where it enters ``W_hh``, one mask per sequence
            and layer shared by every time step (Gal & Ghahramani 2016). Identity in eval mode.
        zoneout: probability that a unit keeps its previous value at a step, fresh per step and unit
            (Krueger et al. 2017); a float for every state or ``(z_h, z_c)``. In eval mode the update is the
            expectation ``z * old + (1 - z) * new``, as in the paper.
        weight_dropout: DropConnect on ``W_hh`` (Wan et al. 2013), one mask per forward shared by every step
            and sequence, as in AWD-LSTM (Merity et al. 2018). Identity in eval mode.
        forget_bias: after the default init, set the forget-gate bias to this value (the GRU's update gate
            ``z``, its "keep" gate), with the matching ``b_hh`` block zeroed (Jozefowicz et al. 2015).
        learn_init: learn the initial states (``h0_l{k}``, ``c0_l{k}``, zero-initialised) used when ``hx`` is
            omitted.
        return_all_states: return a third output, :class:`AllStates` (``h`` and ``c`` of every step and layer).
        return_gates: also fill ``AllStates.gates`` (implies ``return_all_states``).

    Every layer-direction runs through the one dispatch, :func:`rnnlab.kernels.run`: the cell's own
    whole-sequence kernel (:attr:`CellSpec.kernel`, options included) when it covers the run, else the reference
    loop, with a warning once if another backend was selected.
    """

    def __init__(
        self,
        mode: str | CellSpec,
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
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_dropout: float = 0.0,
        forget_bias: float | None = None,
        learn_init: bool = False,
        return_all_states: bool = False,
        return_gates: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(mode, str):
            if mode not in SPECS:
                raise ValueError(f"{name}: Unrecognized RNN mode: {mode}; expected one of {sorted(SPECS)}")
            mode = SPECS[mode]
        spec = mode
        # torch.nn's checks in its order (the first mistake found is the one reported), then our options'
        check_probability(name, "dropout", dropout)
        check_type(name, "bias", bias, bool)
        check_type(name, "batch_first", batch_first, bool)
        check_positive_int(name, "input_size", input_size)
        check_positive_int(name, "hidden_size", hidden_size)
        check_positive_int(name, "num_layers", num_layers)
        # torch.nn takes any truthy bidirectional here and fails in its forward (a TypeError); we fail now
        for flag, value in (("bidirectional", bidirectional), ("learn_init", learn_init),
                            ("return_all_states", return_all_states), ("return_gates", return_gates)):
            check_type(name, flag, value, bool)
        check_probability(name, "recurrent_dropout", recurrent_dropout)
        check_probability(name, "weight_dropout", weight_dropout)
        zoneout_rates = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout,) * spec.n_states
        if len(zoneout_rates) != spec.n_states:
            raise ValueError(f"{name}: zoneout must be one rate or one per state {spec.state_names}, "
                             f"got {len(zoneout_rates)} rates")
        for rate in zoneout_rates:
            check_probability(name, "zoneout", rate)
        check_type(name, "proj_size", proj_size, int)
        if proj_size < 0:
            raise ValueError(f"{name}: proj_size should be a positive integer or zero to disable projections, "
                             f"got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f"and hidden_size={hidden_size}")
        if proj_size and not spec.supports_proj:
            raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU"
                             if spec.mode else f"{name}: proj_size is not supported by {spec.name}")
        if forget_bias is not None and spec.forget_gate is None:
            raise ValueError(f"{name}: forget_bias needs a cell with a forget gate, and {spec.name} has none")
        if forget_bias is not None and not bias:
            raise ValueError(f"{name}: forget_bias needs bias=True")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{name}: dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3)
        if backend is not None:
            kernels.get_backend(backend)  # fail now (an unknown name), not at the first forward

        self.spec = spec
        self.mode = spec.mode or spec.name
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = tuple(float(z) for z in zoneout_rates)
        self.weight_dropout = float(weight_dropout)
        self.forget_bias = forget_bias
        self.learn_init = learn_init
        self.return_gates = return_gates
        self.return_all_states = return_all_states or return_gates

        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        factory = {"device": device, "dtype": dtype}
        # Registration order is torch's (per layer, per direction: w_ih, w_hh, b_ih, b_hh, w_hr) so that
        # reset_parameters draws the same numbers as torch.nn from the same seed.
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * self.num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = spec.params(layer_input_size, hidden_size, bias, proj_size)
                names = [f"{base}_l{layer}{suffix}" for base in shapes]
                for param_name, shape in zip(names, shapes.values()):
                    setattr(self, param_name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        if learn_init:  # registered after torch's parameters, so they do not shift the seeded init
            sizes = {"h": real_hidden_size, "c": hidden_size}
            for layer in range(num_layers):
                for direction in range(self.num_directions):
                    for s in spec.state_names:
                        setattr(self, f"{s}0_l{layer}{'_reverse' if direction else ''}",
                                nn.Parameter(torch.zeros(sizes[s], **factory)))
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in registration order (torch.nn's rule).

        Exceptions: the cell's ``constant_init`` (e.g. layer-norm gains 1), learnable initial states (0), and the
        forget-gate bias when ``forget_bias`` is set.
        """
        stdv = 1.0 / math.sqrt(self.hidden_size)
        constants = self.spec.constant_init
        with torch.no_grad():
            for name, weight in self.named_parameters():
                base = name.rsplit("_l", 1)[0]
                if base in constants:
                    weight.fill_(constants[base])
                elif base in ("h0", "c0"):
                    weight.zero_()
                else:
                    nn.init.uniform_(weight, -stdv, stdv)
            if self.forget_bias is not None:
                bias_name, chunk, chunks = cast(tuple[str, int, int], self.spec.forget_gate)
                H = self.hidden_size
                for names in self._all_weights:
                    for n in names:
                        base = n.rsplit("_l", 1)[0]
                        if base == bias_name:
                            getattr(self, n)[chunk * H:(chunk + 1) * H] = self.forget_bias
                        elif base == bias_name.replace("_ih", "_hh") and base != bias_name:
                            getattr(self, n)[chunk * H:(chunk + 1) * H] = 0.0

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

    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """The parameters of one layer and direction by the cell's names (``weight_ih``, ...), without suffix."""
        names = self._all_weights[layer * self.num_directions + direction]
        return {n.rsplit("_l", 1)[0]: getattr(self, n) for n in names}

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor | None, ...]:
        """``(w_ih, w_hh, b_ih, b_hh[, w_hr])`` of one layer and direction; biases are ``None`` when ``bias=False``.

        This is the argument of the whole-sequence kernels, so only cells with torch's layout have it.
        """
        if self.spec.mode is None:
            raise TypeError(f"{type(self).__name__}: layer_weights() needs torch's weight layout; "
                            f"{self.spec.name} has its own parameters, see layer_params()")
        return _kernel_weights(self.layer_params(layer, direction), self.proj_size)

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

    def _given_states(self, hx, input_dim: int | None) -> list[Tensor] | None:
        """The states passed as ``hx`` (``None`` when omitted), checked for type, count and, for a tensor input
        of ``input_dim`` dimensions, dimensions (torch.nn's checks and messages; a packed input has no such check
        there, its shape check below covers it)."""
        name = type(self).__name__
        given = given_states(name, hx, self.spec.n_states)
        if given is not None and input_dim is not None and any(s.dim() != input_dim for s in given):
            kind = "batched 3-D" if input_dim == 3 else "unbatched 2-D"
            if len(given) == 2:
                raise RuntimeError(f"{name}: For {kind} input, hx and cx should also be {input_dim}-D but got "
                                   f"({given[0].dim()}-D, {given[1].dim()}-D) tensors")
            raise RuntimeError(f"{name}: For {kind} input, hx should also be {input_dim}-D but got "
                               f"{given[0].dim()}-D tensor")
        return given

    def _initial_states(self, given: list[Tensor] | None, batch: int, batched: bool, x: Tensor) -> list[State]:
        """Per (layer, direction) initial states, checked against the expected shapes (never broadcast)."""
        name = type(self).__name__
        n = self.num_layers * self.num_directions
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = [h_size, self.hidden_size][: self.spec.n_states]
        if given is None and self.learn_init:
            states = [torch.stack([getattr(self, f"{s}0_l{k // self.num_directions}"
                                               f"{'_reverse' if k % self.num_directions else ''}")
                                   for k in range(n)]).unsqueeze(1).expand(n, batch, -1)
                      for s in self.spec.state_names]
        elif given is None:
            states = [torch.zeros(n, batch, s, dtype=x.dtype, device=x.device) for s in sizes]
        else:
            states = []
            for k, (s, size) in enumerate(zip(given, sizes)):
                s = s if batched else s.unsqueeze(1)
                if tuple(s.shape) != (n, batch, size):  # torch.nn's message, on the batched shapes as torch's
                    label = f"hidden[{k}] size" if self.spec.n_states == 2 else "hidden size"
                    raise RuntimeError(f"{name}: Expected {label} {(n, batch, size)}, got {list(s.shape)}")
                check_same_dtype(name, f"hx[{k}]" if self.spec.n_states == 2 else "hx", s,
                                 cast(Tensor, self.weight_ih_l0))
                states.append(s)
        per_state = [s.unbind(0) for s in states]
        if self.spec.n_states == 2:
            return list(zip(*per_state))
        return list(per_state[0])

    def forward(self, input: Tensor | PackedSequence, hx=None):
        """Run the stack over a whole sequence.

        Shape (``L`` layers, ``D`` directions, ``H_out = proj_size or hidden_size``):
            input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, ``(T, I)`` unbatched, or a PackedSequence.
            hx: ``(L*D, B, H_out)`` (``(L*D, H_out)`` unbatched), for an LSTM a tuple ``(h_0, c_0)`` with ``c_0``
            ``(L*D, B, H)``; zeros if omitted.
            output: ``(T, B, D*H_out)`` (same layout conventions as input); h_n like hx.

        An empty batch (``B = 0``) gives empty outputs and states, as in torch.nn. Under a torch.func transform
        or forward-mode AD the layer runs the reference loop (see :func:`rnnlab.kernels.transformed`;
        docs/ecosystem.md).

        Raises (as torch.nn, in its order; see tests/test_conformance.py):
            ValueError: input not 2-D or 3-D; input dtype other than the weights'.
            RuntimeError: hx of the wrong dimensions, shape, dtype or device; input.size(-1) != input_size;
                an empty sequence (T = 0).
            TypeError: input or hx of the wrong type.
        """
        x, lengths, batched, states = self._canonical(input, hx)
        # Step observers are eager-mode diagnostics; a captured graph has no per-step Python to observe (and
        # Dynamo cannot trace ContextVar.get).
        observer = None if capturing() else _observer.get()
        finals: list[State] = []
        record: list[tuple[Tensor, Tensor | None, dict[str, Tensor] | None]] = []  # per layer: (h, c, gates)
        for layer in range(self.num_layers):
            results = [self._run(x, states[layer * self.num_directions + direction], layer, direction, lengths,
                                 observer) for direction in range(self.num_directions)]
            finals.extend(r[1] for r in results)
            x = torch.cat([r[0] for r in results], dim=2) if len(results) > 1 else results[0][0]  # (T, B, D*H_out)
            if self.return_all_states:
                record.append((x, *self._join_extras([r[2:] for r in results], lengths)))
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return self._public(input, x, finals, record, lengths, batched)

    def _canonical(self, input: Tensor | PackedSequence, hx) -> tuple[Tensor, Tensor | None, bool, list[State]]:
        """The input as ``(T, B, I)`` (packed input padded, with its lengths), whether it was batched, and the
        initial state of every layer-direction; torch.nn's checks, in its order."""
        name = type(self).__name__
        first_weight = cast(Tensor, self.weight_ih_l0)
        lengths = None
        if isinstance(input, PackedSequence):
            given = self._given_states(hx, None)
            check_input_dtype(name, input.data, first_weight)
            x, lengths = pad_packed_sequence(input)  # (T, B, I), batch in the caller's (unsorted) order
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            given = self._given_states(hx, input.dim())
            check_input_dtype(name, input, first_weight)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.size(-1)}")
        states = self._initial_states(given, x.size(1), batched, x)
        if x.size(0) == 0:
            raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN, got input of shape "
                               f"{tuple(input.shape) if isinstance(input, Tensor) else tuple(x.shape)}")
        return x, lengths, batched, states

    def _public(self, input: Tensor | PackedSequence, x: Tensor, finals: list[State], record, lengths: Tensor | None,
                batched: bool):
        """The last layer's outputs ``x`` ``(T, B, D*H_out)`` and the final states in the input's layout."""
        h_n = torch.stack([hidden_of(f) for f in finals])
        hidden: Tensor | tuple[Tensor, ...] = (
            (h_n, torch.stack([f[1] for f in finals])) if self.spec.n_states == 2 else h_n)
        output: Tensor | PackedSequence
        extra = self._all_states(record, batched) if self.return_all_states else None
        if isinstance(input, PackedSequence):
            output = _repack(x, cast(Tensor, lengths), input)
        elif not batched:
            hidden = (tuple(s.squeeze(1) for s in hidden) if self.spec.n_states == 2
                      else cast(Tensor, hidden).squeeze(1))
            output = x.squeeze(1)
        else:
            output = x.transpose(0, 1) if self.batch_first else x
        return (output, hidden) if extra is None else (output, hidden, extra)

    def _run(self, x: Tensor, state: State, layer: int, direction: int, lengths: Tensor | None,
             observer: StepObserver | None) -> SequenceResult:
        """One layer-direction, by the one dispatch (:func:`rnnlab.kernels.run`), with this layer's options."""
        p = self.layer_params(layer, direction)
        if self.weight_dropout > 0 and self.training:
            p["weight_hh"] = drop_connect(p["weight_hh"], self.weight_dropout)
        h_mask, keep = sequence_masks(state, x.size(0), self.recurrent_dropout, self.zoneout, self.training)
        seq = SequenceRun(x, state, p, direction == 1, lengths, h_mask, keep, self.return_all_states,
                          self.return_gates and self.spec.gates is not None, cell=self.spec)
        bound = None if observer is None else _BoundObserver(observer, self, layer, direction, x.size(0))
        return kernels.run(self.spec, seq, self.backend, bound)

    def _join_extras(self, extras, lengths: Tensor | None) -> tuple[Tensor | None, dict[str, Tensor] | None]:
        """The directions' cell states and gates side by side, (T, B, D*H), zero past each sequence's length."""
        valid = None
        first_c, first_gates = extras[0]
        if lengths is not None and (first_c is not None or first_gates):
            T = first_c.size(0) if first_c is not None else next(iter(first_gates.values())).size(0)
            valid = (torch.arange(T).unsqueeze(1) < lengths.cpu().unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)

        def join(parts: list[Tensor]) -> Tensor:
            out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
            return out if valid is None else out * valid.to(out.device, out.dtype)

        c = join([e[0] for e in extras]) if first_c is not None else None
        gates = None if first_gates is None else {k: join([e[1][k] for e in extras]) for k in first_gates}
        return c, gates

    def _all_states(self, record, batched: bool) -> AllStates:
        def layout(t: Tensor) -> Tensor:  # (L, T, B, F) -> the output's layout
            if not batched:
                return t.squeeze(2)
            return t.transpose(1, 2) if self.batch_first else t

        h = layout(torch.stack([r[0] for r in record]))
        c = layout(torch.stack([r[1] for r in record])) if record[0][1] is not None else None
        gates = None
        if record[0][2] is not None:
            gates = {k: layout(torch.stack([r[2][k] for r in record])) for k in record[0][2]}
        return AllStates(h, c, gates)


def __getattr__(name: str):
    # rnnlab 0.1 names that moved below the layers (kept one release)
    moved: dict[str, Any] = {"bernoulli_mask": kernels.masks.bernoulli_mask, "_capturing": capturing,
                             "_transformed": transformed, "KernelSink": GradientSink}
    if name in moved:
        new = moved[name]
        warnings.warn(f"rnnlab.layers.{name} is deprecated; use {new.__module__}.{new.__name__}", DeprecationWarning,
                      stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _kernel_weights(p: dict[str, Tensor], proj_size: int) -> tuple[Tensor | None, ...]:
    """``(w_ih, w_hh, b_ih, b_hh[, w_hr])``: the weights argument of the whole-sequence kernels."""
    weights = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    return weights + (p["weight_hr"],) if proj_size > 0 else weights


def _repack(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack ``padded`` (T, B, F), batch in original order, with exactly the batch layout of ``like``.

    ``pack_padded_sequence`` has no forward-mode derivative, and torch.nn's layers (which never re-pack) run
    forward-mode AD on packed input; under a transform the rows ``like`` holds are gathered with one
    ``index_select`` instead. Only there: building that row index takes ~2.5x a pack's time at small sizes.
    """
    if transformed():
        batch_sizes = like.batch_sizes  # (T,), CPU: packed row r is step steps[r], batch slot slot[r] (sorted)
        steps = torch.repeat_interleave(torch.arange(batch_sizes.numel()), batch_sizes)
        slot = torch.arange(steps.numel()) - (torch.cumsum(batch_sizes, 0) - batch_sizes)[steps]
        column = slot if like.sorted_indices is None else like.sorted_indices.cpu()[slot]
        rows = (steps * padded.size(1) + column).to(padded.device)
        data = padded.reshape(-1, padded.size(2)).index_select(0, rows)
    else:
        if like.sorted_indices is not None:
            padded = padded.index_select(1, like.sorted_indices)
            lengths = lengths[like.sorted_indices.cpu()]
        data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _refuse_proj_size(name: str, options: dict) -> None:
    """torch.nn's RNN and GRU refuse any ``proj_size`` argument, even 0."""
    if "proj_size" in options:
        raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU; got "
                         f"proj_size={options['proj_size']!r}")


class RNN(RNNBase):
    r"""Multi-layer Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu).

    Drop-in for ``torch.nn.RNN``: same arguments (``nonlinearity`` is the fourth), shapes and parameter names.
    Keyword-only options (``backend``, ``recurrent_dropout``, ``zoneout``, ...) are :class:`RNNBase`'s.

    Example:
        >>> rnn = RNN(10, 20, 2)
        >>> output, h_n = rnn(torch.randn(5, 3, 10))   # (5, 3, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **options) -> None:
        _refuse_proj_size(type(self).__name__, options)
        if nonlinearity not in RF.NONLINEARITIES:
            raise ValueError(f"RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, **options)
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
                 proj_size: int = 0, device=None, dtype=None, **options) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, **options)


class GRU(RNNBase):
    r"""Multi-layer GRU; gates r, z, n with the reset gate on ``W_hn h + b_hn`` (see :func:`rnnlab.functional.gru_step`).

    Drop-in for ``torch.nn.GRU``.

    Example:
        >>> gru = GRU(10, 20, 2, batch_first=True)
        >>> output, h_n = gru(torch.randn(3, 5, 10))   # (3, 5, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, **options) -> None:
        _refuse_proj_size(type(self).__name__, options)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, **options)
