"""Double backward (``create_graph=True``) through every layer, variant, option and cell, on every backend.

A compiled kernel's hand-written backward is not made of autograd ops, so under ``create_graph=True`` it
differentiates the same layer-direction on the reference loop instead
(:func:`rnnlab.kernels.reference.backward_through_loop`). Checked here, in float64 unless said otherwise:

* ``gradgradcheck`` (fast mode: random projections of the Jacobians) for every case on "fused" and "reference":
  the second derivatives are the derivatives of the first ones, w.r.t. the input, the initial states and every
  parameter. Train-mode randomness (recurrent dropout, zoneout, DropConnect, inter-layer dropout) is fixed by
  seeding before every call of the function, so each evaluation draws the same masks.
* That alone would pass a recompute with a wrong mask or weight (it would be consistent with itself), so every
  case also compares the fused backend with the reference backend: the first derivatives under ``create_graph``
  (and with the hand-written first-order backward), and the second derivatives of a random projection of them
  w.r.t. every input and parameter. A fused run must go through a compiled kernel's Function (checked on its
  graph), so a case that quietly falls back to the loop does not count.
* The three silent failures of issue 14: a ``g`` without a graph; a second ``grad`` with ``allow_unused=True``
  that was zero; a float32 gradient-penalty step whose penalty term was lost (here: within a bound derived from
  the float32 reference loop's own error against float64, which the lost term would exceed).
* torch.nn's cells against rnnlab's; the gradient sink of the diagnostics under ``create_graph``; and the guard
  that raises instead of returning a silent zero.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import gradgradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.cellspec import RNN_TANH_SPEC, SPECS
from rnnlab.kernels import common, fused, reference
from rnnlab.sequence import SequenceRun

pytestmark = pytest.mark.usefixtures("compiled_kernels")  # the fused cases must run the compiled kernels

T, B, I, H = 3, 2, 2, 2
LENGTHS = torch.tensor([1, 3])  # unequal and unsorted (enforce_sorted=False)
BACKENDS = ("fused", "reference")
F64 = torch.float64
# the autograd Functions of the compiled kernels, as their backward nodes are named in a graph
KERNEL_NODES = {f"{name}Backward" for name in ("LSTM", "GRU", "Elman", "_LNLSTM", "_LNGRU", "_Peephole")}
KERNELS = {"LSTM": fused.lstm_kernel, "GRU": fused.gru_kernel, "RNN_TANH": fused.rnn_tanh_kernel,
           "RNN_RELU": fused.rnn_relu_kernel}


@dataclass(frozen=True)
class Case:
    cls: type[nn.Module]
    kw: dict = field(default_factory=dict)
    packed: bool = False  # a PackedSequence with LENGTHS
    hx: bool = False  # initial states given (and differentiated)
    train: bool = False  # train mode: the random masks of the options and of inter-layer dropout are drawn


def _rnn(nonlinearity: str, **kw) -> dict:
    return {"nonlinearity": nonlinearity, **kw}


LAYERS = {
    "lstm": Case(rnnlab.LSTM, hx=True),
    "lstm-2layer-bi": Case(rnnlab.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm-proj-bi-packed": Case(rnnlab.LSTM, dict(proj_size=1, bidirectional=True), packed=True, hx=True),
    "lstm-nobias-batch_first": Case(rnnlab.LSTM, dict(bias=False, batch_first=True), hx=True),
    "gru": Case(rnnlab.GRU, hx=True),
    "gru-bi-packed": Case(rnnlab.GRU, dict(bidirectional=True), packed=True),
    "gru-nobias-batch_first": Case(rnnlab.GRU, dict(bias=False, batch_first=True)),
    "rnn_tanh-bi-packed": Case(rnnlab.RNN, _rnn("tanh", bidirectional=True), packed=True, hx=True),
    "rnn_relu-2layer-bi": Case(rnnlab.RNN, _rnn("relu", num_layers=2, bidirectional=True)),
    "rnn_relu-nobias-batch_first": Case(rnnlab.RNN, _rnn("relu", bias=False, batch_first=True), hx=True),
    "layernorm_lstm": Case(rnnlab.LayerNormLSTM, hx=True),
    "layernorm_lstm-bi-packed-nobias": Case(rnnlab.LayerNormLSTM, dict(bidirectional=True, bias=False), packed=True),
    "layernorm_gru": Case(rnnlab.LayerNormGRU, hx=True),
    "layernorm_gru-bi-packed": Case(rnnlab.LayerNormGRU, dict(bidirectional=True), packed=True),
    "peephole_lstm": Case(rnnlab.PeepholeLSTM, hx=True),
    "peephole_lstm-bi-packed": Case(rnnlab.PeepholeLSTM, dict(bidirectional=True), packed=True),
}
# Every option (rnnlab.RNNBase), on torch's cells and on the variants' kernels.
OPTIONS = {
    "lstm-recurrent_dropout": Case(rnnlab.LSTM, dict(recurrent_dropout=0.5, bidirectional=True), packed=True,
                                   train=True),
    "lstm-zoneout-train": Case(rnnlab.LSTM, dict(zoneout=(0.5, 0.3), proj_size=1), hx=True, train=True),
    "lstm-zoneout-eval": Case(rnnlab.LSTM, dict(zoneout=0.3, bidirectional=True), packed=True),
    "lstm-weight_dropout-dropout": Case(rnnlab.LSTM, dict(weight_dropout=0.5, num_layers=2, dropout=0.5),
                                        train=True),
    "lstm-return_gates": Case(rnnlab.LSTM, dict(return_gates=True, bidirectional=True), packed=True),
    "lstm-learn_init-forget_bias": Case(rnnlab.LSTM, dict(learn_init=True, forget_bias=1.0, num_layers=2)),
    "gru-recurrent_dropout-zoneout": Case(rnnlab.GRU, dict(recurrent_dropout=0.5, zoneout=0.5), hx=True,
                                          train=True),
    "gru-return_gates": Case(rnnlab.GRU, dict(return_gates=True, bidirectional=True), packed=True),
    "gru-all_states-learn_init": Case(rnnlab.GRU, dict(return_all_states=True, learn_init=True, forget_bias=1.0)),
    "rnn_tanh-recurrent_dropout-zoneout": Case(rnnlab.RNN, _rnn("tanh", recurrent_dropout=0.5, zoneout=0.5),
                                               packed=True, train=True),
    "rnn_relu-return_gates-weight_dropout": Case(rnnlab.RNN, _rnn("relu", return_gates=True, weight_dropout=0.5),
                                                 hx=True, train=True),
    "layernorm_lstm-options": Case(rnnlab.LayerNormLSTM, dict(recurrent_dropout=0.5, zoneout=0.5,
                                                              return_gates=True), packed=True, train=True),
    "layernorm_lstm-all_states-zoneout-eval": Case(rnnlab.LayerNormLSTM, dict(return_all_states=True, zoneout=0.3),
                                                   hx=True),
    "layernorm_gru-options": Case(rnnlab.LayerNormGRU, dict(recurrent_dropout=0.5, zoneout=0.5, return_gates=True,
                                                            learn_init=True), train=True),
    "peephole_lstm-options": Case(rnnlab.PeepholeLSTM, dict(recurrent_dropout=0.5, zoneout=(0.5, 0.0),
                                                            return_gates=True), packed=True, hx=True, train=True),
    "peephole_lstm-all_states-forget_bias": Case(rnnlab.PeepholeLSTM, dict(return_all_states=True, forget_bias=1.0,
                                                                           weight_dropout=0.5), train=True),
}
CASES = LAYERS | OPTIONS


def _flatten(result, case: Case) -> list[Tensor]:
    """Every differentiable output of a layer call: output, final states and, if asked for, AllStates."""
    out, hidden = result[0], result[1]
    if case.packed:
        out = pad_packed_sequence(out, batch_first=case.kw.get("batch_first", False))[0]
    flat = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    if len(result) == 3:
        states = result[2]
        flat += [states.h, *([states.c] if states.c is not None else [])]
        flat += [states.gates[k] for k in sorted(states.gates or {})]
    return flat


def _problem(case: Case, backend: str) -> tuple[Callable[..., list[Tensor]], list[Tensor], nn.Module]:
    """The layer as a function of ``(x, *initial states, *parameters)`` (float64), and those inputs."""
    torch.manual_seed(0)
    module = case.cls(I, H, backend=backend, dtype=F64, **case.kw)
    with torch.no_grad():
        for p in module.parameters():  # larger than the default init (and non-zero learnt states): every term counts
            p.uniform_(-0.8, 0.8)
    module.train(case.train)
    g = torch.Generator().manual_seed(1)
    batch_first = case.kw.get("batch_first", False)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=F64)
    states: list[Tensor] = []
    if case.hx:
        n = module.num_layers * module.num_directions
        sizes = [module.proj_size or H, H][: module.spec.n_states]
        states = [torch.randn(n, B, s, generator=g, dtype=F64) for s in sizes]
    names = [name for name, _ in module.named_parameters()]

    def fn(x: Tensor, *rest: Tensor) -> list[Tensor]:
        given, params = rest[: len(states)], rest[len(states):]
        inp = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False) if case.packed else x
        hx = (tuple(given) if len(given) == 2 else given[0]) if given else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)  # the same masks in every evaluation
            return _flatten(functional_call(module, dict(zip(names, params)), (inp, hx)), case)

    inputs = [t.detach().clone().requires_grad_() for t in (x, *states, *module.parameters())]
    return fn, inputs, module


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_gradgradcheck(name: str, backend: str) -> None:
    fn, inputs, _ = _problem(CASES[name], backend)
    # check_undefined_grad (outputs without a gradient) costs as much again: on its own below
    assert gradgradcheck(fn, inputs, fast_mode=True, check_undefined_grad=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm-return_gates", "layernorm_lstm-options", "peephole_lstm-options",
                                  "rnn_relu-return_gates-weight_dropout"])
def test_gradgradcheck_with_undefined_gradients(name: str, backend: str) -> None:
    """Outputs that get no gradient (the kernels do not materialise them) in the first and the second backward."""
    fn, inputs, _ = _problem(CASES[name], backend)
    assert gradgradcheck(fn, inputs, fast_mode=True)


def _kernel_nodes(outputs: list[Tensor]) -> set[str]:
    """The compiled kernels' Functions in the graph of ``outputs``."""
    seen, found, stack = set(), set(), [o.grad_fn for o in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in KERNEL_NODES:
            found.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return found


def _derivatives(case: Case, backend: str):
    """First derivatives (with ``create_graph`` and without) of a random projection of the outputs, and the
    second derivatives of a random projection of the first, w.r.t. every input and parameter."""
    fn, inputs, _ = _problem(case, backend)
    outs = fn(*inputs)
    g = torch.Generator().manual_seed(2)
    v = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
    first = torch.autograd.grad(outs, inputs, v, create_graph=True, allow_unused=True)
    plain = torch.autograd.grad(fn(*inputs), inputs, v, allow_unused=True)
    used = [(f, torch.randn(f.shape, generator=g, dtype=F64)) for f in first if f is not None and f.requires_grad]
    second = torch.autograd.grad([f for f, _ in used], inputs, [w for _, w in used], allow_unused=True)
    return _kernel_nodes(outs), inputs, first, plain, second


def _assert_equal(ours, theirs, inputs, what: str) -> None:
    """Equal per input; an absent gradient counts as zeros (so a missing one against a non-zero one fails)."""
    for k, (a, b, x) in enumerate(zip(ours, theirs, inputs)):
        a = torch.zeros_like(x) if a is None else a.detach()
        b = torch.zeros_like(x) if b is None else b.detach()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}, input {k}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_fused_derivatives_equal_the_reference_loop(name: str) -> None:
    nodes, inputs, first, plain, second = _derivatives(CASES[name], "fused")
    assert nodes, "the fused case ran no compiled kernel"
    _, _, ref_first, _, ref_second = _derivatives(CASES[name], "reference")
    _assert_equal(first, plain, inputs, "first derivatives with create_graph vs the hand-written backward")
    _assert_equal(first, ref_first, inputs, "first derivatives vs the reference backend")
    _assert_equal(second, ref_second, inputs, "second derivatives vs the reference backend")
    assert max(float(s.abs().max()) for s in ref_second if s is not None) > 1e-3  # not a trivial (zero) case


