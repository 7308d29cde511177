"""rnnlab cells against torch.nn cells with copied weights; the functional steps against the written equations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnlab
from rnnlab import functional as RF

TOL = 1e-5
CELLS = {
    "rnn_tanh": (rnnlab.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnlab.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (rnnlab.LSTMCell, nn.LSTMCell, {}),
    "gru": (rnnlab.GRUCell, nn.GRUCell, {}),
}


def _pair(name: str, bias: bool, direction: str):
    ours_cls, torch_cls, extra = CELLS[name]
    ours, theirs = ours_cls(3, 5, bias=bias, **extra), torch_cls(3, 5, bias=bias, **extra)
    src, dst = (theirs, ours) if direction == "torch_to_rnnlab" else (ours, theirs)
    src.load_state_dict({k: torch.randn_like(v) * 0.5 for k, v in src.state_dict().items()})
    dst.load_state_dict(src.state_dict())
    return ours, theirs


def _run(cell, x, hx):
    x = x.clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.clone().requires_grad_(True) for h in hx)
    out = cell(x, None if hx is None else (hx if len(hx) == 2 else hx[0]))
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(((o * torch.linspace(-1, 1, o.numel()).view_as(o)) ** 2).sum() for o in outs)
    loss.backward()
    result = {f"out{k}": o for k, o in enumerate(outs)}
    result["x.grad"] = x.grad
    if hx is not None:
        result.update({f"hx{k}.grad": h.grad for k, h in enumerate(hx)})
    result.update({f"{n}.grad": p.grad for n, p in cell.named_parameters()})
    return result


@pytest.mark.parametrize("direction", ["torch_to_rnnlab", "rnnlab_to_torch"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_state", [True, False])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_equals_torch(name, given_state, batched, bias, direction):
    ours, theirs = _pair(name, bias, direction)
    x = torch.randn((4, 3) if batched else (3,))
    hx = None
    if given_state:
        shape = (4, 5) if batched else (5,)
        hx = tuple(torch.randn(shape) for _ in range(2 if name == "lstm" else 1))
    a, b = _run(ours, x, hx), _run(theirs, x, hx)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).abs().max() <= TOL, key


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_same_seed_same_init_and_repr(name):
    ours_cls, torch_cls, extra = CELLS[name]
    torch.manual_seed(3)
    ours = ours_cls(3, 5, **extra)
    torch.manual_seed(3)
    theirs = torch_cls(3, 5, **extra)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_gradcheck_float64(name):
    ours_cls, _, extra = CELLS[name]
    cell = ours_cls(3, 4, dtype=torch.float64, **extra)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    n_states = 2 if name == "lstm" else 1
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(n_states)]

    def f(x, *rest):
        st, ps = rest[:n_states], rest[n_states:]
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, tuple(st) if n_states == 2 else st[0]))

    assert torch.autograd.gradcheck(f, (x, *states, *params))


# -- the functional steps, checked against the equations written out with separate gate matrices ------------

def test_lstm_step_is_the_written_equations():
    B, I, H = 3, 4, 5
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    W_ii, W_if, W_ig, W_io = (torch.randn(H, I) for _ in range(4))
    W_hi, W_hf, W_hg, W_ho = (torch.randn(H, H) for _ in range(4))
    b = torch.randn(4 * H)
    i = torch.sigmoid(x @ W_ii.T + h @ W_hi.T + b[:H])
    f = torch.sigmoid(x @ W_if.T + h @ W_hf.T + b[H : 2 * H])
    g = torch.tanh(x @ W_ig.T + h @ W_hg.T + b[2 * H : 3 * H])
    o = torch.sigmoid(x @ W_io.T + h @ W_ho.T + b[3 * H :])
    c_expected = f * c + i * g
    h_expected = o * torch.tanh(c_expected)
    w_ih = torch.cat([W_ii, W_if, W_ig, W_io])
    w_hh = torch.cat([W_hi, W_hf, W_hg, W_ho])
    h1, c1 = RF.lstm_step(x, (h, c), w_ih, w_hh, b, None)
    assert torch.allclose(h1, h_expected, atol=1e-6) and torch.allclose(c1, c_expected, atol=1e-6)


def test_gru_step_applies_reset_to_the_recurrent_term_with_its_bias():
    B, I, H = 3, 4, 5
    x, h = torch.randn(B, I), torch.randn(B, H)
    w_ih, w_hh, b_ih, b_hh = torch.randn(3 * H, I), torch.randn(3 * H, H), torch.randn(3 * H), torch.randn(3 * H)
    r = torch.sigmoid(x @ w_ih[:H].T + b_ih[:H] + h @ w_hh[:H].T + b_hh[:H])
    z = torch.sigmoid(x @ w_ih[H : 2 * H].T + b_ih[H : 2 * H] + h @ w_hh[H : 2 * H].T + b_hh[H : 2 * H])
    n = torch.tanh(x @ w_ih[2 * H :].T + b_ih[2 * H :] + r * (h @ w_hh[2 * H :].T + b_hh[2 * H :]))
    expected = (1 - z) * n + z * h
    assert torch.allclose(RF.gru_step(x, h, w_ih, w_hh, b_ih, b_hh), expected, atol=1e-6)
    # moving b_hn into b_in changes the result: the two biases are not interchangeable in a GRU
    b_ih2, b_hh2 = b_ih.clone(), b_hh.clone()
    b_ih2[2 * H :] += b_hh[2 * H :]
    b_hh2[2 * H :] = 0
    assert not torch.allclose(RF.gru_step(x, h, w_ih, w_hh, b_ih2, b_hh2), expected, atol=1e-3)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_is_the_written_equation(nonlinearity):
    x, h = torch.randn(3, 4), torch.randn(3, 5)
    w_ih, w_hh, b_ih, b_hh = torch.randn(5, 4), torch.randn(5, 5), torch.randn(5), torch.randn(5)
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    expected = torch.tanh(pre) if nonlinearity == "tanh" else pre.clamp(min=0)
    assert torch.allclose(RF.rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity), expected, atol=1e-6)


def test_lstm_step_projection():
    x, h, c = torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 5)
    w_ih, w_hh, w_hr = torch.randn(20, 3), torch.randn(20, 2), torch.randn(2, 5)
    h_plain, c_plain = RF.lstm_step(x, (h, c), w_ih, w_hh)
    h_proj, c_proj = RF.lstm_step(x, (h, c), w_ih, w_hh, w_hr=w_hr)
    assert torch.equal(c_plain, c_proj)
    assert torch.allclose(h_proj, h_plain @ w_hr.T, atol=1e-6)


def test_gru_step_recurrent_dropout_masks_only_the_recurrent_matmul():
    """Gal & Ghahramani (2016): the mask multiplies ``h`` where it enters ``W_hh``; the carry ``z * h`` keeps the
    whole state (for the GRU and the layer-normalised GRU alike)."""
    B, I, H = 3, 4, 5
    x, h = torch.randn(B, I), torch.randn(B, H)
    w_ih, w_hh, b_ih, b_hh = torch.randn(3 * H, I), torch.randn(3 * H, H), torch.randn(3 * H), torch.randn(3 * H)
    mask = (torch.rand(B, H) > 0.5).float() * 2
    r, z, n = RF.gru_gates(x, h * mask, w_ih, w_hh, b_ih, b_hh)
    assert torch.equal(RF.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, mask), (1 - z) * n + z * h)
    assert not torch.allclose(RF.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, mask),
                              RF.gru_step(x, h * mask, w_ih, w_hh, b_ih, b_hh), atol=1e-3)
    g_ih, g_hh = torch.rand(3 * H) + 0.5, torch.rand(3 * H) + 0.5
    r, z, n = RF.layer_norm_gru_gates(x, h * mask, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh)
    assert torch.equal(RF.layer_norm_gru_step(x, h, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, mask), (1 - z) * n + z * h)


def _layer_norm_written_out(v, gain, bias=None, eps=1e-5):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)  # the biased variance, as torch.nn.LayerNorm
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if bias is None else out + bias


def test_layer_norm_is_the_written_equation_with_eps_1e_5():
    v, gain, bias = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), torch.randn(8)
    torch.testing.assert_close(RF.layer_norm(v, gain, bias.double()), _layer_norm_written_out(v, gain, bias.double()),
                               rtol=1e-12, atol=1e-12)
    assert RF.LAYER_NORM_EPS == 1e-5
    flat = torch.full((1, 4), 3.0, dtype=torch.float64)  # zero variance: eps alone keeps it finite, the result 0
    assert torch.equal(RF.layer_norm(flat, torch.ones(4, dtype=torch.float64)), torch.zeros(1, 4, dtype=torch.float64))


def test_layer_norm_lstm_step_is_the_written_equations():
    B, I, H = 3, 4, 5
    d = torch.float64
    x, h, c = torch.randn(B, I, dtype=d), torch.randn(B, H, dtype=d), torch.randn(B, H, dtype=d)
    w_ih, w_hh, b = torch.randn(4 * H, I, dtype=d), torch.randn(4 * H, H, dtype=d), torch.randn(4 * H, dtype=d)
    g_ih, g_hh, g_c, b_c = (torch.rand(n, dtype=d) + 0.5 for n in (4 * H, 4 * H, H, H))
    a = _layer_norm_written_out(x @ w_ih.T, g_ih) + _layer_norm_written_out(h @ w_hh.T, g_hh) + b
    i, f, g, o = a[:, :H].sigmoid(), a[:, H:2 * H].sigmoid(), a[:, 2 * H:3 * H].tanh(), a[:, 3 * H:].sigmoid()
    c_expected = f * c + i * g
    h_expected = o * torch.tanh(_layer_norm_written_out(c_expected, g_c, b_c))
    h1, c1 = RF.layer_norm_lstm_step(x, (h, c), w_ih, w_hh, b, g_ih, g_hh, g_c, b_c)
    torch.testing.assert_close((h1, c1), (h_expected, c_expected), rtol=1e-12, atol=1e-12)
    for got, want in zip(RF.layer_norm_lstm_gates(x, h, w_ih, w_hh, b, g_ih, g_hh), (i, f, g, o)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_peephole_step_is_the_written_equations_and_the_lstm_without_peepholes():
    B, I, H = 3, 4, 5
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh, b_ih, b_hh = torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H)
    w_ci, w_cf, w_co = torch.randn(H), torch.randn(H), torch.randn(H)
    a = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i = torch.sigmoid(a[:, :H] + w_ci * c)
    f = torch.sigmoid(a[:, H:2 * H] + w_cf * c)
    c_expected = f * c + i * torch.tanh(a[:, 2 * H:3 * H])
    h_expected = torch.sigmoid(a[:, 3 * H:] + w_co * c_expected) * torch.tanh(c_expected)
    h1, c1 = RF.peephole_lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)
    assert torch.allclose(h1, h_expected, atol=1e-6) and torch.allclose(c1, c_expected, atol=1e-6)
    zero = torch.zeros(H)
    h0, c0 = RF.peephole_lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh, zero, zero, zero)
    h2, c2 = RF.lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    assert torch.equal(h0, h2) and torch.equal(c0, c2)  # a + 0 * c is a, bit for bit
