"""Cell variants and layer options, each against a hand-written loop of its equations or an exact identity."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab.cellspec import CellSpec, masked
from _tolerance import assert_float32_runs_close, perturb_parameters_, rounding_perturbed

TOL = 1e-5
T, B, I, H = 6, 3, 4, 5


def _ln(v, gain, bias=None, eps=1e-5):
    """Layer norm written out: (v - mean) / sqrt(var + eps) * gain + bias, over the last axis."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if bias is None else out + bias


def hand_ln_lstm(x, p):
    h, c = torch.zeros(x.size(1), H, dtype=x.dtype), torch.zeros(x.size(1), H, dtype=x.dtype)
    outs = []
    for t in range(x.size(0)):
        a = _ln(x[t] @ p["weight_ih"].T, p["ln_ih_weight"]) + _ln(h @ p["weight_hh"].T, p["ln_hh_weight"]) + p["bias"]
        i, f, g, o = a[:, :H].sigmoid(), a[:, H:2 * H].sigmoid(), a[:, 2 * H:3 * H].tanh(), a[:, 3 * H:].sigmoid()
        c = f * c + i * g
        h = o * torch.tanh(_ln(c, p["ln_c_weight"], p["ln_c_bias"]))
        outs.append(h)
    return torch.stack(outs), (h, c)


def hand_ln_gru(x, p):
    h = torch.zeros(x.size(1), H, dtype=x.dtype)
    outs = []
    for t in range(x.size(0)):
        a = _ln(x[t] @ p["weight_ih"].T, p["ln_ih_weight"]) + p["bias_ih"]
        b = _ln(h @ p["weight_hh"].T, p["ln_hh_weight"]) + p["bias_hh"]
        r = (a[:, :H] + b[:, :H]).sigmoid()
        z = (a[:, H:2 * H] + b[:, H:2 * H]).sigmoid()
        n = (a[:, 2 * H:] + r * b[:, 2 * H:]).tanh()
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def hand_peephole(x, p):
    h, c = torch.zeros(x.size(1), H, dtype=x.dtype), torch.zeros(x.size(1), H, dtype=x.dtype)
    outs = []
    for t in range(x.size(0)):
        a = x[t] @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
        i = (a[:, :H] + p["weight_ci"] * c).sigmoid()
        f = (a[:, H:2 * H] + p["weight_cf"] * c).sigmoid()
        g = a[:, 2 * H:3 * H].tanh()
        c = f * c + i * g
        o = (a[:, 3 * H:] + p["weight_co"] * c).sigmoid()
        h = o * c.tanh()
        outs.append(h)
    return torch.stack(outs), (h, c)


VARIANTS = {
    "layer_norm_lstm": (rnnlab.LayerNormLSTM, rnnlab.LayerNormLSTMCell, hand_ln_lstm),
    "layer_norm_gru": (rnnlab.LayerNormGRU, rnnlab.LayerNormGRUCell, hand_ln_gru),
    "peephole_lstm": (rnnlab.PeepholeLSTM, rnnlab.PeepholeLSTMCell, hand_peephole),
}


def _randomise(module, scale=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-scale, scale)


