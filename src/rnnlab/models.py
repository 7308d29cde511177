"""Task heads around an rnnlab recurrent layer: a character language model, a sequence classifier and a sequence
regressor. Each is ``input -> [embedding] -> rnnlab.RNN/LSTM/GRU -> [dropout] -> Linear`` applied at every step,
with the recurrent state passed in and out so that a trainer can carry it across truncated-BPTT windows.

The task decides which steps carry a loss (every step for a language model, the last for a classifier), so all
three models share one forward contract:

    ``model(x, state=None) -> (output, state)``, ``x`` ``(T, B)`` ids or ``(T, B, I)``, output ``(T, B, O)``.

Example:
    >>> model = CharLM(vocab_size=65, hidden_size=128)
    >>> logits, state = model(torch.randint(0, 65, (50, 4)))   # (50, 4, 65), ((1, 4, 128), (1, 4, 128))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .cellspec import SPECS, CellSpec
from .errors import UserError
from .layers import RNNBase
from .sequence import SequenceRun, hidden_of
from .variants import layer_class

__all__ = ["RecurrentNet", "CharLM", "SequenceClassifier", "SequenceRegressor", "build_model", "make_layer",
           "generate_text", "detach_state", "layer_options", "CELLS"]

# Every cell of rnnlab.cellspec.SPECS, by its config name ("lstm", "rnn_tanh", "layernorm_lstm", ...), in SPECS'
# order: a new entry there is a new choice here, in configs and on the command line.
_SPECS: dict[str, CellSpec] = {spec.config_name: spec for spec in SPECS.values()}
CELLS = tuple(_SPECS)


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
               backend: str | None = None, **options) -> nn.Module:
    """The rnnlab layer for a cell name (one of :data:`CELLS`), time-major.

    Args:
        cell: a cell's config name (:data:`CELLS`: ``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu`` and the variants).
        dropout: between stacked layers (ignored for one layer, where torch would only warn).
        options: :class:`rnnlab.RNNBase` keyword options (``recurrent_dropout``, ``zoneout``, ``weight_dropout``,
            ``forget_bias``, ``learn_init``).

    Raises:
        UserError: unknown cell, or an option the cell does not support (e.g. ``forget_bias`` on an Elman RNN).
    """
    cell = cell.lower()
    if cell not in CELLS:
        raise UserError(f"model: unknown cell {cell!r}; expected one of {list(CELLS)}")
    between = dropout if num_layers > 1 else 0.0
    try:
        return layer_class(_SPECS[cell])(input_size, hidden_size, num_layers, dropout=between, backend=backend,
                                         **options)
    except ValueError as err:  # the layer's own check, e.g. "forget_bias needs a cell with a forget gate"
        raise UserError(f"model: {err}") from None


def detach_state(state):
    """Cut the autograd graph at a state (a tensor or a tuple of them); ``None`` passes through."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class RecurrentNet(nn.Module):
    """``[embedding] -> recurrent layer -> dropout -> Linear`` at every step.

    Args:
        cell: a name in :data:`CELLS` (``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu`` and the variants, such as
            ``layernorm_lstm``; every cell of :data:`rnnlab.cellspec.SPECS`).
        input_size: features per step, or the vocabulary size when ``embed_size`` is used with token ids.
        hidden_size, num_layers: of the recurrent layer. output_size: of the head.
        tokens: inputs are int64 token ids: embedded with ``embed_size`` (or one-hot when ``embed_size`` is 0).
        dropout: on the recurrent layer's output (and between its layers).
        backend: rnnlab kernel for the layer (None = the default).
        layer_options: :class:`rnnlab.RNNBase` keyword options passed to the layer (``recurrent_dropout``,
            ``zoneout``, ``weight_dropout``, ``forget_bias``, ``learn_init``; see docs/variants.md).

    Shape:
        x: ``(T, B)`` int64 if ``tokens`` else ``(T, B, input_size)``. output: ``(T, B, output_size)``.
        state: as the layer's ``hx`` (an LSTM-like cell's is ``(h, c)``), ``(num_layers, B, hidden_size)`` each.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1,
                 *, tokens: bool = False, embed_size: int = 0, dropout: float = 0.0,
                 backend: str | None = None, layer_options: dict | None = None) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise UserError(f"model: dropout must be in [0, 1), got {dropout}")
        self.tokens = tokens
        self.input_size = input_size
        self.embed = nn.Embedding(input_size, embed_size) if tokens and embed_size > 0 else None
        rnn_in = embed_size if self.embed is not None else input_size
        self.rnn = make_layer(cell, rnn_in, hidden_size, num_layers, dropout, backend, **(layer_options or {}))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, state=None):
        if self.tokens:
            if x.dtype != torch.long:
                raise TypeError(f"{type(self).__name__}: expected int64 token ids, got dtype {x.dtype}")
            # One-hot without an embedding keeps the classic char-rnn input (Karpathy 2015).
            h = self.embed(x) if self.embed is not None else F.one_hot(x, self.input_size).float()  # (T, B, E)
        else:
            h = x  # (T, B, I)
        out, state = self.rnn(h, state)  # (T, B, H)
        return self.head(self.drop(out)), state  # (T, B, O)


class CharLM(RecurrentNet):
    """Character language model: ids ``(T, B)`` -> next-character logits ``(T, B, vocab_size)``."""

    def __init__(self, vocab_size: int, hidden_size: int, cell: str = "lstm", num_layers: int = 1,
                 embed_size: int = 64, dropout: float = 0.0, backend: str | None = None,
                 layer_options: dict | None = None) -> None:
        super().__init__(cell, vocab_size, hidden_size, vocab_size, num_layers, tokens=True, embed_size=embed_size,
                         dropout=dropout, backend=backend, layer_options=layer_options)


class SequenceClassifier(RecurrentNet):
    """Per-step class logits ``(T, B, num_classes)``; a classification task scores the last step."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, backend: str | None = None,
                 layer_options: dict | None = None) -> None:
        super().__init__(cell, input_size, hidden_size, num_classes, num_layers, dropout=dropout, backend=backend,
                         layer_options=layer_options)


