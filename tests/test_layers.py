"""rnnlab.RNN/LSTM/GRU against torch.nn with copied weights, on every registered backend.

Each case loads one module's state_dict into the other (both directions), runs the same input, and compares
outputs, final states and the gradients of the input, the initial states and every parameter.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab.kernels import available_backends

TOL = 1e-5
T, B, I, H = 5, 4, 3, 6
LENGTHS = [3, 5, 1, 4]  # unsorted on purpose

MODES = {
    "rnn_tanh": (rnnlab.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnlab.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnlab.LSTM, nn.LSTM, {}),
    "gru": (rnnlab.GRU, nn.GRU, {}),
}
CONFIGS = {
    "plain": {},
    "2layers": {"num_layers": 2},
    "3layers_bidir": {"num_layers": 3, "bidirectional": True},
    "bidir_batch_first": {"bidirectional": True, "batch_first": True},
    "nobias_2layers": {"bias": False, "num_layers": 2},
    "dropout_eval": {"num_layers": 2, "dropout": 0.3},
}
LSTM_ONLY = {
    "proj": {"proj_size": 2},
    "proj_2layers_bidir": {"proj_size": 2, "num_layers": 2, "bidirectional": True},
}
INPUTS = ["default_state", "given_state", "unbatched", "packed"]


def _cases():
    for mode in MODES:
        configs = dict(CONFIGS, **(LSTM_ONLY if mode == "lstm" else {}))
        for cname, cfg in configs.items():
            for kind in INPUTS:
                yield pytest.param(mode, cfg, kind, id=f"{mode}-{cname}-{kind}")


def make_pair(mode: str, cfg: dict, direction: str, dtype=torch.float32):
    """An rnnlab module and a torch.nn module with identical weights, copied in the given direction."""
    ours_cls, torch_cls, extra = MODES[mode]
    kwargs = dict(extra, **cfg)
    ours = ours_cls(I, H, **kwargs, dtype=dtype)
    theirs = torch_cls(I, H, **kwargs, dtype=dtype)
    if direction == "torch_to_rnnlab":
        theirs.load_state_dict({k: (torch.rand_like(v) * 2 - 1) * 0.5 for k, v in theirs.state_dict().items()})
        ours.load_state_dict(theirs.state_dict())
    else:
        ours.load_state_dict({k: (torch.rand_like(v) * 2 - 1) * 0.5 for k, v in ours.state_dict().items()})
        theirs.load_state_dict(ours.state_dict())
    ours.eval()
    theirs.eval()
    return ours, theirs


def state_shapes(module, batch: int | None):
    n = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    shapes = [(n, h_out), (n, module.hidden_size)] if isinstance(module, (nn.LSTM, rnnlab.LSTM)) else [(n, h_out)]
    return [s if batch is None else (s[0], batch, s[1]) for s in shapes]


def run(module, kind: str, x: torch.Tensor, states: list[torch.Tensor] | None, weights: dict):
    """Forward, a loss that touches every output, backward; return everything worth comparing."""
    x = x.clone().requires_grad_(True)
    states = None if states is None else [s.clone().requires_grad_(True) for s in states]
    hx = None if states is None else (tuple(states) if len(states) == 2 else states[0])
    if kind == "packed":
        # packed input is (T, B, I) data regardless of batch_first, as in torch.nn
        inp = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    else:
        inp = x
    out, hidden = module(inp, hx)
    out_t = out.data if kind == "packed" else out
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    loss = (out_t * weights["out"][: out_t.numel()].view_as(out_t)).sum()
    for k, h in enumerate(hidden):
        loss = loss + (h * weights[f"h{k}"][: h.numel()].view_as(h)).sum()
    loss.backward()
    result = {"output": out_t, "loss": loss, "x.grad": x.grad}
    for k, h in enumerate(hidden):
        result[f"hidden[{k}]"] = h
        if states is not None:
            result[f"hx[{k}].grad"] = states[k].grad
    for name, p in module.named_parameters():
        result[f"{name}.grad"] = p.grad
    return result


def assert_close_dicts(a: dict, b: dict, tol: float = TOL):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] is not None and b[key] is not None, key
        assert a[key].shape == b[key].shape, (key, a[key].shape, b[key].shape)
        diff = (a[key].detach() - b[key].detach()).abs().max().item()
        assert diff <= tol, f"{key}: max abs diff {diff:.3g} > {tol}"


def inputs_for(module, kind: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    batched = kind != "unbatched"
    shape = (T, B, I) if batched else (T, I)
    if batched and module.batch_first and kind != "packed":
        shape = (B, T, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    states = None
    if kind in ("given_state", "unbatched", "packed"):
        states = [torch.randn(s, generator=g, dtype=dtype) for s in state_shapes(module, B if batched else None)]
    weights = {"out": torch.randn(10_000, generator=g, dtype=dtype),
               "h0": torch.randn(1000, generator=g, dtype=dtype), "h1": torch.randn(1000, generator=g, dtype=dtype)}
    return x, states, weights


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("direction", ["torch_to_rnnlab", "rnnlab_to_torch"])
@pytest.mark.parametrize("mode,cfg,kind", list(_cases()))
def test_equals_torch(mode, cfg, kind, direction, backend):
    ours, theirs = make_pair(mode, cfg, direction)
    ours.backend = backend
    x, states, weights = inputs_for(ours, kind)
    assert_close_dicts(run(ours, kind, x, states, weights), run(theirs, kind, x, states, weights))


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("mode", list(MODES))
def test_dropout_train_mode_matches_torch_with_same_seed(mode, backend):
    # torch.nn applies F.dropout to each non-final layer's output; with the same seed the masks are the same.
    ours, theirs = make_pair(mode, {"num_layers": 3, "dropout": 0.4, "bidirectional": True}, "torch_to_rnnlab")
    ours.backend = backend
    ours.train()
    theirs.train()
    x, states, weights = inputs_for(ours, "given_state")
    torch.manual_seed(123)
    a = run(ours, "given_state", x, states, weights)
    torch.manual_seed(123)
    b = run(theirs, "given_state", x, states, weights)
    assert_close_dicts(a, b)
    # and the masks really are random: a different seed changes the output
    for p in ours.parameters():
        p.grad = None
    torch.manual_seed(124)
    c = run(ours, "given_state", x, states, weights)
    assert (c["output"] - a["output"]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("mode", list(MODES))
def test_dropout_train_mode_equals_hand_composed_reference(mode, backend):
    """Train-mode dropout against layers composed by hand from single-layer modules and F.dropout."""
    ours_cls, _, extra = MODES[mode]
    model = ours_cls(I, H, num_layers=2, dropout=0.5, **extra)
    model.backend = backend
    model.train()
    x = torch.randn(T, B, I)
    torch.manual_seed(7)
    out, _ = model(x)
    singles = []
    for layer in range(2):
        single = ours_cls(I if layer == 0 else H, H, **extra)
        single.backend = "reference"
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in model.state_dict().items()
                                if f"_l{layer}" in k})
        singles.append(single)
    torch.manual_seed(7)
    y, _ = singles[0](x)
    y = torch.nn.functional.dropout(y, 0.5, training=True)
    y, _ = singles[1](y)
    assert (out - y).abs().max() <= TOL


@pytest.mark.parametrize("mode", list(MODES))
def test_same_seed_same_init_as_torch(mode):
    ours_cls, torch_cls, extra = MODES[mode]
    kwargs = dict(extra, num_layers=2, bidirectional=True, **({"proj_size": 3} if mode == "lstm" else {}))
    torch.manual_seed(42)
    ours = ours_cls(I, H, **kwargs)
    torch.manual_seed(42)
    theirs = torch_cls(I, H, **kwargs)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for k in ours_sd:
        assert torch.equal(ours_sd[k], theirs_sd[k]), k
    bound = 1 / H**0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())


@pytest.mark.parametrize(
    "cls,torch_cls,kwargs",
    [
        (rnnlab.LSTM, nn.LSTM, {}),
        (rnnlab.LSTM, nn.LSTM, {"num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.1,
                                "bidirectional": True, "proj_size": 2}),
        (rnnlab.GRU, nn.GRU, {"num_layers": 3}),
        (rnnlab.RNN, nn.RNN, {"nonlinearity": "relu", "bidirectional": True}),
    ],
)
def test_repr_and_all_weights_match_torch(cls, torch_cls, kwargs):
    ours, theirs = cls(I, H, **kwargs), torch_cls(I, H, **kwargs)
    assert repr(ours) == repr(theirs)
    theirs.load_state_dict(ours.state_dict())
    assert len(ours.all_weights) == len(theirs.all_weights)
    for ours_layer, theirs_layer in zip(ours.all_weights, theirs.all_weights):
        assert len(ours_layer) == len(theirs_layer)
        for p, q in zip(ours_layer, theirs_layer):
            assert torch.equal(p, q)
    assert ours._flat_weights_names == theirs._flat_weights_names


@pytest.mark.parametrize("mode", list(MODES))
def test_pickle_deepcopy_and_state_dict_roundtrip(mode):
    ours, _ = make_pair(mode, {"num_layers": 2, "bidirectional": True}, "rnnlab_to_torch")
    x = torch.randn(T, B, I)
    expected, _ = ours(x)
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert torch.equal(clone(x)[0], expected)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    fresh = type(ours)(I, H, num_layers=2, bidirectional=True, **MODES[mode][2])
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    assert torch.equal(fresh(x)[0], expected)


@pytest.mark.parametrize("mode", list(MODES))
def test_double_and_to_follow_torch(mode):
    ours, theirs = make_pair(mode, {"num_layers": 2}, "torch_to_rnnlab")
    ours.double()
    theirs.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert (ours(x)[0] - theirs(x)[0]).abs().max() <= 1e-12
    ours.to(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype"):
        ours(x)


def _gradcheck_module(module, x, hx):
    """gradcheck w.r.t. the input, the initial states and every parameter (via functional_call)."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    states = list(hx) if isinstance(hx, tuple) else [hx]
    n_states = len(states)

    def f(x, *rest):
        st, ps = rest[:n_states], rest[n_states:]
        h = tuple(st) if n_states == 2 else st[0]
        out, hidden = torch.func.functional_call(module, dict(zip(names, ps)), (x, h))
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        return (out,) + hidden

    inputs = (x.requires_grad_(True), *[s.requires_grad_(True) for s in states], *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("mode", list(MODES))
def test_gradcheck_layers_float64(mode, backend):
    ours_cls, _, extra = MODES[mode]
    kwargs = dict(extra, num_layers=2, bidirectional=True, **({"proj_size": 2} if mode == "lstm" else {}))
    module = ours_cls(3, 4, **kwargs, dtype=torch.float64, backend=backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    shapes = state_shapes(module, 2)
    hx = tuple(torch.randn(s, dtype=torch.float64) for s in shapes)
    _gradcheck_module(module, x, hx if len(hx) == 2 else hx[0])


def test_packed_output_keeps_input_layout_and_pads_to_zero():
    lstm = rnnlab.LSTM(I, H, bidirectional=True)
    x = torch.randn(T, B, I)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    assert lengths.tolist() == LENGTHS
    # each sequence alone gives the same output and final state as it does inside the packed batch
    for b, n in enumerate(LENGTHS):
        alone, (h_alone, _) = lstm(x[:n, b : b + 1])
        assert (alone[:, 0] - padded[:n, b]).abs().max() <= TOL
        assert (h_alone[:, 0] - h_n[:, b]).abs().max() <= TOL
        assert padded[n:, b].abs().max() == 0 if n < T else True


def test_backend_choice_by_argument_setter_and_environment(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        rnnlab.LSTM(I, H, backend="nope")
    with pytest.raises(ValueError, match="unknown backend"):
        rnnlab.set_backend("nope")
    monkeypatch.setenv("RNNLAB_BACKEND", "reference")
    assert rnnlab.get_backend() == "reference"
    monkeypatch.setenv("RNNLAB_BACKEND", "bogus")
    with pytest.raises(ValueError, match="RNNLAB_BACKEND"):
        rnnlab.get_backend()
    rnnlab.set_backend("reference")
    try:
        assert rnnlab.get_backend() == "reference"  # the setter wins over the environment
    finally:
        rnnlab.set_backend(None)
