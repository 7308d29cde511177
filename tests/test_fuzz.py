"""Property-based fuzzing (hypothesis) of the layers, the cells and the variants, on every registered backend.

Properties:

* a random *valid* configuration (sizes, layers, directions, projections, bias, ``batch_first``, dtype, batched /
  unbatched / packed input, given or default state) gives the outputs, final states and every gradient of
  ``torch.nn`` with the same weights, and they are finite;
* the variants (no torch.nn counterpart) equal the same cell unrolled by hand over time, directions and layers
  (the independent reference), and are finite;
* a random *invalid* argument or input raises ``ValueError``, ``TypeError`` or ``RuntimeError`` whose message
  starts with the module's name: never a crash, a silent broadcast or a wrong-shaped result.

Case counts come from two hypothesis profiles: the default run is small and derandomized (the same cases every
time, so CI never flakes); the ``slow``-marked copies run ``FUZZ_SLOW_EXAMPLES`` random cases each (together
more than 2,000). ``deadline=None`` everywhere: the first call of a backend can compile or warm up.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab.cells import SpecCell
from _tolerance import assert_float32_runs_close, ulp_moved

BACKENDS = rnnlab.available_backends()
_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
settings.register_profile("rnnlab-default", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("rnnlab-slow", max_examples=300, **_COMMON)
DEFAULT = settings.get_profile("rnnlab-default")
SLOW = settings.get_profile("rnnlab-slow")

# Half precision: both sides round every op to 11 (float16) or 8 (bfloat16) significant bits, in different orders.
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9),
       torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}
# float32/float64 drawn twice as often; half precision with weights of scale <= 0.5 (no overflow of float16).
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float32, torch.float64, torch.float16, torch.bfloat16])
HALF = (torch.float16, torch.bfloat16)


@st.composite
def dtype_and_scale(draw) -> tuple[torch.dtype, float]:
    dtype = draw(DTYPES)
    return dtype, draw(st.sampled_from([0.1, 0.5] if dtype in HALF else [0.1, 0.5, 1.0, 2.0]))
ERRORS = (ValueError, TypeError, RuntimeError)

OURS = {"RNN_TANH": rnnlab.RNN, "RNN_RELU": rnnlab.RNN, "LSTM": rnnlab.LSTM, "GRU": rnnlab.GRU}
THEIRS = {"RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}
CELLS = {"RNN_TANH": (rnnlab.RNNCell, nn.RNNCell), "RNN_RELU": (rnnlab.RNNCell, nn.RNNCell),
         "LSTM": (rnnlab.LSTMCell, nn.LSTMCell), "GRU": (rnnlab.GRUCell, nn.GRUCell)}
VARIANTS = {"LayerNormLSTM": (rnnlab.LayerNormLSTM, rnnlab.LayerNormLSTMCell),
            "LayerNormGRU": (rnnlab.LayerNormGRU, rnnlab.LayerNormGRUCell),
            "PeepholeLSTM": (rnnlab.PeepholeLSTM, rnnlab.PeepholeLSTMCell)}


# -- strategies ------------------------------------------------------------------------------------------------

@st.composite
def layer_cases(draw, modes=tuple(OURS)):
    """A valid layer configuration and input: everything a caller of torch.nn.RNN/LSTM/GRU may legally pass."""
    mode = draw(st.sampled_from(modes))
    hidden = draw(st.integers(1, 6))
    cfg = dict(input_size=draw(st.integers(1, 6)), hidden_size=hidden, num_layers=draw(st.integers(1, 3)),
               bias=draw(st.booleans()), batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()))
    if mode == "LSTM" and hidden > 1 and draw(st.booleans()):
        cfg["proj_size"] = draw(st.integers(1, hidden - 1))
    if cfg["num_layers"] > 1 and draw(st.booleans()):
        cfg["dropout"] = draw(st.floats(0.0, 1.0))  # inactive in eval mode, where we compare
    if mode.startswith("RNN"):
        cfg["nonlinearity"] = mode[4:].lower()
    dtype, scale = draw(dtype_and_scale())
    case = dict(mode=mode, cfg=cfg, dtype=dtype,
                kind=draw(st.sampled_from(["batched", "unbatched", "packed"])), T=draw(st.integers(1, 6)),
                B=draw(st.integers(1, 4)), given_state=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
                scale=scale)
    if case["kind"] == "packed":
        case["lengths"] = draw(st.lists(st.integers(1, case["T"]), min_size=case["B"], max_size=case["B"]))
        case["lengths"][draw(st.integers(0, case["B"] - 1))] = case["T"]  # padded length is the longest
        case["enforce_sorted"] = draw(st.booleans())
        if case["enforce_sorted"]:
            case["lengths"].sort(reverse=True)
    return case


def _state_shapes(layer: nn.Module, batch: int | None, n_states: int) -> list[tuple[int, ...]]:
    n = layer.num_layers * (2 if layer.bidirectional else 1)
    h_out = layer.proj_size or layer.hidden_size
    shapes = [(n, h_out), (n, layer.hidden_size)][:n_states]
    return [s if batch is None else (s[0], batch, s[1]) for s in shapes]


def _inputs(layer: nn.Module, case: dict, n_states: int, g: torch.Generator):
    """(input for the module, canonical x (T, B, I) leaf, state leaves or None, lengths or None)."""
    T, B, dtype = case["T"], case["B"], case["dtype"]
    x = torch.randn(T, B, layer.input_size, generator=g, dtype=dtype).requires_grad_(True)  # (T, B, I)
    batched = case["kind"] != "unbatched"
    states = None
    if case["given_state"]:
        states = [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True)
                  for s in _state_shapes(layer, B if batched else None, n_states)]
    lengths = None
    if case["kind"] == "packed":
        lengths = torch.tensor(case["lengths"])
        inp = pack_padded_sequence(x, lengths, enforce_sorted=case["enforce_sorted"])
    elif case["kind"] == "unbatched":
        inp = x[:, 0]  # (T, I)
    else:
        inp = x.transpose(0, 1) if layer.batch_first else x  # (B, T, I) with batch_first
    return inp, x, states, lengths


def _run(layer: nn.Module, case: dict, n_states: int) -> dict[str, torch.Tensor]:
    """Forward and backward of a loss touching every output; returns outputs and all gradients."""
    g = torch.Generator().manual_seed(case["seed"] + 1)
    inp, x, states, _ = _inputs(layer, case, n_states, g)
    hx = None if states is None else (tuple(states) if n_states == 2 else states[0])
    out, hidden = layer(inp, hx)
    out = out.data if case["kind"] == "packed" else out
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for h in hidden:
        loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    loss.backward()
    result = {"output": out, "x.grad": x.grad}
    result |= {f"hidden[{k}]": h for k, h in enumerate(hidden)}
    if states is not None:
        result |= {f"hx[{k}].grad": s.grad for k, s in enumerate(states)}
    result |= {f"{name}.grad": p.grad for name, p in layer.named_parameters()}
    return result


def _randomise(module: nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1) * scale)


def _assert_same(ours: dict, theirs: dict, dtype: torch.dtype, where: str) -> None:
    assert ours.keys() == theirs.keys(), where
    for key in ours:
        a, b = ours[key], theirs[key]
        assert a is not None and b is not None, f"{where}: {key} is None"
        assert a.shape == b.shape, f"{where}: {key} shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert torch.isfinite(a).all(), f"{where}: {key} not finite from finite input"
        # atol in units of the tensor's largest entry: a gradient summed over steps and rows carries rounding
        # of the size of its largest terms (weights at scale 2 give entries ~10 next to entries ~0.01).
        scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
        tol = dict(atol=TOL[dtype]["atol"] * scale, rtol=TOL[dtype]["rtol"])
        torch.testing.assert_close(a.detach(), b.detach(), **tol, msg=lambda m: f"{where}: {key}: {m}")


# -- valid layers vs torch.nn ----------------------------------------------------------------------------------

def check_layer_matches_torch(case: dict, backend: str) -> None:
    cfg, dtype = case["cfg"], case["dtype"]
    ours = OURS[case["mode"]](**cfg, dtype=dtype, backend=backend)
    theirs = THEIRS[case["mode"]](**cfg, dtype=dtype)
    _randomise(ours, case["seed"], case["scale"])
    theirs.load_state_dict(ours.state_dict())
    ours.eval()
    theirs.eval()
    n_states = 2 if case["mode"] == "LSTM" else 1
    a, b = _run(ours, case, n_states), _run(theirs, case, n_states)
    if dtype in HALF and case["mode"] == "RNN_RELU":
        # In half precision a pre-activation within rounding of 0 lands on either side of the ReLU kink, so the
        # gradients jump by whole terms (vs a float64 truth, torch.nn's own bfloat16 gradients are off by up to
        # 90% of their magnitude on such cases). Outputs are continuous and still compared.
        a, b = ({k: v for k, v in d.items() if not k.endswith(".grad")} for d in (a, b))
    _assert_same(a, b, dtype, f"{backend} {case}")


@pytest.mark.parametrize("backend", BACKENDS)
@DEFAULT
@given(case=layer_cases())
def test_layer_matches_torch(case, backend):
    check_layer_matches_torch(case, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@SLOW
@given(case=layer_cases())
def test_layer_matches_torch_slow(case, backend):
    check_layer_matches_torch(case, backend)


# -- valid cells vs torch.nn -----------------------------------------------------------------------------------

@st.composite
def cell_cases(draw, modes=tuple(CELLS)):
    mode = draw(st.sampled_from(modes))
    dtype, scale = draw(dtype_and_scale())
    return dict(mode=mode, input_size=draw(st.integers(1, 6)), hidden_size=draw(st.integers(1, 6)),
                bias=draw(st.booleans()), dtype=dtype, B=draw(st.one_of(st.none(), st.integers(0, 4))),
                given_state=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)), scale=scale)


def _cell_args(mode: str) -> dict:
    return {"nonlinearity": mode[4:].lower()} if mode.startswith("RNN") else {}


def _run_cell(cell: nn.Module, case: dict, n_states: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(case["seed"] + 1)
    B, H, dtype = case["B"], case["hidden_size"], case["dtype"]
    lead = () if B is None else (B,)
    x = torch.randn(*lead, case["input_size"], generator=g, dtype=dtype).requires_grad_(True)
    states = None
    if case["given_state"]:
        states = [torch.randn(*lead, H, generator=g, dtype=dtype).requires_grad_(True) for _ in range(n_states)]
    hx = None if states is None else (tuple(states) if n_states == 2 else states[0])
    new = cell(x, hx)
    new = list(new) if isinstance(new, tuple) else [new]
    loss = sum((s * torch.randn(s.shape, generator=g, dtype=dtype)).sum() for s in new)
    loss.backward()
    result = {f"state[{k}]": s for k, s in enumerate(new)} | {"x.grad": x.grad}
    if states is not None:
        result |= {f"hx[{k}].grad": s.grad for k, s in enumerate(states)}
    return result | {f"{n}.grad": p.grad for n, p in cell.named_parameters()}


def check_cell_matches_torch(case: dict) -> None:
    ours_cls, torch_cls = CELLS[case["mode"]]
    args = (case["input_size"], case["hidden_size"], case["bias"])
    ours = ours_cls(*args, **_cell_args(case["mode"]), dtype=case["dtype"])
    theirs = torch_cls(*args, **_cell_args(case["mode"]), dtype=case["dtype"])
    _randomise(ours, case["seed"], case["scale"])
    theirs.load_state_dict(ours.state_dict())
    n_states = 2 if case["mode"] == "LSTM" else 1
    a, b = _run_cell(ours, case, n_states), _run_cell(theirs, case, n_states)
    if case["dtype"] in HALF and case["mode"] == "RNN_RELU":  # see check_layer_matches_torch
        a, b = ({k: v for k, v in d.items() if not k.endswith(".grad")} for d in (a, b))
    _assert_same(a, b, case["dtype"], str(case))


@DEFAULT
@given(case=cell_cases())
def test_cell_matches_torch(case):
    check_cell_matches_torch(case)


@pytest.mark.slow
@SLOW
@given(case=cell_cases())
def test_cell_matches_torch_slow(case):
    check_cell_matches_torch(case)


# -- valid variants vs their cell unrolled by hand -------------------------------------------------------------

def _unrolled(layer: nn.Module, cell_cls: type, x: torch.Tensor, states: list[torch.Tensor] | None,
              lengths: torch.Tensor | None):
    """The layer computed from its cell, one step at a time: the independent reference for the variants.

    ``x`` is ``(T, B, I)``; a row past its length keeps its state and outputs zero (packed semantics).
    Returns ``(output (T, B, D*H), [final state per state kind (L*D, B, H)])``.
    """
    T, B, _ = x.shape
    D, n_states = (2 if layer.bidirectional else 1), layer.spec.n_states
    valid = torch.ones(T, B, dtype=torch.bool) if lengths is None else (
        torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0))  # (T, B)
    finals: list[list[torch.Tensor]] = [[] for _ in range(n_states)]
    inp = x
    for l in range(layer.num_layers):
        outs = []
        for d in range(D):
            k = l * D + d
            cell = cell_cls(inp.size(-1), layer.hidden_size, layer.bias, dtype=x.dtype)
            # the cell uses the layer's own parameter objects, so that gradients flow back to the layer
            for n, p in layer.layer_params(l, d).items():
                delattr(cell, n)
                setattr(cell, n, p)
            s = [torch.zeros(B, layer.hidden_size, dtype=x.dtype) if states is None else states[j][k]
                 for j in range(n_states)]
            out = [None] * T
            for t in (reversed(range(T)) if d == 1 else range(T)):
                new = cell(inp[t], tuple(s) if n_states == 2 else s[0])
                new = list(new) if n_states == 2 else [new]
                m = valid[t].unsqueeze(1)  # (B, 1)
                s = [torch.where(m, nw, old) for nw, old in zip(new, s)]
                out[t] = torch.where(m, s[0], torch.zeros_like(s[0]))
            outs.append(torch.stack(out))  # (T, B, H)
            for j in range(n_states):
                finals[j].append(s[j])
        inp = torch.cat(outs, dim=2)  # (T, B, D*H)
    return inp, [torch.stack(f) for f in finals]


@st.composite
def variant_cases(draw):
    case = draw(layer_cases(modes=("LSTM",)))
    case["variant"] = draw(st.sampled_from(sorted(VARIANTS)))
    case["cfg"].pop("proj_size", None)
    return case


def check_variant(case: dict, backend: str) -> None:
    layer_cls, cell_cls = VARIANTS[case["variant"]]
    dtype = case["dtype"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "runs on the reference loop instead of the fused backend"
        layer = layer_cls(**case["cfg"], dtype=dtype, backend=backend)
    _randomise(layer, case["seed"], case["scale"])
    layer.eval()
    n_states = layer.spec.n_states
    g = torch.Generator().manual_seed(case["seed"] + 1)
    inp, x, states, lengths = _inputs(layer, case, n_states, g)
    batched = case["kind"] != "unbatched"
    hx = None if states is None else (tuple(states) if n_states == 2 else states[0])
    out, hidden = layer(inp, hx)
    if case["kind"] == "packed":
        from torch.nn.utils.rnn import pad_packed_sequence
        out, _ = pad_packed_sequence(out, total_length=case["T"])  # (T, B, D*H)
    elif not batched:
        out = out.unsqueeze(1)
    elif layer.batch_first:
        out = out.transpose(0, 1)
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    hidden = [h if batched else h.unsqueeze(1) for h in hidden]
    ref_states = None if states is None else [s if batched else s.unsqueeze(1) for s in states]
    ref_x = x if batched else x[:, :1]
    ref_out, ref_hidden = _unrolled(layer, cell_cls, ref_x, ref_states, lengths)
    where = f"{backend} {case}"
    w = torch.randn(out.shape, generator=g, dtype=dtype)
    grads = torch.autograd.grad((out * w).sum(), [x, *layer.parameters()], allow_unused=True)
    ref_grads = torch.autograd.grad((ref_out * w).sum(), [x, *layer.parameters()], allow_unused=True)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    ours = {"output": out, **{f"hidden[{k}]": h for k, h in enumerate(hidden)},
            **{n: a for n, a in zip(names, grads) if a is not None}}
    theirs = {"output": ref_out, **{f"hidden[{k}]": h for k, h in enumerate(ref_hidden)},
              **{n: b for n, b in zip(names, ref_grads) if b is not None}}
    if dtype != torch.float32:
        _assert_same(ours, theirs, dtype, where)
        return
    # float32: a layer norm over a few units (H = 2) amplifies rounding, and a compiled kernel rounds differently
    # from the unrolled cell; each is compared with the float64 result of the same weights and inputs, the
    # layer's error bounded by the unrolled float32 cell's (tests/_tolerance.py). `where` holds the case's seed.
    args = (cell_cls, batched, lengths, names)
    states64 = None if ref_states is None else [s.detach().double() for s in ref_states]
    truth = _unrolled_run(copy.deepcopy(layer).double(), x.detach().double(), states64, w.double(), *args)
    assert_float32_runs_close(ours, theirs, truth, where, terms=case["T"] * case["B"],
                              perturbed_run=lambda g: _unrolled_neighbour(layer, x, ref_states, w, g, *args))


def _unrolled_run(layer, x, states, w, cell_cls, batched, lengths, names) -> dict[str, torch.Tensor]:
    """Outputs, final states and gradients of the unrolled cell, in the dtype of ``layer`` and ``x``."""
    x = x.detach().requires_grad_()
    out, hidden = _unrolled(layer, cell_cls, x if batched else x[:, :1], states, lengths)
    grads = torch.autograd.grad((out * w).sum(), [x, *layer.parameters()], allow_unused=True)
    return {"output": out, **{f"hidden[{k}]": h for k, h in enumerate(hidden)},
            **{n: a for n, a in zip(names, grads) if a is not None}}


def _unrolled_neighbour(layer, x, states, w, g: torch.Generator, *args):
    """The unrolled float32 cell and its float64 result on a neighbouring float32 problem: every input, state and
    weight moved to a float32 neighbour (tests/_tolerance.py ulp_moved)."""
    moved = copy.deepcopy(layer)
    with torch.no_grad():
        for p in moved.parameters():
            p.copy_(ulp_moved(p, g))
    x32 = ulp_moved(x, g)
    s32 = None if states is None else [ulp_moved(s, g) for s in states]
    run32 = _unrolled_run(moved, x32, s32, w, *args)
    run64 = _unrolled_run(copy.deepcopy(moved).double(), x32.double(), None if s32 is None else
                          [s.double() for s in s32], w.double(), *args)
    return run32, run64


@pytest.mark.parametrize("backend", BACKENDS)
@DEFAULT
@given(case=variant_cases())
def test_variant_matches_unrolled_cell(case, backend):
    check_variant(case, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@SLOW
@given(case=variant_cases())
def test_variant_matches_unrolled_cell_slow(case, backend):
    check_variant(case, backend)


# -- invalid arguments and inputs ------------------------------------------------------------------------------

ALL_LAYERS = {**{m: OURS[m] for m in OURS}, **{v: VARIANTS[v][0] for v in VARIANTS}}
BAD_SIZES = st.one_of(st.integers(-5, 0), st.floats(0.5, 5.5).filter(lambda v: v != int(v)), st.just(True),
                      st.just("4"), st.none())
BAD_FLAGS = st.one_of(st.integers(0, 1), st.just("yes"), st.none(), st.floats(0, 1))
BAD_PROB = st.one_of(st.floats(-10, -1e-6), st.floats(1 + 1e-6, 10), st.just(math.nan), st.just("0.1"),
                     st.just(True))


@st.composite
def bad_constructors(draw):
    """(layer class name, kwargs with exactly one invalid argument)."""
    name = draw(st.sampled_from(sorted(ALL_LAYERS)))
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2)
    what = draw(st.sampled_from(["input_size", "hidden_size", "num_layers", "bias", "batch_first",
                                 "bidirectional", "dropout", "proj_size", "nonlinearity", "recurrent_dropout",
                                 "zoneout"]))
    if what in ("input_size", "hidden_size", "num_layers"):
        kwargs[what] = draw(BAD_SIZES)
    elif what in ("bias", "batch_first", "bidirectional"):
        kwargs[what] = draw(BAD_FLAGS)
    elif what in ("dropout", "recurrent_dropout", "zoneout"):
        kwargs[what] = draw(BAD_PROB)
    elif what == "proj_size":
        if name == "LSTM":
            kwargs[what] = draw(st.one_of(st.integers(-5, -1), st.integers(4, 10), st.just(1.5)))
        elif name in OURS:
            kwargs[what] = draw(st.integers(1, 3))  # projections are LSTM-only
        else:
            return "LSTM", dict(kwargs, proj_size=-1)
    else:  # nonlinearity
        if not name.startswith("RNN"):
            name = "RNN_TANH"
        kwargs[what] = draw(st.one_of(st.sampled_from(["", "Tanh", "TANH", " tanh", "relu6", "sigmoid"]),
                                      st.text("abcdefghilnrtuxy", max_size=6)).filter(lambda s: s not in ("tanh", "relu")))
    if name.startswith("RNN") and "nonlinearity" not in kwargs:
        kwargs["nonlinearity"] = name[4:].lower()
    return name, kwargs


def check_bad_constructor(name: str, kwargs: dict) -> None:
    cls = ALL_LAYERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ERRORS, match=rf"^{cls.__name__}: "):
            cls(**kwargs)


@DEFAULT
@given(args=bad_constructors())
def test_bad_constructor_raises_named_error(args):
    check_bad_constructor(*args)


@pytest.mark.slow
@SLOW
@given(args=bad_constructors())
def test_bad_constructor_raises_named_error_slow(args):
    check_bad_constructor(*args)


def test_unknown_backend_is_refused_at_construction():
    # The message names the backend registry, not the layer: it lists the names that are accepted.
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; expected one of \["):
        rnnlab.LSTM(3, 4, backend="nope")


@st.composite
def bad_forwards(draw):
    """A valid layer and an input/state with exactly one thing wrong."""
    name = draw(st.sampled_from(sorted(ALL_LAYERS)))
    cfg = dict(input_size=draw(st.integers(1, 5)), hidden_size=draw(st.integers(1, 5)),
               num_layers=draw(st.integers(1, 2)), batch_first=draw(st.booleans()),
               bidirectional=draw(st.booleans()))
    if name.startswith("RNN"):
        cfg["nonlinearity"] = name[4:].lower()
    T, B = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    what = draw(st.sampled_from(["features", "ndim", "int_dtype", "dtype", "empty", "hx_shape", "hx_type",
                                 "hx_dtype", "hx_unbatched", "packed_features", "input_type"]))
    return dict(name=name, cfg=cfg, T=T, B=B, what=what, delta=draw(st.integers(1, 3)),
                pick=draw(st.integers(0, 10)), ndim=draw(st.sampled_from([1, 4])))


def check_bad_forward(case: dict) -> None:
    cls = ALL_LAYERS[case["name"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls(**case["cfg"])
    I, T, B, what, delta = layer.input_size, case["T"], case["B"], case["what"], case["delta"]
    n_states = layer.spec.n_states
    shape = (B, T, I) if layer.batch_first else (T, B, I)
    x = torch.randn(shape)
    states = [torch.randn(s) for s in _state_shapes(layer, B, n_states)]
    hx = None
    if what == "features":
        x = torch.randn(*shape[:2], I + delta)
    elif what == "packed_features":
        x = pack_padded_sequence(torch.randn(T, B, I + delta), torch.full((B,), T), enforce_sorted=False)
    elif what == "ndim":
        x = torch.randn(*([2] * (case["ndim"] - 1)), I)
    elif what == "int_dtype":
        x = torch.randint(0, 3, shape)
    elif what == "dtype":
        x = x.double()
    elif what == "empty":  # an empty sequence (torch.nn refuses it; an empty batch is valid input)
        x = torch.randn(0, B, I)
        if layer.batch_first:
            x = x.transpose(0, 1)
    elif what == "input_type":
        x = x.tolist()
    else:
        if what == "hx_shape":
            k = case["pick"] % n_states
            s = list(states[k].shape)
            s[case["pick"] % 3] += delta
            states[k] = torch.randn(s)
        elif what == "hx_dtype":
            states[case["pick"] % n_states] = states[case["pick"] % n_states].double()
        elif what == "hx_unbatched":
            states = [s[:, 0] for s in states]  # 2-D states with 3-D input: must not broadcast
        hx = tuple(states) if n_states == 2 else states[0]
        if what == "hx_type":
            hx = states[0] if n_states == 2 else (states[0], states[0])
            if case["pick"] % 2:
                hx = (states[0].tolist(), states[-1]) if n_states == 2 else states[0].tolist()
    with pytest.raises(ERRORS, match=rf"^{cls.__name__}: "):
        layer(x, hx)


@DEFAULT
@given(case=bad_forwards())
def test_bad_forward_raises_named_error(case):
    check_bad_forward(case)


@pytest.mark.slow
@SLOW
@given(case=bad_forwards())
def test_bad_forward_raises_named_error_slow(case):
    check_bad_forward(case)


@st.composite
def bad_cell_calls(draw):
    """A cell (torch's or a variant) with one invalid constructor argument or call argument."""
    name = draw(st.sampled_from(sorted(CELLS) + sorted(VARIANTS)))
    # torch.nn's cells take sizes of 0 and any truthy or falsy bias, so neither is a bad argument of a cell
    what = draw(st.sampled_from(["input_size", "hidden_size", "ndim", "features", "dtype", "int_dtype",
                                 "hx_shape", "hx_count", "hx_type", "hx_batch"]))
    return dict(name=name, what=what, I=draw(st.integers(1, 5)), H=draw(st.integers(1, 5)),
                B=draw(st.integers(1, 3)), delta=draw(st.integers(1, 3)),
                bad_size=draw(BAD_SIZES.filter(lambda v: v != 0)), ndim=draw(st.sampled_from([0, 3])),
                batched=draw(st.booleans()))


def check_bad_cell(case: dict) -> None:
    name, what, I, H, B, delta = (case[k] for k in ("name", "what", "I", "H", "B", "delta"))
    cls = CELLS[name][0] if name in CELLS else VARIANTS[name][1]
    extra = _cell_args(name) if name in CELLS else {}
    match = rf"^{cls.__name__}: "
    if what in ("input_size", "hidden_size"):
        args = dict(input_size=I, hidden_size=H, bias=True)
        args[what] = case["bad_size"]
        with pytest.raises(ERRORS, match=match):
            cls(**args, **extra)
        return
    cell = cls(I, H, **extra)
    n_states = cell.spec.n_states
    lead = (B,) if case["batched"] else ()
    x = torch.randn(*lead, I)
    states = [torch.randn(*lead, H) for _ in range(n_states)]
    if what == "ndim":
        x = torch.randn(*([2] * case["ndim"])) if case["ndim"] == 3 else torch.tensor(1.0)
    elif what == "features":
        x = torch.randn(*lead, I + delta)
    elif what == "dtype":
        x = x.double()
    elif what == "int_dtype":
        x = torch.ones(*lead, I, dtype=torch.int64)
    elif what == "hx_shape":
        states[-1] = torch.randn(*lead, H + delta)
    elif what == "hx_batch":
        states[0] = torch.randn(B + delta, H) if case["batched"] else torch.randn(1, H)
    hx = tuple(states) if n_states == 2 else states[0]
    if what == "hx_count":
        hx = (states[0],) * (3 - n_states)  # 2 for a one-state cell, 1 for LSTM-like
    elif what == "hx_type":
        hx = (states[0].tolist(), states[-1]) if n_states == 2 else states[0].tolist()
    with pytest.raises(ERRORS, match=match):
        cell(x, hx)


@DEFAULT
@given(case=bad_cell_calls())
def test_bad_cell_call_raises_named_error(case):
    check_bad_cell(case)


@pytest.mark.slow
@SLOW
@given(case=bad_cell_calls())
def test_bad_cell_call_raises_named_error_slow(case):
    check_bad_cell(case)


def _hypothesis_tests(slow: bool) -> list:
    """The @given tests of this module, the ``slow``-marked ones or the others."""
    tests = [f for name, f in globals().items() if name.startswith("test_") and hasattr(f, "hypothesis")]
    return [f for f in tests if any(m.name == "slow" for m in getattr(f, "pytestmark", [])) == slow]


def _examples_run(test, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """How many cases hypothesis runs for ``test``, all its parametrized instances together, and how many instances:
    the test runs with its settings as applied, its body replaced by a counter (the cases are drawn, nothing is
    checked)."""
    calls = {"n": 0}

    def count(*args, **kwargs) -> None:
        calls["n"] += 1

    monkeypatch.setattr(test.hypothesis, "inner_test", count)
    marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    assert all("," not in m.args[0] for m in marks), "only one-argument parametrize is counted here"
    instances = list(itertools.product(*(m.args[1] for m in marks)))
    for values in instances:
        test(**{m.args[0]: v for m, v in zip(marks, values)})
    return calls["n"], len(instances)


def test_profiles_reach_the_issue_counts(monkeypatch):
    """The default run is a few hundred cases (issue 8): counted by running every default-run @given test of this
    module with a counting body; each runs the default profile's number of cases. Each has a ``slow`` copy; those
    run at least 2,000 together (counted the same way by the slow test below)."""
    default, slow = _hypothesis_tests(slow=False), _hypothesis_tests(slow=True)
    assert sorted(f.__name__ + "_slow" for f in default) == sorted(f.__name__ for f in slow)
    counts = {f.__name__: _examples_run(f, monkeypatch) for f in default}
    for name, (n, instances) in counts.items():
        assert n == DEFAULT.max_examples * instances, f"{name}: {n} cases in {instances} instances"
    assert 150 <= sum(n for n, _ in counts.values()) <= 600


@pytest.mark.slow
def test_slow_profile_reaches_the_issue_count(monkeypatch):
    """The slow run: at least 2,000 cases (issue 8), counted as above."""
    assert sum(_examples_run(f, monkeypatch)[0] for f in _hypothesis_tests(slow=True)) >= 2000