@pytest.mark.filterwarnings("ignore:.*reference loop")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_equals_hand_written_equations(name):
    """The layer on its default backend (a compiled kernel where there is one) against the equations written out
    with torch ops. The layer's float32 outputs, final states and gradients are compared with the equations' in
    float64 on the same weights and input, as tests/_tolerance.py describes (the equations in float32 are the
    reference whose own error sets the scale)."""
    layer_cls, _, hand = VARIANTS[name]
    layer = layer_cls(I, H)
    _randomise(layer)  # gains and biases away from 1 and 0, so every term is exercised
    x = torch.randn(T, B, I, requires_grad=True)
    w = torch.randn(T, B, H)
    names = ["x", *(n for n, _ in layer.named_parameters())]

    def run(module, x, hand_written: bool) -> dict[str, torch.Tensor]:
        """Output, final states and the gradients of (out * w).sum() to x and every parameter."""
        if hand_written:
            params = {k[: -len("_l0")]: v for k, v in module.named_parameters()}
            out, hidden = hand(x, params)
        else:
            out, hidden = module(x)
            hidden = tuple(h[0] for h in hidden) if isinstance(hidden, tuple) else hidden[0]
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), [x, *module.parameters()])
        return {"output": out, **{f"final state {k}": h for k, h in enumerate(hidden)}, **dict(zip(names, grads))}

    def float64(g: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The equations in float64: on the same values, or (g) on values moved by one float32 rounding."""
        module = copy.deepcopy(layer).double()
        x64 = x.detach().double() if g is None else rounding_perturbed(x, g)
        return run(module if g is None else perturb_parameters_(module, g), x64.requires_grad_(True), True)

    got, want, truth = run(layer, x, False), run(layer, x, True), float64(None)
    assert_float32_runs_close(got, want, truth, name, terms=T * B, perturbed_run=float64)


@pytest.mark.filterwarnings("ignore:.*reference loop")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_stack_equals_cells_composed_by_hand(name):
    """Two bidirectional layers with packed input = the variant's cell run forward and backward per sequence."""
    layer_cls, cell_cls, _ = VARIANTS[name]
    layer = layer_cls(I, H, num_layers=2, bidirectional=True)
    _randomise(layer)
    x = torch.randn(T, B, I)
    lengths = [4, 6, 2]
    out, _ = layer(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)

    def cell_for(layer_idx, direction):
        cell = cell_cls(I if layer_idx == 0 else 2 * H, H)
        suffix = f"_l{layer_idx}" + ("_reverse" if direction else "")
        cell.load_state_dict({k[: -len(suffix)]: v for k, v in layer.state_dict().items() if k.endswith(suffix)})
        return cell

    for b, n in enumerate(lengths):
        seq = x[:n, b]  # (n, I)
        for layer_idx in range(2):
            runs = []
            for direction in range(2):
                cell, steps = cell_for(layer_idx, direction), (range(n - 1, -1, -1) if direction else range(n))
                state, outs = None, [None] * n
                for t in steps:
                    state = cell(seq[t], state)
                    outs[t] = state[0] if isinstance(state, tuple) else state
                runs.append(torch.stack(outs))
            seq = torch.cat(runs, dim=1)  # (n, 2H)
        assert (seq - out[:n, b]).abs().max() <= TOL
        assert out[n:, b].abs().max() == 0 if n < T else True


@pytest.mark.filterwarnings("ignore:.*reference loop")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_gradcheck_float64(name):
    layer_cls, cell_cls, _ = VARIANTS[name]
    layer = layer_cls(3, 2, num_layers=2, bidirectional=True, dtype=torch.float64)
    _randomise(layer)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, hidden = torch.func.functional_call(layer, dict(zip(names, ps)), (x,))
        return out, *(hidden if isinstance(hidden, tuple) else (hidden,))

    assert torch.autograd.gradcheck(f, (x, *params))
    cell = cell_cls(3, 2, dtype=torch.float64)
    _randomise(cell)
    assert torch.autograd.gradcheck(lambda x: cell(x)[0] if isinstance(cell(x), tuple) else cell(x), (x[0],))


def test_peephole_with_zero_peepholes_is_the_plain_lstm():
    plain = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    peep = rnnlab.PeepholeLSTM(I, H, num_layers=2, bidirectional=True)
    missing = peep.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted({k.split("_l")[0] for k in missing}) == ["weight_cf", "weight_ci", "weight_co"]
    with torch.no_grad():
        for k in missing:
            getattr(peep, k).zero_()
    x = torch.randn(T, B, I)
    a, (h, c) = peep(x)
    b, (h2, c2) = plain(x)
    assert (a - b).abs().max() <= TOL and (c - c2).abs().max() <= TOL


def test_reference_loop_fallback_warns_once_per_reason(monkeypatch):
    monkeypatch.setattr(rnnlab.kernels, "_warned", set())
    x = torch.randn(T, B, I)
    # a cell without a whole-sequence kernel: LayerNormGRU's maths with its kernel taken away
    spec = dataclasses.replace(rnnlab.cellspec.LAYER_NORM_GRU_SPEC, name="NoKernelGRU", kernel=None)
    layer = rnnlab.Recurrent(spec, I, H, backend="fused") if "fused" in rnnlab.available_backends() else None
    if layer is None:
        pytest.skip("no fused backend registered")
    with pytest.warns(UserWarning, match=r"NoKernelGRU has no whole-sequence kernel, so it runs "
                                         r"on the reference loop instead of the 'fused' backend"):
        layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # once only
        rnnlab.Recurrent(spec, I, H, backend="reference")(x)  # no warning when the reference loop was asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnlab.LSTM(I, H, zoneout=0.1, backend="fused")(x)  # the options run on LSTM_SPEC's kernel: no warning
    # a run the kernel declines (here: as if the compiled loops were missing) still warns, once
    monkeypatch.setattr(rnnlab.kernels.common, "compiled_available", lambda: False)
    with pytest.warns(UserWarning, match=r"LSTM's kernel does not cover this run \(dtype, device or option\), "
                                         r"so it runs on the reference loop"):
        rnnlab.LSTM(I, H, zoneout=0.1, backend="fused")(x)


# -- layer options ---------------------------------------------------------------------------------------------

OPTION_MODES = {"lstm": (rnnlab.LSTM, nn.LSTM), "gru": (rnnlab.GRU, nn.GRU), "rnn": (rnnlab.RNN, nn.RNN)}


@pytest.mark.filterwarnings("ignore:.*reference loop")
@pytest.mark.parametrize("mode", list(OPTION_MODES))
def test_dropout_options_are_identity_in_eval_and_active_in_training(mode):
    ours_cls, torch_cls = OPTION_MODES[mode]
    ours = ours_cls(I, H, num_layers=2, recurrent_dropout=0.5, weight_dropout=0.5)
    theirs = torch_cls(I, H, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    ours.eval()
    assert (ours(x)[0] - theirs(x)[0]).abs().max() <= TOL
    ours.train()
    assert (ours(x)[0] - theirs(x)[0]).abs().max() > 1e-3
    # the weights themselves are never changed by DropConnect
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def _recording_spec(log: list) -> CellSpec:
    """An Elman cell that logs the recurrent mask and W_hh it is given at every step."""

    def params(input_size, hidden_size, bias, proj_size):
        return {"weight_ih": (hidden_size, input_size), "weight_hh": (hidden_size, hidden_size)}

    def step(x, h, p, h_mask):
        log.append((h_mask, p["weight_hh"]))
        return torch.tanh(F.linear(x, p["weight_ih"]) + F.linear(masked(h, h_mask), p["weight_hh"]))

    return CellSpec("Recording", params, step)


@pytest.mark.filterwarnings("ignore:.*reference loop")
def test_recurrent_dropout_mask_is_one_per_sequence_shared_over_time():
    log: list = []
    layer = rnnlab.Recurrent(_recording_spec(log), I, 50, recurrent_dropout=0.3)
    layer(torch.randn(T, 8, I))
    masks = [m for m, _ in log]
    assert len(masks) == T and all(m is masks[0] for m in masks)  # the same mask at every step
    m = masks[0]
    assert m.shape == (8, 50)
    assert set(m.unique().tolist()) == {0.0, 1 / 0.7} or torch.allclose(m.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert 0.15 < (m == 0).float().mean() < 0.45  # about p of the units dropped
    assert not torch.equal(m[0], m[1])  # each sequence has its own mask
    log.clear()
    layer(torch.randn(T, 8, I))
    assert not torch.equal(log[0][0], m)  # a fresh mask per forward
    log.clear()
    layer.eval()
    layer(torch.randn(T, 8, I))
    assert all(mask is None for mask, _ in log)


@pytest.mark.filterwarnings("ignore:.*reference loop")
def test_dropconnect_mask_is_one_per_forward_shared_over_time_and_batch():
    log: list = []
    layer = rnnlab.Recurrent(_recording_spec(log), I, 40, weight_dropout=0.4)
    layer(torch.randn(T, 8, I))
    weights = [w for _, w in log]
    assert all(w is weights[0] for w in weights)
    w, raw = weights[0], layer.weight_hh_l0
    dropped = w == 0
    assert 0.3 < dropped.float().mean() < 0.5
    assert torch.allclose(w[~dropped], raw[~dropped] / 0.6)


def test_zoneout_keeps_units_per_step_in_training_and_uses_the_expectation_in_eval():
    def params(input_size, hidden_size, bias, proj_size):
        return {"weight_ih": (hidden_size, input_size)}

    def step(x, h, p, h_mask):  # every step would add 1 to every unit
        return h + 1

    layer = rnnlab.Recurrent(CellSpec("Counter", params, step), I, 200, zoneout=0.25, backend="reference")
    out, _ = layer(torch.zeros(T, 4, I))
    increments = torch.diff(torch.cat([torch.zeros(1, 4, 200), out]), dim=0)  # 0 (kept) or 1 (updated)
    assert set(increments.unique().tolist()) <= {0.0, 1.0}
    kept = increments == 0
    assert 0.2 < kept.float().mean() < 0.3
    assert not torch.equal(kept[0], kept[1])  # a fresh mask at every step
    layer.eval()
    out, _ = layer(torch.zeros(T, 4, I))
    expected = torch.cumsum(torch.full((T, 4, 200), 0.75), 0)  # h_t = 0.25 h_{t-1} + 0.75 (h_{t-1} + 1)
    assert (out - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("compiled", [True, False], ids=["xoshiro", "torch-lanes"])
def test_bernoulli_mask_has_the_rate_independent_elements_and_exact_edges(compiled, monkeypatch):
    from rnnlab.kernels.masks import bernoulli_mask

    if compiled and not rnnlab.kernels.fused.compiled_available():
        pytest.skip("the compiled kernels are not available")
    if not compiled:
        monkeypatch.setattr(rnnlab.kernels.masks, "compiled_available", lambda: False)
    cpu = torch.device("cpu")
    assert bernoulli_mask((7, 3, 5), 0.0, torch.float32, cpu).sum() == 0
    assert bernoulli_mask((7, 3, 5), 1.0, torch.float64, cpu).sum() == 105
    torch.manual_seed(3)
    m = bernoulli_mask((400, 64, 64), 0.3, torch.float32, cpu)  # 1.6 M draws: sigma of a rate ~ 0.0004
    assert m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.0}
    flat = m.flatten()
    # every 16-bit lane of a 64-bit draw has the rate (torch's draws: the top lane holds the sign bit)
    for lane in range(4):
        assert abs(float(flat[lane::4].mean()) - 0.3) < 0.004, lane
    # every position in a block of 32 (the compiled generator: 16-bit lane k % 4 of stream k / 4 of 8) has it
    by_position = flat.view(-1, 32).mean(dim=0)
    assert float((by_position - 0.3).abs().max()) < 0.01, by_position  # 51200 draws each: sigma ~ 0.002
    # neighbours (which share a draw), the next stream's lane (4 apart) and the next draw of the same stream
    # (32 apart) are independent: P(both) = p^2
    for lag in (1, 4, 32):
        assert abs(float((flat[:-lag] * flat[lag:]).mean()) - 0.09) < 0.003, lag
    torch.manual_seed(3)
    assert torch.equal(bernoulli_mask((400, 64, 64), 0.3, torch.float32, cpu), m)  # a seed fixes it
    assert bernoulli_mask((5, 4), 0.5, torch.bfloat16, cpu).dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:.*reference loop")
def test_return_all_states_and_gates_are_consistent_with_the_recurrence():
    lstm = rnnlab.LSTM(I, H, num_layers=2, bidirectional=True, return_gates=True, batch_first=True)
    x = torch.randn(B, T, I)
    out, (h_n, c_n), states = lstm(x)
    assert states.h.shape == (2, B, T, 2 * H)
    assert torch.equal(states.h[-1], out)
    # last step of each layer's forward direction = h_n, c_n of that layer (first step for the reverse one)
    for layer in range(2):
        assert torch.allclose(states.h[layer, :, -1, :H], h_n[2 * layer])
        assert torch.allclose(states.c[layer, :, -1, :H], c_n[2 * layer])
        assert torch.allclose(states.h[layer, :, 0, H:], h_n[2 * layer + 1])
    g = states.gates
    c_prev = torch.cat([torch.zeros(2, B, 1, 2 * H), states.c[:, :, :-1]], dim=2)  # forward halves only below
    c_expected = g["f"] * c_prev + g["i"] * g["g"]
    assert torch.allclose(states.c[..., :H], c_expected[..., :H], atol=1e-6)
    assert torch.allclose(states.h[..., :H], (g["o"] * torch.tanh(states.c))[..., :H], atol=1e-6)
    # and the plain path gives the same output
    plain = rnnlab.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
    plain.load_state_dict(lstm.state_dict())
    assert (plain(x)[0] - out).abs().max() <= TOL


def test_learnable_initial_state():
    gru = rnnlab.GRU(I, H, num_layers=2, learn_init=True)
    plain = rnnlab.GRU(I, H, num_layers=2)
    plain.load_state_dict({k: v for k, v in gru.state_dict().items() if not k.startswith("h0")})
    x = torch.randn(T, B, I)
    assert (gru(x)[0] - plain(x)[0]).abs().max() <= TOL  # zero-initialised: the same as no initial state
    with torch.no_grad():
        gru.h0_l0.uniform_(-1, 1)
        gru.h0_l1.uniform_(-1, 1)
    h0 = torch.stack([gru.h0_l0, gru.h0_l1]).unsqueeze(1).expand(2, B, H).detach()
    assert (gru(x)[0] - plain(x, h0)[0]).abs().max() <= TOL
    gru(x)[0].sum().backward()
    assert gru.h0_l0.grad is not None and gru.h0_l0.grad.abs().sum() > 0


def test_forget_bias_sets_the_gate_slice():
    lstm = rnnlab.LSTM(I, H, forget_bias=1.0)
    assert torch.all(lstm.bias_ih_l0[H:2 * H] == 1) and torch.all(lstm.bias_hh_l0[H:2 * H] == 0)
    ln = rnnlab.LayerNormLSTM(I, H, forget_bias=2.0)
    assert torch.all(ln.bias_l0[H:2 * H] == 2)
    gru = rnnlab.GRU(I, H, forget_bias=1.0)  # the update gate z, torch's "keep" gate
    assert torch.all(gru.bias_ih_l0[H:2 * H] == 1) and torch.all(gru.bias_hh_l0[H:2 * H] == 0)


def test_option_errors():
    with pytest.raises(ValueError, match=r"RNN: forget_bias needs a cell with a forget gate"):
        rnnlab.RNN(I, H, forget_bias=1.0)
    with pytest.raises(ValueError, match=r"LSTM: zoneout should be a number in range \[0, 1\]"):
        rnnlab.LSTM(I, H, zoneout=1.5)
    with pytest.raises(ValueError, match=r"LSTM: zoneout must be one rate or one per state \('h', 'c'\), got 3"):
        rnnlab.LSTM(I, H, zoneout=(0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match=r"GRU: recurrent_dropout should be a number in range \[0, 1\]"):
        rnnlab.GRU(I, H, recurrent_dropout=-0.2)
    with pytest.raises(ValueError, match=r"Recurrent: proj_size is not supported by LayerNormLSTM"):
        rnnlab.Recurrent(rnnlab.cellspec.LAYER_NORM_LSTM_SPEC, I, H, proj_size=2)
    with pytest.raises(TypeError, match=r"LayerNormLSTM: layer_weights\(\) needs torch's weight layout"):
        rnnlab.LayerNormLSTM(I, H).layer_weights(0)


def test_observe_steps_sees_every_step_of_every_cell_and_changes_nothing():
    class Counter:
        def __init__(self):
            self.calls = {}

        def wrap(self, module, layer, direction, step, state, steps):
            key = (type(module).__name__, layer, direction)
            self.calls[key] = 0

            def counted(x_t, s):
                self.calls[key] += 1
                return step(x_t, s)

            return counted, state

    x = torch.randn(T, B, I)
    for layer in (rnnlab.LSTM(I, H, num_layers=2, bidirectional=True),
                  rnnlab.LayerNormGRU(I, H, num_layers=2, bidirectional=True, backend="reference")):
        expected = layer(x)[0]
        observer = Counter()
        with rnnlab.layers.observe_steps(observer):
            got = layer(x)[0]
            with pytest.raises(RuntimeError, match="blocks do not nest"):
                with rnnlab.layers.observe_steps(Counter()):
                    pass
        assert (got - expected).abs().max() <= TOL
        assert observer.calls == {(type(layer).__name__, l, d): T for l in range(2) for d in range(2)}
    layer(x)  # outside the block: no observer is called
    assert all(v == T for v in observer.calls.values())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_classes_are_written_out_and_pickle(name):
    """Real classes: torch's signature and a docstring with the equations, Args, Shape and an example; they pickle
    (a DataLoader worker or torch.save of a whole module) and refuse projections as before."""
    import inspect
    import pickle

    layer_cls, cell_cls, _ = VARIANTS[name]
    assert list(inspect.signature(layer_cls).parameters)[:7] == ["input_size", "hidden_size", "num_layers", "bias",
                                                                 "batch_first", "dropout", "bidirectional"]
    assert list(inspect.signature(cell_cls).parameters)[:3] == ["input_size", "hidden_size", "bias"]
    for cls in (layer_cls, cell_cls):
        assert cls.__module__ == "rnnlab.variants" and cls.__qualname__ == cls.__name__
        assert all(part in (cls.__doc__ or "") for part in ("Args:", "Shape", "Example:")), cls
    assert ".. math::" in (layer_cls.__doc__ or "")
    layer, cell = layer_cls(I, H, num_layers=2), cell_cls(I, H)
    x = torch.randn(T, B, I)
    for module, call in ((layer, lambda m: m(x)[0]), (cell, lambda m: m(x[0]))):
        copy_ = pickle.loads(pickle.dumps(module))
        assert type(copy_) is type(module) and copy_.spec is module.spec
        got, want = call(copy_), call(module)
        assert torch.equal(got[0] if isinstance(got, tuple) else got, want[0] if isinstance(want, tuple) else want)
    with pytest.raises(ValueError, match=rf"^{layer_cls.__name__}: proj_size is not supported by "
                                         rf"{layer.spec.name}$"):
        layer_cls(I, H, proj_size=2)