# -- the three silent failures of issue 14 --------------------------------------------------------------------------

def _pair(cls: type[nn.Module], dtype: torch.dtype = torch.float32, **kw) -> tuple[nn.Module, nn.Module]:
    """The same layer on the fused backend and on the reference loop (equal weights)."""
    torch.manual_seed(0)
    ours = cls(3, 4, backend="fused", dtype=dtype, **kw)
    ref = cls(3, 4, backend="reference", dtype=dtype, **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("cls", [rnnlab.LSTM, rnnlab.GRU, rnnlab.RNN])
def test_create_graph_gives_a_gradient_with_a_graph(cls) -> None:
    """Issue 14: ``g`` had no graph and the second ``grad`` raised "appears to not have been used in the graph";
    with ``allow_unused=True`` (as gradgradcheck asks) it was silently zero."""
    grads = {}
    for layer in _pair(cls, F64, bidirectional=True):
        x = torch.randn(5, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        out = layer(x)[0]
        g, = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        assert g.grad_fn is not None
        (gx,) = torch.autograd.grad(g.pow(2).sum(), x, retain_graph=True)
        gw = torch.autograd.grad(g.pow(2).sum(), list(layer.parameters()), allow_unused=True)
        grads[layer.backend] = [gx, *gw]
    assert all(t is not None and float(t.abs().max()) > 0 for t in grads["reference"])
    for a, b in zip(grads["fused"], grads["reference"]):
        assert a is not None
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


PENALTY_LAYERS = {"lstm": (rnnlab.LSTM, {"num_layers": 2, "bidirectional": True}),
                  "gru": (rnnlab.GRU, {"bidirectional": True}), "rnn": (rnnlab.RNN, {"num_layers": 2}),
                  "layernorm_lstm": (rnnlab.LayerNormLSTM, {}), "layernorm_gru": (rnnlab.LayerNormGRU, {}),
                  "peephole_lstm": (rnnlab.PeepholeLSTM, {"zoneout": 0.2})}


def _penalty_step(layer: nn.Module, x: Tensor, target: Tensor, penalty: bool = True) -> list[Tensor]:
    """The parameter gradients of ``task + ||d sum(out) / d x||^2`` (a WGAN-GP-style gradient penalty)."""
    x = x.detach().requires_grad_()
    out = layer(x)[0]
    loss = (out - target).pow(2).mean()
    if penalty:
        dx, = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = loss + dx.pow(2).sum()
    return list(torch.autograd.grad(loss, list(layer.parameters())))


@pytest.mark.parametrize("name", list(PENALTY_LAYERS))
def test_float32_gradient_penalty_step_equals_the_reference(name: str) -> None:
    """Issue 14: the penalty's term was lost on the fused backend (relative error 1.00). The float64 reference
    loop is the truth; the fused float32 gradients may be off by at most 4x the float32 reference loop's own error
    plus 16 float32 epsilons of the gradient's magnitude, a bound that the gradient without the penalty misses
    for every parameter (by 10^4x and more on the author's machine; the fused error is within 0.25x of it)."""
    cls, kw = PENALTY_LAYERS[name]
    ours, ref = _pair(cls, **kw)
    truth_layer = copy.deepcopy(ref).double()
    g = torch.Generator().manual_seed(4)
    x, target = torch.randn(6, 3, 3, generator=g), torch.randn(6, 3, 4 * (1 + ours.bidirectional), generator=g)
    for layer in (ours, ref, truth_layer):
        layer.train(False)  # eval-mode zoneout: the expectation, the same on every run
    fused32 = _penalty_step(ours, x, target)
    ref32 = _penalty_step(ref, x, target)
    truth = _penalty_step(truth_layer, x.double(), target.double())
    lost = _penalty_step(ours, x, target, penalty=False)
    eps = torch.finfo(torch.float32).eps
    missed = 0
    for k, (a, b, t, l) in enumerate(zip(fused32, ref32, truth, lost)):
        bound = 4 * float((b.double() - t).abs().max()) + 16 * eps * float(t.abs().max())
        err = float((a.double() - t).abs().max())
        assert err <= bound, f"{name} parameter {k}: {err:.3g} from float64 (bound {bound:.3g})"
        missed += float((l.double() - t).abs().max()) > bound
    assert missed == len(truth), "the penalty's term is within the bound: the test could not see it lost"


# -- the cells: autograd ops, against torch.nn --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["RNNCell-tanh", "RNNCell-relu", "LSTMCell", "GRUCell"])
def test_cells_double_backward_equals_torch(kind: str) -> None:
    name, _, nonlinearity = kind.partition("-")
    kw = {"nonlinearity": nonlinearity} if nonlinearity else {}
    torch.manual_seed(0)
    theirs = getattr(nn, name)(3, 4, dtype=F64, **kw)
    ours = getattr(rnnlab, name)(3, 4, dtype=F64, **kw)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(5)
    x0, h0 = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64)
    results = []
    for cell in (ours, theirs):
        x, h = x0.clone().requires_grad_(), h0.clone().requires_grad_()
        out = cell(x, (h, h * 0.5) if name == "LSTMCell" else h)
        flat = list(out) if isinstance(out, tuple) else [out]
        first = torch.autograd.grad(sum(o.pow(2).sum() for o in flat), [x, h], create_graph=True)
        results.append(torch.autograd.grad(sum(f.pow(2).sum() for f in first), [x, h, *cell.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [rnnlab.LayerNormLSTMCell, rnnlab.LayerNormGRUCell, rnnlab.PeepholeLSTMCell])
def test_variant_cells_gradgradcheck(cls) -> None:
    torch.manual_seed(0)
    cell = cls(2, 3, dtype=F64)
    names = [n for n, _ in cell.named_parameters()]
    g = torch.Generator().manual_seed(6)
    x, h, c = (torch.randn(2, s, generator=g, dtype=F64) for s in (2, 3, 3))
    two = cls is not rnnlab.LayerNormGRUCell

    def fn(x: Tensor, h: Tensor, c: Tensor, *params: Tensor):
        return functional_call(cell, dict(zip(names, params)), (x, (h, c) if two else h))

    inputs = [t.detach().clone().requires_grad_() for t in (x, h, c, *cell.parameters())]
    if not two:
        inputs[2].requires_grad_(False)  # the GRU has no cell state
    assert gradgradcheck(fn, inputs, fast_mode=True)


# -- the gradient sink of the diagnostics, and the guard against a silent zero ---------------------------------

class _Sink:
    def __init__(self) -> None:
        self.dh: Tensor | None = None
        self.dc: Tensor | None = None

    def forward(self, cells, gates=None) -> None:
        pass

    def backward(self, dh: Tensor, dc: Tensor | None) -> None:
        self.dh, self.dc = dh, dc


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_gradient_sink_under_create_graph(mode: str) -> None:
    """With a sink (the diagnostics' per-step gradients), ``create_graph`` gives the reference loop's second
    derivatives, and the sink still gets the per-step gradients it gets in a first-order backward."""
    layer = {"LSTM": rnnlab.LSTM, "GRU": rnnlab.GRU, "RNN_TANH": rnnlab.RNN}[mode](2, 3, dtype=F64)
    weights = [w.detach().requires_grad_() for w in layer.layer_weights(0)]
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(T, B, I, generator=g, dtype=F64)
    state = tuple(torch.randn(B, H + 1, generator=g, dtype=F64) for _ in range(1 + (mode == "LSTM")))
    probe = torch.randn(T, B, H + 1, generator=g, dtype=F64)
    results, sinks = [], []
    for create_graph, run in ((True, "fused"), (False, "fused"), (True, "reference")):
        x = x0.clone().requires_grad_()
        sink = _Sink()
        s = state if mode == "LSTM" else state[0]
        if run == "fused":
            p = dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weights))
            result = KERNELS[mode](SequenceRun(x, s, p, True, LENGTHS, sink=sink, cell=SPECS[mode]))
            assert result is not None
            Y = result[0]
        else:
            Y, _ = reference.run_layer(mode, x, s, weights, reverse=True, lengths=LENGTHS)
        dx, = torch.autograd.grad((Y * probe).sum(), x, create_graph=create_graph)
        if create_graph:
            results.append(torch.autograd.grad(dx.pow(2).sum(), [x, *weights], allow_unused=True))
        sinks.append(sink)
    for a, b in zip(*results):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sinks[0].dh is not None and sinks[1].dh is not None
    torch.testing.assert_close(sinks[0].dh, sinks[1].dh, rtol=1e-12, atol=1e-14)
    if mode == "LSTM":
        torch.testing.assert_close(sinks[0].dc, sinks[1].dc, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_RELU"])
@pytest.mark.parametrize("covered", [True, False])
@pytest.mark.filterwarnings("ignore:rnnlab.kernels.fused.run_layer is deprecated:DeprecationWarning")
def test_deprecated_run_layer(mode: str, covered: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deprecated ``fused.run_layer`` (no cell spec: its runs rerun torch's step of ``mode``), on a kernel and
    where the kernel declines (no compiler, another dtype or device: the reference loop): its second derivatives
    equal the reference loop's."""
    if not covered:
        monkeypatch.setattr(common, "compiled_available", lambda: False)
    layer = {"LSTM": rnnlab.LSTM, "GRU": rnnlab.GRU, "RNN_RELU": rnnlab.RNN}[mode](2, 3, dtype=F64)
    weights = [w.detach().requires_grad_() for w in layer.layer_weights(0)]
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(T, B, I, generator=g, dtype=F64)
    state = tuple(torch.randn(B, H + 1, generator=g, dtype=F64) for _ in range(1 + (mode == "LSTM")))
    results = []
    for run in (fused.run_layer, reference.run_layer):
        x = x0.clone().requires_grad_()
        s = state if mode == "LSTM" else state[0]
        Y, _ = run(mode, x, s, weights, reverse=True, lengths=LENGTHS)
        dx, = torch.autograd.grad(Y.pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(dx.pow(2).sum(), [x, *weights]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_an_output_the_loop_does_not_compute_raises() -> None:
    """The guard: an output with a gradient that the reference loop does not rerun raises, never a silent zero
    (here the recorded pre-activation of an Elman run whose cell has no gate function to rerun it)."""
    layer = rnnlab.RNN(2, 3, dtype=F64)
    w_ih, w_hh, b_ih, b_hh = (w.detach().requires_grad_() for w in layer.layer_weights(0))
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    h0 = torch.zeros(B, 3, dtype=F64)
    no_gates = replace(RNN_TANH_SPEC, gates=None)
    Y, _, pre = fused.Elman.apply(x, h0, w_ih, w_hh, b_ih, b_hh, None, False, False, None, None, True, None, no_gates)
    with pytest.raises(RuntimeError, match="does not compute output 2"):
        torch.autograd.grad((Y.sum() + pre.pow(2).sum()), x, create_graph=True)
    # with the cell it reruns the pre-activation too
    Y, _, pre = fused.Elman.apply(x, h0, w_ih, w_hh, b_ih, b_hh, None, False, False, None, None, True, None,
                                  RNN_TANH_SPEC)
    dx, = torch.autograd.grad((Y.sum() + pre.pow(2).sum()), x, create_graph=True)
    plain, = torch.autograd.grad((Y.sum() + pre.pow(2).sum()), x)
    torch.testing.assert_close(dx, plain, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm-proj-bi-packed", "gru-bi-packed", "layernorm_lstm-options",
                                  "peephole_lstm-options", "rnn_tanh-recurrent_dropout-zoneout"])
def test_gradgradcheck_full(name: str, backend: str) -> None:
    """Every element of the second-derivative Jacobians (not random projections) on a few of the cases."""
    fn, inputs, _ = _problem(CASES[name], backend)
    assert gradgradcheck(fn, inputs)
