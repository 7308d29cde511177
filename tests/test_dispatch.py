"""The one dispatch, :func:`rnnlab.kernels.run`: which code runs a layer-direction, and nothing else chooses.

Each route is checked by what actually ran (a kernel that records its calls, or the autograd node a compiled kernel
leaves), and the results by the reference loop's. Also: the structure the dispatch keeps small (at most six
autograd Functions, at most eight C++ ops for torch's three cells) and the deprecated names of rnnlab 0.1.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

import rnnlab
from rnnlab import kernels
from rnnlab.cellspec import GRU_SPEC, LSTM_SPEC, RNN_RELU_SPEC, RNN_TANH_SPEC
from rnnlab.kernels import common, reference
from rnnlab.sequence import SequenceRun

SRC = Path(rnnlab.__file__).parent
T, B, I, H = 5, 3, 4, 6


def _spy(spec, answer=None):
    """``spec`` with a kernel that records each call and returns ``answer(seq)`` (``None``: declines)."""
    calls: list[SequenceRun] = []

    def kernel(seq):
        calls.append(seq)
        return None if answer is None else answer(seq)

    return dataclasses.replace(spec, name=f"Spy{spec.name}{id(calls)}", kernel=kernel), calls


def _seq(spec=LSTM_SPEC, batch=B, **options) -> SequenceRun:
    torch.manual_seed(0)
    p = {k: torch.randn(s, dtype=torch.float64) * 0.3 for k, s in spec.params(I, H, True, 0).items()}
    state = tuple(torch.zeros(batch, H, dtype=torch.float64) for _ in spec.state_names)
    return SequenceRun(torch.randn(T, batch, I, dtype=torch.float64), state if len(state) > 1 else state[0], p,
                       **options)


def _same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0])
    for s, r in zip(a[1] if isinstance(a[1], tuple) else (a[1],), b[1] if isinstance(b[1], tuple) else (b[1],)):
        torch.testing.assert_close(s, r)


def test_the_kernel_runs_when_it_covers_the_run_and_gets_the_spec():
    spec, calls = _spy(LSTM_SPEC, lambda seq: reference.run(seq))
    seq = _seq()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kernels.run(spec, seq, "fused")
    assert len(calls) == 1 and calls[0].cell is spec
    _same(out, reference.run(dataclasses.replace(seq, cell=LSTM_SPEC)))


@pytest.mark.parametrize("route", ["reference", "empty batch", "transform"])
def test_the_reference_loop_runs_without_asking_the_kernel(route):
    spec, calls = _spy(GRU_SPEC, lambda seq: pytest.fail("the kernel was asked"))
    seq = _seq(GRU_SPEC, batch=0 if route == "empty batch" else B)
    if route == "transform":
        x = seq.x

        def f(x):
            return kernels.run(spec, dataclasses.replace(seq, x=x), "fused")[0].sum()

        torch.func.grad(f)(x)
    else:
        kernels.run(spec, seq, "fused" if route == "empty batch" else "reference")
    assert calls == []


def _stepped(step, seq: SequenceRun):
    """The outputs ``(T, B, H)`` and final state of ``step`` walked over ``seq.x`` from ``seq.state``."""
    state, out = seq.state, []
    for x in seq.x:
        state = step(x, state)
        out.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(out), state


@pytest.mark.skipif(not common.compiled_available(), reason="needs the compiled kernels")
@pytest.mark.parametrize("spec", [LSTM_SPEC, GRU_SPEC, RNN_TANH_SPEC, RNN_RELU_SPEC], ids=lambda s: s.name)
def test_a_stepper_is_the_kernels_op_prepared_once_and_steps_as_run_does(spec):
    """Where run would take the kernel, stepper takes the spec's stepper (its compiled op, asked once, not per
    step); the steps equal the whole-sequence run, in float64 to rounding."""
    asked: list[SequenceRun] = []

    def spy(seq):
        asked.append(seq)
        return spec.stepper(seq)

    spied = dataclasses.replace(spec, name=f"Stepper{spec.name}", stepper=spy,
                                kernel=lambda seq: pytest.fail("a per-step run"))
    seq = _seq(spec)
    with torch.no_grad():
        got = _stepped(kernels.stepper(spied, dataclasses.replace(seq, x=seq.x[:1])), seq)
    assert len(asked) == 1
    _same(got, reference.run(dataclasses.replace(seq, cell=spec)))


@pytest.mark.parametrize("route", ["reference", "gradient"])
def test_a_stepper_steps_by_run_where_the_kernels_op_would_not_run(route):
    """With the reference backend, and for a run that needs a gradient, each step is a one-step run of the one
    dispatch (the kernel asked each step where run asks it)."""
    spec, calls = _spy(LSTM_SPEC, lambda seq: reference.run(seq))
    seq = _seq()
    if route == "gradient":
        seq.p["weight_hh"].requires_grad_(True)
    step = kernels.stepper(spec, dataclasses.replace(seq, x=seq.x[:1]), route if route == "reference" else "fused")
    got = _stepped(step, seq)
    assert len(calls) == (0 if route == "reference" else T)
    _same(got, reference.run(dataclasses.replace(seq, cell=LSTM_SPEC)))
    if route == "gradient":
        assert got[0].grad_fn is not None


@pytest.mark.parametrize("option", ["h_mask", "lengths", "record"])
def test_a_stepper_refuses_a_run_with_options(option):
    seq = _seq()
    value = {"h_mask": torch.ones(B, H, dtype=torch.float64), "lengths": torch.full((B,), 1), "record": True}
    with pytest.raises(ValueError, match=rf"stepper: .*{option}"):
        kernels.stepper(LSTM_SPEC, dataclasses.replace(seq, x=seq.x[:1], **{option: value[option]}))


def test_a_declined_run_takes_the_reference_loop_and_warns_once(monkeypatch):
    monkeypatch.setattr(kernels, "_warned", set())
    spec, calls = _spy(LSTM_SPEC)  # declines everything
    seq = _seq()
    with pytest.warns(UserWarning, match=rf"{spec.name}'s kernel does not cover this run .* reference loop"):
        out = kernels.run(spec, seq, "fused")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.run(spec, seq, "fused")  # once per cell and reason
    assert len(calls) == 2
    _same(out, reference.run(dataclasses.replace(seq, cell=LSTM_SPEC)))


def test_an_observer_without_a_sink_sees_the_reference_loop():
    spec, calls = _spy(LSTM_SPEC, lambda seq: pytest.fail("the kernel was asked"))
    wrapped = []

    class Observer:
        def wrap(self, step, state):
            wrapped.append(True)
            return step, state

        def sink(self, seq):
            return None

    kernels.run(spec, _seq(), "fused", Observer())
    assert wrapped == [True] and calls == []


@pytest.mark.skipif(not common.compiled_available(), reason="needs the compiled kernels")
def test_an_observer_sink_keeps_the_kernel_and_gets_the_outputs():
    got = {}

    class Sink:
        def forward(self, cells, gates=None):
            got["cells"] = cells

        def backward(self, dh, dc):
            got["dh"] = dh

        def outputs(self, y):
            got["y"] = y

    class Observer:
        def wrap(self, step, state):
            raise AssertionError("the reference loop ran")

        def sink(self, seq):
            return Sink(), seq.state

    seq = _seq()
    seq = dataclasses.replace(seq, x=seq.x.requires_grad_())
    out = kernels.run(LSTM_SPEC, seq, "fused", Observer())
    out[0].sum().backward()
    torch.testing.assert_close(got["y"], out[0].detach())
    assert got["cells"].shape == (T, B, H) and got["dh"].shape == (T, B, H)


def test_a_layer_pinned_to_an_unknown_backend_fails_at_construction():
    with pytest.raises(ValueError, match=r"unknown backend 'fast'; expected one of \['fused', 'reference', 'torch'\]"):
        rnnlab.LSTM(I, H, backend="fast")


# -- backend="torch": torch's own op (what torch.nn runs, cuDNN on a GPU), tested on its CPU kernel -------------

TORCH_CASES = {"lstm-proj-bi-2": (rnnlab.LSTM, torch.nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
               "gru-bi": (rnnlab.GRU, torch.nn.GRU, dict(bidirectional=True)),
               "rnn-relu-nobias": (rnnlab.RNN, torch.nn.RNN, dict(nonlinearity="relu", bias=False))}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_the_torch_backend_equals_torch_nn_to_the_second_derivative(case):
    ours_cls, theirs_cls, kw = TORCH_CASES[case]
    torch.manual_seed(1)
    theirs = theirs_cls(I, H, dtype=torch.float64, **kw)
    ours = ours_cls(I, H, dtype=torch.float64, backend="torch", **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # covered: no fallback warning
        y = ours(x)[0]
    torch.testing.assert_close(y, theirs(x)[0])
    assert not any("rnnlab" in type(n).__module__ for n in _nodes(y))  # torch's op ran, not one of ours
    g_ours = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)[0]
    g_theirs = torch.autograd.grad(theirs(x)[0].pow(2).sum(), x, create_graph=True)[0]
    torch.testing.assert_close(g_ours, g_theirs)
    torch.testing.assert_close(torch.autograd.grad(g_ours.sum(), x)[0], torch.autograd.grad(g_theirs.sum(), x)[0])


def _nodes(t):
    seen, todo = [], [t.grad_fn]
    while todo:
        n = todo.pop()
        if n is not None and n not in seen:
            seen.append(n)
            todo.extend(f for f, _ in n.next_functions)
    return seen


def test_the_torch_backend_is_recorded_on_the_reference_loop():
    """Torch's op hands no per-step gradients over: a recording (even one that accepts kernel sinks) observes the
    reference loop, and its per-step gradients are the reference loop's."""
    from rnnlab.diagnostics import record

    torch.manual_seed(2)
    layer = rnnlab.LSTM(I, H, backend="torch").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with record(layer, kernel=True) as rec:
        out = layer(x)[0]
    (g,) = torch.autograd.grad(out[-1].sum(), [rec.traces[0].states[0][0]])
    plain = rnnlab.LSTM(I, H, backend="reference").double()
    plain.load_state_dict(layer.state_dict())
    with record(plain) as rec2:
        out2 = plain(x)[0]
    (g2,) = torch.autograd.grad(out2[-1].sum(), [rec2.traces[0].states[0][0]])
    torch.testing.assert_close(g, g2)