class SequenceRegressor(RecurrentNet):
    """Per-step real outputs ``(T, B, output_size)`` (next value, or a forecast read at the last step)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, backend: str | None = None,
                 layer_options: dict | None = None) -> None:
        super().__init__(cell, input_size, hidden_size, output_size, num_layers, dropout=dropout, backend=backend,
                         layer_options=layer_options)


def layer_options(cfg) -> dict:
    """The :class:`rnnlab.RNNBase` keyword options of a model config, those left at their off value omitted.

    Omitting them (rather than passing zeros) keeps a plain config's layer exactly as before these options existed,
    and keeps a config saved before them loadable (``getattr`` defaults).
    """
    opts = {"recurrent_dropout": getattr(cfg, "recurrent_dropout", 0.0), "zoneout": getattr(cfg, "zoneout", 0.0),
            "weight_dropout": getattr(cfg, "weight_dropout", 0.0), "forget_bias": getattr(cfg, "forget_bias", None),
            "learn_init": getattr(cfg, "learn_init", False)}
    off = {"recurrent_dropout": 0.0, "zoneout": 0.0, "weight_dropout": 0.0, "forget_bias": None, "learn_init": False}
    return {k: v for k, v in opts.items() if v != off[k]}


def build_model(cfg, task) -> RecurrentNet:
    """The model a task needs, from a :class:`rnnlab.train.config.ModelConfig`; applies ``cfg.init``.

    Raises:
        UserError: unknown cell or init preset, init presets unavailable in this install, or a layer option the
            cell does not support.
    """
    backend = cfg.backend or None
    if backend is not None:
        from .kernels import available_backends

        if backend not in available_backends():
            raise UserError(f"model: unknown backend {backend!r}; expected one of {available_backends()}")
    common = dict(cell=cfg.cell, num_layers=cfg.num_layers, dropout=cfg.dropout, backend=backend,
                  layer_options=layer_options(cfg))
    if task.kind == "lm":
        model: RecurrentNet = CharLM(task.input_size, cfg.hidden_size, embed_size=cfg.embed_size, **common)
    elif task.kind == "classification":
        model = SequenceClassifier(task.input_size, cfg.hidden_size, task.output_size, **common)
    else:
        model = SequenceRegressor(task.input_size, cfg.hidden_size, task.output_size, **common)
    if cfg.init != "torch":
        try:
            from . import init as rinit  # lazy: the presets live in their own module
        except ImportError:
            raise UserError(f"model: init preset {cfg.init!r} needs rnnlab.init, which this install lacks; "
                            f"use init = 'torch'") from None
        try:
            rinit.apply_init(model.rnn, cfg.init)
        except (ValueError, KeyError) as err:
            raise UserError(f"model: {err}") from None
    return model


@torch.no_grad()
def generate_text(model: nn.Module, vocab: Sequence[str] | None, prime: str | None = None, length: int = 200,
                  temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None) -> str:
    """Sample ``length`` characters from a character model after feeding it ``prime``.

    Each step draws from ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely characters
    when ``top_k > 0`` (Fan et al. 2018). ``prime`` None: a character the model knows (a newline when the text
    had one, see :func:`rnnlab.data.text.default_prime`).

    The prime runs through the model as one sequence; the characters after it are one step each. For a
    :class:`RecurrentNet` whose layer takes its cell's plain step (:func:`_cell_stepper`) that step is the cell's
    step function on the layer's weights, with no per-call checks or dispatch: a layer call at T=1 costs several
    times the step's arithmetic. Other models are called once per character. Both give the same samples for the
    same ``generator`` (the same maths; float rounding may differ in the last bit).

    Raises:
        UserError: no vocabulary, temperature <= 0, top_k < 0, empty prime, a prime character outside the
            vocabulary, or a model whose output is not finite.
    """
    if not vocab:
        raise UserError("generate: the model has no vocabulary (not a character model)")
    if not 0 < temperature < float("inf"):  # also refuses NaN, which would turn every probability into NaN
        raise UserError(f"generate: temperature must be a finite number > 0, got {temperature}")
    if top_k < 0:
        raise UserError(f"generate: top_k must be >= 0, got {top_k}")
    if prime is None:
        from .data.text import default_prime

        prime = default_prime(list(vocab))
    if not prime:
        raise UserError("generate: the prime text must not be empty")
    index = {c: i for i, c in enumerate(vocab)}
    missing = sorted({c for c in prime if c not in index})
    if missing:
        raise UserError(f"generate: prime characters not in the model's vocabulary: {missing}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            ids = torch.tensor([[index[c]] for c in prime], dtype=torch.long, device=device)  # (P, 1)
            logits, state = model(ids)
            last = logits[-1, 0]  # (V,)
            out: list[str] = []
            compiled = _compiled_sampler(model, state) if length else None
            if compiled is not None:  # the loop below in one compiled op
                drawn, last = compiled(last, length, temperature, top_k, generator)
                out = [vocab[i] for i in drawn.tolist()]
            else:
                step = _cell_stepper(model, state) or _model_stepper(model, state, device)
                draw = _Sampler(temperature, top_k, generator)
                for k in range(length):
                    nxt = draw(last)
                    out.append(vocab[nxt])
                    if k + 1 < length:
                        last = step(nxt)
            if length and not bool(torch.isfinite(last).all()):
                # NaN or inf logits stay so (the state carries them): one check, not one per character
                raise UserError("generate: the model's output is not finite (NaN or inf): its weights are broken")
    finally:
        model.train(was_training)
    return "".join(out)


class _Sampler:
    """One character from ``softmax(logits / temperature)`` (top-k restricted), as ``torch.multinomial(probs, 1)``
    draws it, without its per-call checks.

    For one sample torch's CPU multinomial is the exponential-race (Gumbel-max) draw
    ``argmax(probs / q)``, ``q ~ Exp(1)`` of the probabilities' shape and dtype from the same generator
    (aten's ``multinomial_out``). Doing that here on a buffer reused for every character gives the same index
    from the same generator state; what it leaves out is the check for NaN, inf and negative probabilities (two
    reductions and two host reads per call, half of the draw's cost), which :func:`generate_text` makes once at
    the end.
    """

    def __init__(self, temperature: float, top_k: int, generator: torch.Generator | None) -> None:
        self.temperature, self.top_k, self.generator = temperature, top_k, generator
        self.race: Tensor | None = None

    def __call__(self, logits: Tensor) -> int:
        scaled = logits / self.temperature  # (V,)
        if self.top_k:
            kth = torch.topk(scaled, min(self.top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled.float().cpu(), dim=-1)
        if self.race is None:
            self.race = torch.empty_like(probs)
        race = self.race.exponential_(1, generator=self.generator)
        return int(torch.div(probs, race, out=race).argmax())


def _model_stepper(model: nn.Module, state, device: torch.device) -> Callable[[int], Tensor]:
    """Next-character logits ``(V,)`` by calling ``model`` on one character, carrying its state."""

    def step(nxt: int) -> Tensor:
        nonlocal state
        logits, state = model(torch.tensor([[nxt]], device=device), state)
        return logits[-1, 0]

    return step


def _layer_runs(model: nn.Module, state) -> tuple[RecurrentNet, RNNBase, Tensor, list[SequenceRun]] | None:
    """For a :class:`RecurrentNet` whose layers step by their cell's plain step (see :func:`_cell_stepper`): the
    model, its recurrent layer, the table of the characters' inputs (the embedding, or the identity for one-hot
    rows) and each layer's first one-step run (its weights, its state after the prime); ``None`` for any other
    model."""
    if not isinstance(model, RecurrentNet) or type(model).forward is not RecurrentNet.forward:
        return None
    rnn = model.rnn
    if (not isinstance(rnn, RNNBase) or rnn.bidirectional or any(rnn.zoneout) or rnn.return_all_states
            or model.training):
        return None
    # the input of one character: its embedding, or its one-hot row (F.one_hot(...).float(), as in forward)
    weight = model.head.weight
    table = model.embed.weight if model.embed is not None else torch.eye(model.input_size, device=weight.device)
    states = [tuple(s[layer] for s in state) if isinstance(state, tuple) else state[layer]
              for layer in range(rnn.num_layers)]  # per layer: (h, c) or h, each (1, H)
    inputs = [table[:1]] + [hidden_of(s) for s in states[:-1]]  # each layer's input, for its first step's run
    return model, rnn, table, [SequenceRun(x[None], s, rnn.layer_params(layer), cell=rnn.spec)
                               for layer, (x, s) in enumerate(zip(inputs, states))]


def _compiled_sampler(model: nn.Module, state) -> kernels.fused.Sampler | None:
    """The whole sampling loop of :func:`generate_text` as one compiled op (:func:`rnnlab.kernels.sampler`: torch's
    LSTM layers without projections, on the fused backend), or ``None``."""
    runs = _layer_runs(model, state)
    if runs is None:
        return None
    net, rnn, table, seqs = runs
    return kernels.sampler(rnn.spec, seqs, rnn.backend, table, net.head.weight, net.head.bias)


def _cell_stepper(model: nn.Module, state) -> Callable[[int], Tensor] | None:
    """Next-character logits ``(V,)`` of a :class:`RecurrentNet` by its cell's step function, or ``None`` where
    the layer's step is not the cell's plain step.

    In eval mode a one-direction layer without zoneout runs exactly its cell's step (``CellSpec.step``) layer
    after layer: recurrent dropout, DropConnect and the dropouts are identities there, and learned initial states
    only matter without a state (the prime gave one). So one character is the embedding row (or one-hot row), one
    step of each layer on its own weights, and the head; dropout between layers and before the head is skipped,
    as eval mode skips it. Each layer steps by :func:`rnnlab.kernels.stepper` with the layer's backend: the one
    dispatch's choice made once for the whole sample, so a step is one call of the compiled kernel's op where it
    covers the run (instead of the cell step's dozen torch ops and the dispatch's per-run checks), else a one-step
    run of the one dispatch. Zoneout (an expectation in eval mode), two directions, all-step outputs and models
    that change :meth:`RecurrentNet.forward` are called as a whole (:func:`_model_stepper`).
    """
    runs = _layer_runs(model, state)
    if runs is None:
        return None
    net, rnn, table, seqs = runs
    weight, bias = net.head.weight, net.head.bias
    steps = [kernels.stepper(rnn.spec, seq, rnn.backend) for seq in seqs]
    states = [seq.state for seq in seqs]

    def step(nxt: int) -> Tensor:
        x = table[nxt:nxt + 1]  # (1, E)
        for layer, layer_step in enumerate(steps):
            states[layer] = layer_step(x, states[layer])
            x = hidden_of(states[layer])
        return F.linear(x, weight, bias)[0]

    return step
