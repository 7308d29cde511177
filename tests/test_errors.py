"""Bad input gets a clear error that names the module and says expected vs got; nothing broadcasts silently."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnlab


# -- constructor arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM, rnnlab.GRU])
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"hidden_size": 0}, ValueError, r"hidden_size must be greater than zero, got 0"),
        ({"hidden_size": -3}, ValueError, r"hidden_size must be greater than zero, got -3"),
        ({"hidden_size": 4.0}, TypeError, r"hidden_size should be of type int, got: float"),
        ({"input_size": 0}, ValueError, r"input_size must be greater than zero"),
        ({"num_layers": 0}, ValueError, r"num_layers must be greater than zero"),
        ({"dropout": 1.5}, ValueError, r"dropout should be a number in range \[0, 1\].*got 1.5"),
        ({"dropout": -0.1}, ValueError, r"dropout should be a number in range \[0, 1\]"),
        ({"dropout": "0.5"}, ValueError, r"dropout should be a number"),
        ({"bidirectional": 1}, TypeError, r"bidirectional should be of type bool, got: int"),
        ({"batch_first": None}, TypeError, r"batch_first should be of type bool"),
    ],
)
def test_layer_constructor_errors(cls, kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(exc, match=rf"^{cls.__name__}: {match}"):
        cls(**args)


def test_proj_size_errors():
    with pytest.raises(ValueError, match=r"LSTM: proj_size has to be smaller than hidden_size, got proj_size=4 "
                                         r"and hidden_size=4"):
        rnnlab.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"LSTM: proj_size should be a positive integer or zero"):
        rnnlab.LSTM(3, 4, proj_size=-1)
    for cls in (rnnlab.RNN, rnnlab.GRU):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: proj_size argument is only supported for LSTM"):
            cls(3, 4, proj_size=2)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match=r"RNN: Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'"):
        rnnlab.RNN(3, 4, nonlinearity="sigmoid")
    # torch.nn's cell raises this RuntimeError at its first forward; ours at construction
    with pytest.raises(RuntimeError, match=r"RNNCell: Unknown nonlinearity: gelu; select from 'tanh' or 'relu'"):
        rnnlab.RNNCell(3, 4, nonlinearity="gelu")


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match=r"LSTM: dropout option adds dropout after all but last recurrent layer.*"
                                         r"dropout=0.5 and num_layers=1"):
        rnnlab.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnlab.LSTM(3, 4, num_layers=2, dropout=0.5)  # no warning when it applies


@pytest.mark.parametrize("cls", [rnnlab.RNNCell, rnnlab.LSTMCell, rnnlab.GRUCell])
def test_cell_constructor_errors(cls):
    # torch.nn's cells take a size of 0 (see test_conformance.py); a negative one fails in torch.empty
    with pytest.raises(RuntimeError, match=rf"^{cls.__name__}: Trying to create tensor with negative dimension -2: "
                                           r"hidden_size must be >= 0, got -2"):
        cls(3, -2)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: input_size should be of type int, got: str"):
        cls("3", 4)


# -- forward: input and state shapes --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM, rnnlab.GRU])
def test_layer_input_errors(cls):
    name = cls.__name__
    m = cls(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=rf"{name}: Expected input to be 2D or 3D, got 4D instead"):
        m(torch.randn(2, 3, 4, 3))
    with pytest.raises(ValueError, match=rf"{name}: Expected input to be 2D or 3D, got 1D instead"):
        m(torch.randn(3))
    with pytest.raises(RuntimeError, match=rf"{name}: input.size\(-1\) must be equal to input_size. "
                                           r"Expected 3, got 5"):
        m(torch.randn(6, 2, 5))
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 2"):
        m(pack_sequence([torch.randn(4, 2), torch.randn(2, 2)]))
    with pytest.raises(ValueError, match=rf"^{name}: RNN input dtype \(torch.float64\) does not match weight dtype "
                                         r"\(torch.float32\). Convert input: input.to\(torch.float32\), or convert "
                                         r"model: model.to\(torch.float64\)"):
        m(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"^{name}: RNN input dtype \(torch.int64\) does not match"):
        m(torch.ones(6, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=rf"{name}: input must be a Tensor or PackedSequence, got list"):
        m([[1.0, 2.0, 3.0]])
    with pytest.raises(RuntimeError, match=rf"^{name}: Expected sequence length to be larger than 0 in RNN, got input "
                                           r"of shape \(0, 2, 3\)"):
        m(torch.randn(0, 2, 3))


@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.GRU])
def test_hx_shape_never_broadcasts(cls):
    name = cls.__name__
    m = cls(3, 4, num_layers=2)
    x = torch.randn(6, 5, 3)
    for bad in [(1, 5, 4), (2, 1, 4), (2, 5, 3), (4, 5, 4)]:
        expected = f"{name}: Expected hidden size (2, 5, 4), got {list(bad)}"
        with pytest.raises(RuntimeError, match=re.escape(expected)):
            m(x, torch.zeros(bad))
    with pytest.raises(RuntimeError, match=rf"^{name}: For batched 3-D input, hx should also be 3-D but got 2-D "
                                           r"tensor"):
        m(x, torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match=rf"^{name}: For unbatched 2-D input, hx should also be 2-D but got 3-D "
                                           r"tensor"):
        m(torch.randn(6, 3), torch.zeros(2, 1, 4))
    with pytest.raises(RuntimeError, match=re.escape(f"{name}: Expected hidden size (2, 1, 4), got [2, 1, 5]")):
        m(torch.randn(6, 3), torch.zeros(2, 5))
    with pytest.raises(TypeError, match=rf"{name}: hx must be a Tensor, got tuple"):
        m(x, (torch.zeros(2, 5, 4),))


def test_lstm_hx_errors():
    m = rnnlab.LSTM(3, 4, num_layers=2, proj_size=2)
    x = torch.randn(6, 5, 3)
    with pytest.raises(TypeError, match=r"^LSTM: hx must be tuple of Tensors \(h_0, c_0\), got Tensor"):
        m(x, torch.zeros(2, 5, 2))
    with pytest.raises(RuntimeError, match=r"^LSTM: Expected hidden\[0\] size \(2, 5, 2\), got \[2, 5, 4\]"):
        m(x, (torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)))
    with pytest.raises(RuntimeError, match=r"^LSTM: Expected hidden\[1\] size \(2, 5, 4\), got \[2, 5, 2\]"):
        m(x, (torch.zeros(2, 5, 2), torch.zeros(2, 5, 2)))
    with pytest.raises(RuntimeError, match=r"^LSTM: For batched 3-D input, hx and cx should also be 3-D but got "
                                           r"\(3-D, 2-D\) tensors"):
        m(x, (torch.zeros(2, 5, 2), torch.zeros(2, 4)))
    with pytest.raises(RuntimeError, match=r"^LSTM: hx\[1\] and the weights must have the same dtype, but got "
                                           r"torch.float64 and torch.float32"):
        m(x, (torch.zeros(2, 5, 2), torch.zeros(2, 5, 4, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match=r"^LSTM: expects two hidden states \(h_0, c_0\), got 3"):
        m(x, (torch.zeros(2, 5, 2), torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)))


@pytest.mark.parametrize("cls,n_states", [(rnnlab.RNNCell, 1), (rnnlab.LSTMCell, 2), (rnnlab.GRUCell, 1)])
def test_cell_forward_errors(cls, n_states):
    name = cls.__name__
    cell = cls(3, 4)

    def hx(*shape):
        states = tuple(torch.zeros(shape) for _ in range(n_states))
        return states if n_states == 2 else states[0]

    with pytest.raises(ValueError, match=rf"^{name}: Expected input to be 1D or 2D, got 3D instead"):
        cell(torch.randn(1, 2, 3))
    label = r"hx\[0\]" if n_states == 2 else "hidden"
    with pytest.raises(ValueError, match=rf"^{name}: Expected {label} to be 1D or 2D, got 3D instead"):
        cell(torch.randn(2, 3), hx(1, 2, 4))
    with pytest.raises(RuntimeError, match=rf"^{name}: input has inconsistent input_size: got 5 expected 3"):
        cell(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=rf"^{name}: Input batch size 2 doesn't match hidden0 batch size 1"):
        cell(torch.randn(2, 3), hx(1, 4))
    with pytest.raises(RuntimeError, match=rf"^{name}: hidden0 has inconsistent hidden_size: got 5, expected 4"):
        cell(torch.randn(2, 3), hx(2, 5))
    # an unbatched input with a 2-D state: torch unsqueezes both and compares (1, 1, 4) with (1, 3)
    with pytest.raises(RuntimeError, match=rf"^{name}: hidden0 has inconsistent hidden_size: got 1, expected 4"):
        cell(torch.randn(3), hx(1, 4))
    with pytest.raises(RuntimeError, match=rf"^{name}: input and the weights must have the same dtype, but got "
                                           r"torch.float64 and torch.float32"):
        cell(torch.randn(2, 3, dtype=torch.float64))
