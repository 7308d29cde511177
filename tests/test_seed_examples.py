"""The blog's two programs: the original bugs reproduce, the fixed examples train, and the weights map to rnnlab."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab.convert import concat_linear_to_rnn, lstm_to_split_gates, split_gates_to_lstm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


simple = _load("seed_simple_rnn")
custom = _load("seed_custom_lstm")


def test_simple_rnn_example_loss_falls():
    history = simple.main(epochs=3, verbose=False)
    assert history[-1] < 0.5 * history[0], history


def test_custom_lstm_example_loss_falls_both_ways():
    for carry in (False, True):
        history = custom.main(epochs=60, carry_state=carry, verbose=False)
        assert history[-1] < 0.85 * history[0], (carry, history[0], history[-1])


def test_original_simple_rnn_loop_fails_on_batch_size():
    """The blog's init_hidden made a (1, H) state; with a batch of 32 the concatenation cannot work."""
    model = simple.SimpleRNN(1, 8, 1)
    hidden = torch.zeros(1, model.hidden_size)  # the blog's init_hidden()
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        model(torch.randn(32, 1), hidden)


def test_original_custom_lstm_loop_fails_without_detach():
    """Carrying the state across epochs without detaching it backpropagates into a freed graph."""
    torch.manual_seed(0)
    model = custom.CustomLSTM(10, 20)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = torch.randn(15, 5, 10), torch.randn(5, 20)
    hidden, cell = model.init_hidden(5)  # once, before the loop, as in the blog
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        for _ in range(2):
            model.zero_grad()
            for t in range(15):
                hidden, cell = model(inputs[t], hidden, cell)
            torch.nn.functional.mse_loss(hidden, targets).backward()
            optimizer.step()


def test_custom_lstm_equals_rnnlab_and_torch_cells_after_rearranging_gates():
    torch.manual_seed(1)
    model = custom.CustomLSTM(10, 20).double()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)  # larger than the blog's ±0.08, so every gate matters
    ours = model.to_rnnlab()
    theirs = torch.nn.LSTMCell(10, 20, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    inputs = torch.randn(15, 5, 10, dtype=torch.float64, requires_grad=True)
    states = {}
    for name, step in [("seed", lambda x, s: model(x, *s)), ("rnnlab", ours), ("torch", theirs)]:
        s = model.init_hidden(5)
        s = (s[0].double(), s[1].double())
        for t in range(15):
            s = step(inputs[t], s)
        grad, = torch.autograd.grad((s[0] ** 2).sum() + s[1].sum(), inputs)
        states[name] = (s[0], s[1], grad)
    for name in ("rnnlab", "torch"):
        for a, b in zip(states["seed"], states[name]):
            assert (a - b).abs().max() <= 1e-12, name


def test_gate_order_matters_so_the_mapping_is_checked():
    torch.manual_seed(2)
    weights = {g: torch.randn(4, 7) for g in "ifgo"}
    biases = {g: torch.randn(4) for g in "ifgo"}
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    right = rnnlab.LSTMCell(3, 4)
    right.load_state_dict(split_gates_to_lstm(weights, biases, 3, 4))
    wrong = rnnlab.LSTMCell(3, 4)
    swapped = dict(weights, i=weights["f"], f=weights["i"])
    wrong.load_state_dict(split_gates_to_lstm(swapped, biases, 3, 4))
    assert (right(x, (h, c))[1] - wrong(x, (h, c))[1]).abs().max() > 1e-3
    # round trip back to split gates
    back_w, back_b = lstm_to_split_gates(right.state_dict())
    for g in "ifgo":
        assert torch.equal(back_w[g], weights[g]) and torch.equal(back_b[g], biases[g])
    with pytest.raises(ValueError, match=r"split_gates_to_lstm: W_o must have shape \(4, 7\), got \(4, 6\)"):
        split_gates_to_lstm(dict(weights, o=torch.randn(4, 6)), biases, 3, 4)
    with pytest.raises(ValueError, match=r"split_gates_to_lstm: missing gate 'g'"):
        split_gates_to_lstm({g: weights[g] for g in "ifo"}, biases, 3, 4)


def test_simple_rnn_equals_rnn_cell():
    torch.manual_seed(3)
    model = simple.SimpleRNN(2, 6, 1)
    cell = rnnlab.RNNCell(2, 6)
    cell.load_state_dict(concat_linear_to_rnn(model.i2h.weight.data, model.i2h.bias.data, input_size=2))
    x, h = torch.randn(4, 2), torch.randn(4, 6)
    assert (cell(x, h) - model(x, h)[1]).abs().max() <= 1e-6
    with pytest.raises(ValueError, match=r"concat_linear_to_rnn: weight must have shape \(6, 9\), got \(6, 8\)"):
        concat_linear_to_rnn(model.i2h.weight.data, None, input_size=3)