def test_the_torch_backend_leaves_options_and_variants_to_the_reference_loop(monkeypatch):
    monkeypatch.setattr(kernels, "_warned", set())
    x = torch.randn(T, B, I)
    with pytest.warns(UserWarning, match=r"torch's own op runs torch's cells without options, lengths or sinks, "
                                         r"not this LayerNormLSTM run, so it runs on the reference loop"):
        rnnlab.LayerNormLSTM(I, H, backend="torch")(x)
    layer = rnnlab.LSTM(I, H, zoneout=0.2, backend="torch").eval()
    reference_layer = rnnlab.LSTM(I, H, zoneout=0.2, backend="reference").eval()
    reference_layer.load_state_dict(layer.state_dict())
    with pytest.warns(UserWarning, match="not this LSTM run"):
        torch.testing.assert_close(layer(x)[0], reference_layer(x)[0])


def test_torchs_cells_on_another_device_hand_over_to_torchs_op(monkeypatch):
    """A plain layer moved to a GPU runs cuDNN, not the Python loop. No GPU here: the routing is checked on
    tensors of the meta device (the compiled loops decline it), with torch's op replaced by a spy."""
    from rnnlab.kernels import fused, native

    seen = []
    monkeypatch.setattr(native, "native_kernel", lambda seq: seen.append(seq.cell.mode) or "torch's op")
    seq = _seq()
    meta = dataclasses.replace(seq, x=seq.x.to("meta"), state=tuple(s.to("meta") for s in seq.state),
                               p={k: v.to("meta") for k, v in seq.p.items()}, cell=LSTM_SPEC)
    assert fused.lstm_kernel(meta) == "torch's op" and seen == ["LSTM"]
    assert fused.lstm_kernel(dataclasses.replace(seq, x=seq.x.bfloat16(), cell=LSTM_SPEC)) is None  # CPU: declined


