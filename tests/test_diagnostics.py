"""rnnlab.diagnostics against analytic cases and against an independent autograd computation.

* A linear RNN ``h_t = W h_{t-1} + x_t`` with ``W = rho Q`` has ``dh_T/dh_0 = W^T``: every singular value is
  ``rho^T``.
* A ReLU RNN whose units never switch off is linear, so its gradient profile is exactly geometric.
* The profile equals ``||h_t.grad||`` from a hand-unrolled torch.nn cell loop with ``retain_grad``.
* The recomputed gates reproduce the recorded next state (a swapped gate would not).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rnnlab
from rnnlab.diagnostics import (analyse, gate_stats, gate_values, gradient_profile, half_life, jacobian_spectrum,
                                product_spectrum, record, recurrent_spectra, trace_jacobians)
from rnnlab.diagnostics.tasks import LastStepRegressor, adding_batch
from rnnlab.functional import lstm_step
from rnnlab.init import apply_init


def _orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


# -- Jacobians: analytic linear RNN ----------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.9, 1.0, 1.05])
def test_linear_rnn_jacobian_singular_values_are_rho_power_T(rho):
    T, H = 30, 6
    W = rho * _orthogonal(H)
    x = torch.randn(T, 3, H, dtype=torch.float64)
    spec = jacobian_spectrum(lambda x_t, h: h @ W.T + x_t, x, torch.zeros(3, H, dtype=torch.float64),
                             windows=[1, 7, T], rows=3)
    for k, sv in zip(spec.windows, spec.singular_values):  # (R, S) each
        torch.testing.assert_close(sv, torch.full_like(sv, rho ** k), rtol=1e-6, atol=0)
    # ||dh_T/dh_0||_2 = rho^T
    assert abs(float(spec.singular_values[-1, 0, 0]) - rho ** T) < 1e-6


def test_product_spectrum_rejects_windows_outside_range():
    jac = torch.eye(3, dtype=torch.float64).expand(4, 1, 3, 3)
    with pytest.raises(ValueError, match=r"product_spectrum: windows must be in 1..T=4, got \[0, 5\]"):
        product_spectrum(jac, [0, 2, 5])


def test_lstm_step_jacobian_matches_autograd_on_full_state():
    lstm = rnnlab.LSTM(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with record(lstm) as rec:
        lstm(x)
    tr = rec.traces[0]
    jac = trace_jacobians(tr, rows=2)  # (T, R, 8, 8)
    w = [p.detach() for p in lstm.layer_weights(0)]
    t, row = 3, 1
    h0, c0 = (s[row:row + 1].detach() for s in tr.prev[t])

    def f(s):
        h, c = lstm_step(tr.inputs[t][row:row + 1].detach(), (s[:, :4], s[:, 4:]), *w)
        return torch.cat([h, c], dim=1)[0]

    expected = torch.autograd.functional.jacobian(f, torch.cat([h0, c0], dim=1))[:, 0, :]
    torch.testing.assert_close(jac[t, row], expected, rtol=1e-10, atol=1e-12)


def test_recurrent_spectra_of_scaled_orthogonal_blocks():
    H, rho = 5, 0.8
    gru = rnnlab.GRU(2, H, num_layers=2)
    with torch.no_grad():
        gru.weight_hh_l1.copy_(torch.cat([rho * _orthogonal(H, s) for s in range(3)]).float())
    spectra = recurrent_spectra(gru)
    assert [s.name for s in spectra] == ["l0", "l1"]
    for gate in "rzn":
        assert abs(spectra[1].spectral_radius[gate] - rho) < 1e-5
        got = torch.tensor(spectra[1].singular_values[gate], dtype=torch.float64)
        torch.testing.assert_close(got, torch.full((H,), rho, dtype=torch.float64), rtol=1e-5, atol=0)


# -- gradient profile ------------------------------------------------------------------------------------------

def test_relu_rnn_in_its_linear_regime_has_geometric_profile():
    # W = rho * (permutation): orthogonal and non-negative, and with positive inputs every unit stays on, so the
    # ReLU RNN is the linear map h_t = W h_{t-1} + W_ih x_t + b and dL/dh_t = (W^T)^(T-1-t) v for L = v . h_{T-1}.
    T, H, rho = 40, 6, 0.85
    rnn = rnnlab.RNN(2, H, nonlinearity="relu").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(rho * torch.eye(H, dtype=torch.float64)[torch.randperm(H)])
        rnn.weight_ih_l0.uniform_(0.1, 1.0)
        rnn.bias_ih_l0.fill_(0.1)
        rnn.bias_hh_l0.zero_()
    x = torch.rand(T, 3, 2, dtype=torch.float64)
    v = torch.randn(3, H, dtype=torch.float64)
    prof = gradient_profile(rnn, lambda: (rnn(x)[0][-1] * v).sum())
    k = torch.arange(T - 1, -1, -1, dtype=torch.float64)  # distance of step t from the loss
    torch.testing.assert_close(prof.hidden[0], rho ** k * v.norm(), rtol=1e-10, atol=0)
    assert abs(float(prof.hidden_initial[0]) - rho ** T * float(v.norm())) < 1e-10
    assert abs(prof.half_lives()[0] - math.log(2) / math.log(1 / rho)) < 1e-8


def _torch_cells_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, layers: int,
                         bidirectional: bool = False):
    """||dL/dh_t|| (and c_t) from a hand-unrolled torch.nn cell loop with retain_grad: independent of rnnlab."""
    kind = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell, "RNN_TANH": nn.RNNCell}[mode]
    rnn = model.rnn
    dirs = 2 if bidirectional else 1
    T, B = x.shape[:2]
    kept: list[list] = []
    inp = x
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            w = rnn.layer_weights(layer, d)
            cell = kind(w[0].size(1), rnn.hidden_size).double()
            with torch.no_grad():
                for p, q in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), w):
                    p.copy_(q)
            h = torch.zeros(B, rnn.hidden_size, dtype=torch.float64, requires_grad=True)
            state = (h, torch.zeros_like(h, requires_grad=True)) if mode == "LSTM" else h
            seq = [None] * T
            states = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                state = cell(inp[t], state)
                for s in (state if mode == "LSTM" else (state,)):
                    s.retain_grad()
                states[t] = state
                seq[t] = state[0] if mode == "LSTM" else state
            kept.append(states)
            outs.append(torch.stack(seq))
        inp = torch.cat(outs, dim=2)
    loss = ((model.head(inp[-1]) - y) ** 2).mean()
    loss.backward()
    hidden = torch.tensor([[float((s[0] if mode == "LSTM" else s).grad.norm()) for s in states] for states in kept],
                          dtype=torch.float64)
    cell = (torch.tensor([[float(s[1].grad.norm()) for s in states] for states in kept], dtype=torch.float64)
            if mode == "LSTM" else None)
    return hidden, cell


class _BiRegressor(nn.Module):
    def __init__(self, H: int) -> None:
        super().__init__()
        self.rnn = rnnlab.GRU(2, H, bidirectional=True)
        self.head = nn.Linear(2 * H, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


@pytest.mark.parametrize("cell,mode,layers", [("lstm", "LSTM", 2), ("gru", "GRU", 1), ("rnn", "RNN_TANH", 2),
                                              ("bigru", "GRU", 1)])
def test_profile_equals_independent_retain_grad(cell, mode, layers):
    T, B, H = 12, 4, 5
    torch.manual_seed(1)
    model = (_BiRegressor(H) if cell == "bigru" else LastStepRegressor(cell, 2, H, layers)).double()
    x, y = adding_batch(T, B, dtype=torch.float64)
    prof = gradient_profile(model, lambda: ((model(x) - y) ** 2).mean())
    assert all(p.grad is None for p in model.parameters())  # diagnostics leave the model's .grad alone
    hidden, c = _torch_cells_profile(model, x, y, mode, layers, bidirectional=cell == "bigru")
    torch.testing.assert_close(prof.hidden, hidden, rtol=1e-9, atol=1e-15)
    if mode == "LSTM":
        torch.testing.assert_close(prof.cell, c, rtol=1e-9, atol=1e-15)
    if cell == "bigru":
        assert prof.names == ["rnn.l0", "rnn.l0_reverse"] and prof.reverse == [False, True]


def test_record_keeps_outputs_and_leaves_no_trace():
    lstm = rnnlab.LSTM(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3)
    before = rnnlab.available_backends()
    default, _ = lstm(x)
    lstm.backend = "reference"
    expected, _ = lstm(x)
    lstm.backend = None
    with record(lstm) as rec:
        got, _ = lstm(x)
        with torch.no_grad():
            lstm(x)  # not recorded: nobody differentiates it
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the reference loop's maths, exactly
    torch.testing.assert_close(got, default, rtol=1e-5, atol=1e-6)  # and the default backend's result
    assert lstm.backend is None and rnnlab.available_backends() == before
    assert [tr.name for tr in rec.traces] == ["l0", "l1"] and rec.traces[0].steps == 6
    with pytest.raises(ZeroDivisionError):
        with record(lstm):
            1 / 0
    with record(lstm) as rec2:  # the hook was released by the failed block
        lstm(x)
    assert len(rec2.traces) == 2


class _Perturb:
    """Independent total gradient: add a zero tensor delta_t to every new state; dL/d(delta_t) = dL/dh_t."""

    def __init__(self) -> None:
        self.deltas: list[list[torch.Tensor]] = []

    def wrap(self, module, layer, direction, step, state, steps):
        deltas = [None] * steps
        self.deltas.append(deltas)
        order = iter(range(steps - 1, -1, -1) if direction else range(steps))

        def perturbed(x_t, s):
            t = next(order)
            new = step(x_t, s)
            h = new[0] if isinstance(new, tuple) else new
            deltas[t] = torch.zeros_like(h, requires_grad=True)
            return (h + deltas[t], *new[1:]) if isinstance(new, tuple) else h + deltas[t]

        return perturbed, state


@pytest.mark.parametrize("variant", ["zoneout_eval", "layer_norm_lstm"])
def test_profile_of_variant_cells_equals_a_perturbation_gradient(variant):
    from rnnlab.layers import observe_steps

    torch.manual_seed(2)
    if variant == "zoneout_eval":
        layer = rnnlab.LSTM(2, 5, num_layers=2, zoneout=0.3).double().eval()  # eval: the expectation update
    else:
        layer = rnnlab.LayerNormLSTM(2, 5, num_layers=2).double()
    x = torch.randn(9, 3, 2, dtype=torch.float64)
    loss_fn = lambda: layer(x)[0][-1].pow(2).sum()  # noqa: E731
    prof = gradient_profile(layer, loss_fn)
    observer = _Perturb()
    with observe_steps(observer):
        loss = loss_fn()
    flat = [d for deltas in observer.deltas for d in deltas]
    grads = torch.autograd.grad(loss, flat)
    expected = torch.tensor([float(g.norm()) for g in grads], dtype=torch.float64).view(2, 9)
    torch.testing.assert_close(prof.hidden, expected, rtol=1e-9, atol=1e-15)


def test_record_errors():
    with pytest.raises(ValueError, match="expected a model containing rnnlab.RNN/LSTM/GRU layers, got LSTM"):
        with record(nn.LSTM(2, 3)):
            pass
    rnn = rnnlab.RNN(2, 3)
    with pytest.raises(RuntimeError, match="record\\(\\) blocks cannot be nested"):
        with record(rnn), record(rnn):
            pass
    with pytest.raises(ValueError, match="expected a scalar loss that requires grad, got shape \\(2,\\)"):
        gradient_profile(rnn, lambda: rnn(torch.randn(3, 2, 2))[0][-1].sum(1))


def test_half_life_fit():
    assert abs(half_life([0.5 ** k for k in range(10)]) - 1.0) < 1e-12
    assert abs(half_life([3 * 0.9 ** k for k in range(50)]) - math.log(2) / math.log(1 / 0.9)) < 1e-9
    assert half_life([1.0, 1.0, 1.2]) == math.inf
    with pytest.raises(ValueError, match="half_life: expected at least 2 positive finite norms, got 1 of 3"):
        half_life([1.0, 0.0, float("nan")])


def test_fresh_tanh_rnn_vanishes_and_forget_bias_lstm_decays_slower():
    # The acceptance case: same task, batch and width; the tanh RNN's profile falls geometrically with the
    # distance from the loss, the LSTM with forget bias 1 (Jozefowicz et al. 2015) keeps it measurably longer.
    T, H = 60, 32
    x, y = adding_batch(T, 16, torch.Generator().manual_seed(0))
    lives = {}
    for cell, init in (("rnn", "torch"), ("lstm", "forget_bias")):
        torch.manual_seed(0)
        model = LastStepRegressor(cell, 2, H)
        apply_init(model, init)
        prof = gradient_profile(model, lambda: ((model(x) - y) ** 2).mean())
        g = prof.by_distance(0)
        lives[cell] = prof.half_lives()[0]
        if cell == "rnn":
            assert g[20] < 1e-3 * g[0] and g[40] < 1e-3 * g[20]  # vanishing: geometric decay
    assert lives["lstm"] > 2.0 * lives["rnn"], lives


# -- gates -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_recomputed_gates_reproduce_the_recorded_next_state(mode):
    layer = {"LSTM": rnnlab.LSTM(3, 5), "GRU": rnnlab.GRU(3, 5), "RNN_TANH": rnnlab.RNN(3, 5),
             "RNN_RELU": rnnlab.RNN(3, 5, nonlinearity="relu")}[mode]
    with record(layer) as rec:
        layer(torch.randn(7, 2, 3))
    tr = rec.traces[0]
    w = tuple(p.detach() for p in tr.weights)
    for t in range(tr.steps):
        prev = tuple(s.detach() for s in (tr.prev[t] if mode == "LSTM" else (tr.prev[t],)))
        g = gate_values(mode, tr.inputs[t].detach(), prev, w)
        if mode == "LSTM":
            h, c = tr.states[t]
            torch.testing.assert_close(g["c"], c.detach(), rtol=0, atol=1e-6)
            torch.testing.assert_close(g["o"] * torch.tanh(g["c"]), h.detach(), rtol=0, atol=1e-6)
        elif mode == "GRU":
            torch.testing.assert_close((1 - g["z"]) * g["n"] + g["z"] * prev[0], tr.states[t].detach(),
                                       rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(g["h"], tr.states[t].detach(), rtol=0, atol=1e-6)


def test_forget_cumprod_and_saturation_analytic():
    H, T, b = 4, 6, 0.7
    lstm = rnnlab.LSTM(2, H).double()
    with torch.no_grad():
        lstm.weight_hh_l0.zero_()
        lstm.weight_ih_l0[H:2 * H].zero_()  # forget gate = sigmoid(b) exactly
        lstm.bias_ih_l0[H:2 * H].fill_(b)
        lstm.bias_hh_l0[H:2 * H].zero_()
        lstm.bias_ih_l0[:H].fill_(50.0)  # input gate pinned at 1: right-saturated everywhere
        lstm.weight_ih_l0[:H].zero_()
    with record(lstm) as rec:
        lstm(torch.randn(T, 3, 2, dtype=torch.float64))
    stats = gate_stats(rec.traces[0])
    f = 1 / (1 + math.exp(-b))
    torch.testing.assert_close(stats.series["forget_cumprod"], torch.tensor([f ** (t + 1) for t in range(T)],
                               dtype=torch.float64), rtol=1e-12, atol=0)
    assert stats.scalars["i_sat_high"] == 1.0 and stats.scalars["f_sat_high"] == 0.0
    assert abs(stats.scalars["f_mean"] - f) < 1e-12


def test_elman_preactivation_and_relu_dead_fraction():
    rnn = rnnlab.RNN(2, 3, nonlinearity="relu").double()
    with torch.no_grad():
        for p in rnn.parameters():
            p.zero_()
        rnn.bias_ih_l0.copy_(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    with record(rnn) as rec:
        rnn(torch.randn(4, 2, 2, dtype=torch.float64))
    stats = gate_stats(rec.traces[0])
    assert abs(stats.scalars["preact_abs_mean"] - 2.0) < 1e-12
    assert abs(stats.scalars["relu_dead"] - 1 / 3) < 1e-12


def test_analyse_bundles_everything_consistently():
    """analyse() measures the model it was given. Recomputed independently with torch.nn.LSTMCell steps carrying
    each layer's weights (layer 1 reading layer 0's outputs), and torch.autograd.functional.jacobian of them:
    the singular values of the one-step Jacobian ``ds_T/ds_{T-1}`` (k = 1) and of the whole sequence's
    ``ds_T/ds_0`` (k = T), with ``s = (h, c)``, and of its ``dh_T/dh_0`` block; the mean forget gate."""
    torch.manual_seed(0)
    T, H, rows = 25, 8, 2
    model = LastStepRegressor("lstm", 2, H, num_layers=2).double()
    x, y = adding_batch(T, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    diag = analyse(model, lambda: ((model(x) - y) ** 2).mean(), rows=rows)
    assert diag.profile.names == ["rnn.l0", "rnn.l1"]
    d = diag.to_dict()
    assert d["gates"][0]["scalars"]["f_mean"] == diag.gates[0].scalars["f_mean"]
    inputs = x
    for layer, spec in enumerate(diag.jacobians):
        assert spec.windows == [1, 2, 5, 10, 20, 25]
        cell = nn.LSTMCell(inputs.size(-1), H, dtype=torch.float64)
        cell.load_state_dict({name[:-3]: p for name, p in model.rnn.state_dict().items()
                              if name.endswith(f"_l{layer}")})

        def run(s: torch.Tensor, steps: range, xs: torch.Tensor) -> torch.Tensor:
            """The flat state (h, c) of one batch row after ``steps``, from the flat state ``s``."""
            h, c = s[:H].unsqueeze(0), s[H:].unsqueeze(0)
            for t in steps:
                h, c = cell(xs[t].unsqueeze(0), (h, c))
            return torch.cat([h, c], dim=1).squeeze(0)

        with torch.no_grad():
            h = c = torch.zeros(x.size(1), H, dtype=torch.float64)
            outs, forget = [], []
            for t in range(T):
                pre = inputs[t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
                forget.append(torch.sigmoid(pre.chunk(4, dim=1)[1]))
                prev_last = torch.cat([h, c], dim=1) if t == T - 1 else None
                h, c = cell(inputs[t], (h, c))
                outs.append(h)
        assert abs(diag.gates[layer].scalars["f_mean"] - torch.stack(forget).mean().item()) < 1e-12
        for r in range(rows):
            one = torch.autograd.functional.jacobian(lambda s: run(s, range(T - 1, T), inputs[:, r]), prev_last[r])
            whole = torch.autograd.functional.jacobian(lambda s: run(s, range(T), inputs[:, r]),
                                                       torch.zeros(2 * H, dtype=torch.float64))
            torch.testing.assert_close(spec.singular_values[0, r], torch.linalg.svdvals(one), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(spec.singular_values[-1, r], torch.linalg.svdvals(whole), rtol=1e-9,
                                       atol=1e-12)
            torch.testing.assert_close(spec.hidden_singular_values[-1, r], torch.linalg.svdvals(whole[:H, :H]),
                                       rtol=1e-9, atol=1e-12)
        inputs = torch.stack(outs)


def test_gate_histograms_bin_like_torch_histc():
    """The bincount histograms (all gates in one call) equal torch.histc of each gate; NaN is left out."""
    from rnnlab.diagnostics.gates import _histograms

    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 50, 4, 16, generator=g)
    v[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.05])  # the edges: 0 and top in the first and last bins
    v[2, 1, 1, 0] = float("nan")
    counts, edges = _histograms(v, 1.0)
    for k in range(3):
        finite = v[k][~torch.isnan(v[k])]
        assert torch.equal(counts[k], torch.histc(finite, bins=20, min=0, max=1).double())
    assert torch.equal(edges, torch.linspace(0, 1, 21))
    a = torch.rand(1, 40, generator=g) * 3.7
    assert torch.equal(_histograms(a, 3.7)[0][0], torch.histc(a, bins=20, min=0, max=3.7).double())
