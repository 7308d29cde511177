"""rnnlab layers under graph capture: torch.compile(fullgraph=True), torch.jit.trace; torch.jit.script documented.

``torch.compile(torch.nn.LSTM(...), fullgraph=True)`` fails on torch 2.13 ("Dynamo does not support RNN, GRU, or
LSTM") unless ``torch._dynamo.config.allow_rnn`` is set; rnnlab's layers are plain autograd ops and capture
whole. Every test compares the captured model's outputs *and* gradients (input and every parameter) with eager
execution of the same module.

Backends: a layer with ``backend=None`` (the default, which runs the fused C++ kernel in eager mode) is captured
through the reference loop (see ``rnnlab.kernels.capturing``), so compiling an ordinary model just works. A layer
pinned to ``backend="fused"`` cannot be captured: its C++ ops have no fake-tensor rule. ``backend="reference"``
captures as the default does.

The default run compiles with ``backend="aot_eager"``: Dynamo captures the forward with ``fullgraph=True`` and
AOTAutograd traces the joint forward/backward graph, which is everything that has to be traceable. Inductor's code
generation takes ~30 s per tiny model on the CI machine, so the inductor tests are marked slow.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import rnnlab


def _grads(module: nn.Module, x: torch.Tensor, outputs) -> dict[str, torch.Tensor]:
    """d(sum of a fixed random projection of every output)/d(input and parameters)."""
    flat = [outputs[0], *(outputs[1] if isinstance(outputs[1], tuple) else (outputs[1],))]
    gen = torch.Generator().manual_seed(123)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in flat)
    names = ["input", *(n for n, _ in module.named_parameters())]
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return dict(zip(names, grads))


def _assert_same(module: nn.Module, run, x: torch.Tensor, hx=None, *, atol: float = 1e-6) -> None:
    """``run(x, hx)`` (a captured ``module``) equals eager ``module`` in outputs, final states and gradients."""
    x_eager = x.detach().clone().requires_grad_(True)
    x_run = x.detach().clone().requires_grad_(True)
    eager = module(x_eager, hx)
    captured = run(x_run, hx)
    torch.testing.assert_close(captured[0], eager[0], rtol=1e-5, atol=atol)
    if isinstance(eager[1], tuple):
        for got, want in zip(captured[1], eager[1]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)
    else:
        torch.testing.assert_close(captured[1], eager[1], rtol=1e-5, atol=atol)
    g_eager, g_run = _grads(module, x_eager, eager), _grads(module, x_run, captured)
    for name in g_eager:
        torch.testing.assert_close(g_run[name], g_eager[name], rtol=1e-5, atol=atol, msg=f"grad of {name}")


LAYERS = {
    "lstm-proj-bidir-2layer": lambda backend: rnnlab.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2,
                                                          batch_first=True, backend=backend),
    "gru-bidir": lambda backend: rnnlab.GRU(3, 4, bidirectional=True, backend=backend),
    "lstm-reference": lambda backend: rnnlab.LSTM(3, 4, backend="reference"),  # pinned: captures the same way
    "rnn-relu-2layer": lambda backend: rnnlab.RNN(3, 4, num_layers=2, nonlinearity="relu", backend=backend),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_compile_fullgraph_equals_eager(name: str) -> None:
    torch._dynamo.reset()
    layer = LAYERS[name](None)  # the default backend: fused in eager mode, reference loop when captured
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 3) if layer.batch_first else torch.randn(3, 2, 3)
    hx = None
    if isinstance(layer, rnnlab.GRU):  # an explicit initial state too: hx is a graph input, not a constant
        hx = torch.randn(layer.num_layers * layer.num_directions, 2, layer.hidden_size)
    _assert_same(layer, lambda inp, h: compiled(inp, h), x, hx)


def test_compile_loop_over_a_cell() -> None:
    """A hand-written time loop over an rnnlab cell captures whole too (cells call the functional steps)."""
    torch._dynamo.reset()
    cell = rnnlab.GRUCell(3, 4)

    def unroll(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(x.size(1), 4)
        outs = []
        for x_t in x.unbind(0):
            h = cell(x_t, h)
            outs.append(h)
        return torch.stack(outs), h

    x = torch.randn(3, 2, 3, requires_grad=True)
    out_c, h_c = torch.compile(unroll, fullgraph=True, backend="aot_eager")(x)
    out_e, h_e = unroll(x)
    torch.testing.assert_close(out_c, out_e)
    g_c = torch.autograd.grad(out_c.square().sum(), [x, *cell.parameters()])
    g_e = torch.autograd.grad(out_e.square().sum(), [x, *cell.parameters()])
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


def test_torch_nn_lstm_does_not_capture_but_rnnlab_does() -> None:
    """The advantage claimed in the docs, checked: torch.nn.LSTM refuses fullgraph capture on this torch."""
    torch._dynamo.reset()
    x = torch.randn(3, 2, 3)
    with pytest.raises(Exception, match="(?i)RNN, GRU, or LSTM"):
        torch.compile(nn.LSTM(3, 4), fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    layer = rnnlab.LSTM(3, 4)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="eager")(x)[0], layer(x)[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pinned_fused_backend_is_not_capturable() -> None:
    """Documented limitation: the fused C++ kernel is opaque to Dynamo; pin nothing (or "reference") to compile."""
    from rnnlab.kernels import fused

    if not fused.compiled_available():
        pytest.skip("fused C++ extension not built here: backend='fused' runs the reference loop")
    torch._dynamo.reset()
    layer = rnnlab.GRU(3, 4, backend="fused")
    # Dynamo's own "cannot trace this" error (a graph break, which fullgraph=True turns into an error), raised
    # inside the kernels: not some other failure on the way there.
    in_fused = r"(?s)from user code:.*rnnlab[/\\]kernels[/\\]"
    with pytest.raises(torch._dynamo.exc.Unsupported, match=in_fused):
        torch.compile(layer, fullgraph=True, backend="eager")(torch.randn(3, 2, 3, requires_grad=True))


def test_jit_trace_equals_eager_for_the_traced_length() -> None:
    """torch.jit.trace (deprecated in torch 2.13, still working) records the unrolled loop for one length T."""
    layer = rnnlab.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation + "converting a tensor to a Python boolean" tracer notes
        traced = torch.jit.trace(layer, (x,))
    _assert_same(layer, lambda inp, hx: traced(inp), x)
    x_b = torch.randn(5, 7, 3)  # another batch size is fine: nothing branches on B
    torch.testing.assert_close(traced(x_b)[0], layer(x_b)[0], rtol=1e-5, atol=1e-6)
    # ...but the time loop was unrolled for T = 5: another length is refused, not silently wrong.
    with pytest.raises(RuntimeError):
        traced(torch.randn(6, 2, 3))


def test_jit_script_is_not_supported() -> None:
    """Documented limitation: torch.jit.script (deprecated in torch 2.13) cannot compile the layers, whose
    forward dispatches on Python types and backends; use torch.compile or torch.export instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):  # RuntimeError or torch.jit.frontend's NotSupportedError, by construct
            torch.jit.script(rnnlab.LSTM(3, 4))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYERS))