# -- the structure the dispatch keeps small ----------------------------------------------------------------------

def _function_classes() -> list[str]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("autograd.Function") for b in node.bases):
                found.append(f"{path.relative_to(SRC)}:{node.name}")
    return found


def test_at_most_six_autograd_functions_one_per_cell_family():
    found = _function_classes()
    assert len(found) <= 6, found


def test_at_most_eight_ops_for_torchs_three_cells():
    """Eight ops run torch's three cells. Besides them: lstm_sample, generation's loop (one op for the whole
    sample, so that no Python runs between characters), workspace, the buffers Python's GEMMs write into, and
    release_workspaces."""
    text = (SRC / "kernels" / "csrc" / "fused.cpp").read_text()
    extra = ("lstm_sample", "workspace", "release_workspaces")
    ops = [op for op in re.findall(r'm\.def\("(\w+)\(', text) if op not in extra]
    assert len(ops) <= 8, ops


# -- rnnlab 0.1's names: still working for one release, with a DeprecationWarning -----------------------------------

def test_moved_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match=r"rnnlab\.sequence\.SequenceRun"):
        from rnnlab.cellspec import SequenceRun as old
    assert old is SequenceRun
    with pytest.warns(DeprecationWarning, match=r"rnnlab\.kernels\.masks\.bernoulli_mask"):
        from rnnlab.layers import bernoulli_mask
    assert bernoulli_mask((4,), 1.0, torch.float32, torch.device("cpu")).sum() == 4
    with pytest.warns(DeprecationWarning, match=r"rnnlab\.sequence\.GradientSink"):
        from rnnlab.layers import KernelSink
    assert KernelSink is rnnlab.sequence.GradientSink
    seq = dataclasses.replace(_seq(GRU_SPEC), cell=GRU_SPEC)
    with pytest.warns(DeprecationWarning, match=r"rnnlab\.kernels\.fused"):
        from rnnlab.kernels.options import rnn_kernel
    with pytest.warns(DeprecationWarning, match=r"reference\.run_cell is deprecated"):
        old = reference.run_cell(GRU_SPEC.step, GRU_SPEC.gates, seq.x, seq.state, seq.p, record=True)
    new = reference.run(dataclasses.replace(seq, record=True, gates=True))
    torch.testing.assert_close(old[0], new[0])
    torch.testing.assert_close(old[3]["z"], new[3]["z"])
    relu = dataclasses.replace(_seq(rnnlab.cellspec.RNN_RELU_SPEC), cell=rnnlab.cellspec.RNN_RELU_SPEC)
    if common.compiled_available():
        _same(rnn_kernel(relu, relu=True), reference.run(relu))


def test_a_registered_backend_still_runs_torchs_cells(monkeypatch):
    monkeypatch.setattr(kernels, "_legacy", {})
    seen = []

    def run_layer(mode, x, state, weights, *, reverse=False, lengths=None):
        seen.append(mode)
        return reference.run_layer(mode, x, state, weights, reverse=reverse, lengths=lengths)

    with pytest.warns(DeprecationWarning, match="register_backend is deprecated"):
        kernels.register_backend("mine", run_layer)
    layer = rnnlab.GRU(I, H, backend="mine").double()
    plain = rnnlab.GRU(I, H, backend="reference").double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
    assert seen and set(seen) == {"GRU"}
    with pytest.warns(DeprecationWarning, match="resolve_backend is deprecated"):
        assert kernels.resolve_backend("mine") is run_layer
