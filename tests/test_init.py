"""rnnlab.init presets: each changes exactly what its paper says, on layers (all layers and directions) and cells."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rnnlab
from rnnlab.init import INIT_PRESETS, apply_init


def _groups(module):
    """(w_ih, w_hh, b_ih, b_hh) per layer-direction of a layer, or of a cell."""
    if isinstance(module, rnnlab.RNNBase):
        return [module.layer_weights(layer, d)[:4] for layer in range(module.num_layers)
                for d in range(module.num_directions)]
    return [(module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)]


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


MODULES = {
    "lstm_2l_bidir": lambda: rnnlab.LSTM(3, 4, num_layers=2, bidirectional=True),
    "gru_2l": lambda: rnnlab.GRU(3, 4, num_layers=2),
    "rnn": lambda: rnnlab.RNN(3, 4),
    "lstm_cell": lambda: rnnlab.LSTMCell(3, 4),
    "gru_cell": lambda: rnnlab.GRUCell(3, 4),
    "rnn_cell": lambda: rnnlab.RNNCell(3, 4, nonlinearity="relu"),
}
GATES = {rnnlab.LSTM: 4, rnnlab.LSTMCell: 4, rnnlab.GRU: 3, rnnlab.GRUCell: 3, rnnlab.RNN: 1, rnnlab.RNNCell: 1}


@pytest.mark.parametrize("kind", MODULES)
def test_torch_preset_changes_nothing(kind):
    m = MODULES[kind]()
    before = _snapshot(m)
    apply_init(m, "torch")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", MODULES)
def test_orthogonal_makes_every_recurrent_block_orthogonal_and_keeps_the_rest(kind):
    m = MODULES[kind]()
    before = _snapshot(m)
    apply_init(m, "orthogonal")
    H = 4
    for w_ih, w_hh, b_ih, b_hh in _groups(m):
        for block in w_hh.detach().double().split(H):
            torch.testing.assert_close(block.T @ block, torch.eye(H, dtype=torch.float64), rtol=0, atol=1e-6)
    for k, v in m.state_dict().items():
        if "weight_hh" not in k:
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", ["lstm_2l_bidir", "lstm_cell", "gru_2l", "gru_cell"])
def test_forget_bias_sets_the_keep_gate_bias_sum_to_one(kind):
    m = MODULES[kind]()
    before = _snapshot(m)
    apply_init(m, "forget_bias")
    H = 4
    for w_ih, w_hh, b_ih, b_hh in _groups(m):
        # LSTM gates i,f,g,o and GRU r,z,n: block 1 is the forget gate f / the update gate z
        torch.testing.assert_close(b_ih[H:2 * H] + b_hh[H:2 * H], torch.ones(H), rtol=0, atol=0)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("bias" in k for k in changed)
    # only block 1 of each bias moved
    for k in changed:
        diff = (m.state_dict()[k] != before[k]).nonzero().flatten()
        assert diff.min() >= H and diff.max() < 2 * H


def test_forget_bias_raises_the_lstm_forget_gate_to_sigmoid_one():
    lstm = rnnlab.LSTM(2, 8)
    with torch.no_grad():
        lstm.weight_ih_l0.zero_()
        lstm.weight_hh_l0.zero_()
    apply_init(lstm, "forget_bias")
    from rnnlab.diagnostics import gate_stats, record
    with record(lstm) as rec:
        lstm(torch.randn(5, 3, 2))
    assert abs(gate_stats(rec.traces[0]).scalars["f_mean"] - 1 / (1 + math.exp(-1))) < 1e-6


@pytest.mark.parametrize("kind", ["rnn", "rnn_cell"])
def test_irnn_is_identity_and_zero_bias(kind):
    m = MODULES[kind]()
    w_ih_before = _groups(m)[0][0].clone()
    apply_init(m, "irnn")
    for w_ih, w_hh, b_ih, b_hh in _groups(m):
        assert torch.equal(w_hh, torch.eye(4)) and not b_ih.any() and not b_hh.any()
        assert torch.equal(w_ih, w_ih_before)


def test_irnn_on_gated_cells_is_an_error():
    with pytest.raises(ValueError, match=r"'irnn' \(Le et al. 2015\) is defined for Elman RNNs, got LSTM l0"):
        apply_init(rnnlab.LSTM(2, 3), "irnn")


@pytest.mark.parametrize("kind", ["lstm_2l_bidir", "lstm_cell", "gru_2l"])
def test_chrono_biases(kind):
    m = MODULES[kind]()
    t_max = 50.0
    apply_init(m, "chrono", t_max=t_max, generator=torch.Generator().manual_seed(3))
    H = 4
    for w_ih, w_hh, b_ih, b_hh in _groups(m):
        keep = b_ih[H:2 * H] + b_hh[H:2 * H]
        assert keep.min() >= 0 and keep.max() <= math.log(t_max - 1) + 1e-6
        # characteristic forgetting time 1/(1 - sigmoid(b)) = 1 + e^b lies in [2, T_max]
        times = 1 + keep.exp()
        assert times.min() >= 2 - 1e-5 and times.max() <= t_max + 1e-4
        if isinstance(m, (rnnlab.LSTM, rnnlab.LSTMCell)):
            torch.testing.assert_close(b_ih[:H] + b_hh[:H], -keep, rtol=0, atol=0)
    # reproducible with a generator
    m2 = MODULES[kind]()
    m2.load_state_dict(MODULES[kind]().state_dict())
    m3 = MODULES[kind]()
    m3.load_state_dict(m2.state_dict())
    apply_init(m2, "chrono", t_max=t_max, generator=torch.Generator().manual_seed(3))
    apply_init(m3, "chrono", t_max=t_max, generator=torch.Generator().manual_seed(3))
    for k, v in m2.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k])


def test_gate_presets_warn_and_skip_elman_rnn():
    rnn = rnnlab.RNN(2, 3)
    before = _snapshot(rnn)
    for name in ("forget_bias", "chrono"):
        with pytest.warns(UserWarning, match=f"'{name}' sets gate biases; RNN l0 \\(RNN_TANH\\) has no gate"):
            apply_init(rnn, name)
    assert all(torch.equal(v, before[k]) for k, v in rnn.state_dict().items())


def test_apply_init_reaches_layers_inside_a_model():
    model = nn.Sequential(nn.Linear(2, 2), rnnlab.GRU(2, 4), )
    apply_init(model, "forget_bias")
    g = model[1]
    torch.testing.assert_close(g.bias_ih_l0[4:8] + g.bias_hh_l0[4:8], torch.ones(4), rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match=r"apply_init: unknown init 'xavier'; expected one of \['torch'"):
        apply_init(rnnlab.LSTM(2, 3), "xavier")
    with pytest.raises(ValueError, match="expected an rnnlab RNN/LSTM/GRU layer or cell .* got LSTM with none"):
        apply_init(nn.LSTM(2, 3), "orthogonal")
    with pytest.raises(ValueError, match="LSTM l0 has bias=False; this preset sets a gate bias"):
        apply_init(rnnlab.LSTM(2, 3, bias=False), "forget_bias")
    with pytest.raises(ValueError, match="'chrono' needs t_max > 2 .* got 1.5"):
        apply_init(rnnlab.LSTM(2, 3), "chrono", t_max=1.5)
    assert INIT_PRESETS == ("torch", "orthogonal", "forget_bias", "irnn", "chrono")