def test_compile_inductor_equals_eager(name: str) -> None:
    torch._dynamo.reset()
    layer = LAYERS[name](None)
    compiled = torch.compile(layer, fullgraph=True)  # inductor: generated C++ kernels
    x = torch.randn(2, 3, 3) if layer.batch_first else torch.randn(3, 2, 3)
    _assert_same(layer, lambda inp, hx: compiled(inp, hx), x, atol=1e-5)


def test_compile_task_model_equals_eager() -> None:
    """A task model (embedding -> rnnlab LSTM -> linear head, from rnnlab.models) captures whole too."""
    from rnnlab.models import CharLM

    torch._dynamo.reset()
    model = CharLM(vocab_size=11, hidden_size=6, embed_size=5)
    ids = torch.randint(0, 11, (3, 2))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits_c, (h_c, c_c) = compiled(ids)
    logits_e, (h_e, c_e) = model(ids)
    for got, want in ((logits_c, logits_e), (h_c, h_e), (c_c, c_e)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    target = torch.randint(0, 11, (3, 2))
    loss = lambda logits: torch.nn.functional.cross_entropy(logits.reshape(-1, 11), target.reshape(-1))  # noqa: E731
    g_c = torch.autograd.grad(loss(logits_c), list(model.parameters()))
    g_e = torch.autograd.grad(loss(logits_e), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"grad of {name}")
