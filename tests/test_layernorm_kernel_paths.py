"""The LayerNorm kernels' two ways of giving the backward its activated gates, each against the reference loop.

A run whose gate buffer is at most ``KEEP_GATES_BYTES`` keeps the gates (and the LSTM's ``tanh(y_c)``) from the
forward, and its backward writes ``dXW`` over those gates; a larger run recomputes them in the backward from the
two saved normalised halves. The small cases of test_layernorm_kernel.py all take the first way, so here the
threshold is set to 0 to force the second, and each must equal the reference loop (outputs, final states, every
gradient; float64 gradcheck). A second backward through the same graph (``retain_graph``) finds the kept gates
overwritten and must recompute them: it must give the first backward's gradients again.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab.kernels.layernorm as ln_kernels
from test_layernorm_kernel import B, CELLS, I, T, TOL, _assert_close, _assert_same_run, _fresh_notices, _pair

__all__ = ["_fresh_notices"]  # its autouse fixture applies here too

pytestmark = pytest.mark.usefixtures("compiled_kernels")


@pytest.fixture(params=["kept", "recomputed"])
def gates_path(request, monkeypatch) -> str:
    """Run the test with the gates kept by the forward (the default at these sizes) or recomputed (threshold 0);
    also checks that the chosen way is the one taken."""
    if request.param == "recomputed":
        monkeypatch.setattr(ln_kernels, "KEEP_GATES_BYTES", 0)
    taken: list[bool] = []
    choose = ln_kernels._keep_gates

    def spy(xw: torch.Tensor, gates: bool) -> bool:
        taken.append(choose(xw, gates))
        return taken[-1]

    monkeypatch.setattr(ln_kernels, "_keep_gates", spy)
    yield request.param
    assert taken and all(taken) == (request.param == "kept"), f"expected the {request.param} path, took {taken}"


@pytest.mark.parametrize("option", [{}, dict(recurrent_dropout=0.3, zoneout=0.25)], ids=["plain", "rdrop+zoneout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_both_gate_paths_equal_the_reference_loop(cell, dtype, option, gates_path):
    """Packed input, 2 bidirectional layers: the same run as the reference loop on either path."""
    ours, ref = _pair(cell, dtype=dtype, num_layers=2, bidirectional=True, **option)
    _assert_same_run(cell, ours, ref, True, dtype, tol=TOL if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
def test_second_backward_recomputes_the_overwritten_gates(cell, gates_path):
    """retain_graph: the first backward overwrites the kept gates with dXW, the second must not read them; both
    give the reference loop's gradients (float64, so that a wrong second pass cannot hide in rounding)."""
    ours, ref = _pair(cell, dtype=torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    probe = torch.linspace(-1, 1, T * B * 2 * ours.hidden_size, dtype=torch.float64).view(T, B, -1)

    def grads(layer, repeats: int) -> list[list[torch.Tensor]]:
        loss = (layer(x)[0] * probe).sum()
        inputs = [x, *layer.parameters()]
        return [list(torch.autograd.grad(loss, inputs, retain_graph=True)) for _ in range(repeats)]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel covers the run
        first, second = grads(ours, 2)
    (want,) = grads(ref, 1)
    for k, (a, b, w) in enumerate(zip(first, second, want)):
        _assert_close(a, w, f"first backward, input {k}", 1e-10)
        _assert_close(b, w, f"second backward, input {k}", 1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_float64_on_both_gate_paths(cell, gates_path):
    """The hand-written backward against finite differences without return_gates (so that the kept gates are the
    backward's alone and dXW overwrites them), packed input and 2 bidirectional layers."""
    layer = CELLS[cell](3, 2, num_layers=2, bidirectional=True, dtype=torch.float64, backend="fused")
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])

    def f(x, h0, *ps):
        hx = (h0, torch.tanh(h0) * 0.7) if cell == "lstm" else h0
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hidden = torch.func.functional_call(layer, dict(zip(names, ps)), (packed, hx))
        return pad_packed_sequence(out)[0], *(hidden if isinstance(hidden, tuple) else (hidden,))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.autograd.gradcheck(f, (x, h0, *params))
