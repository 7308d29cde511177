"""The layer options on the compiled loops (rnnlab.kernels.fused) against the reference loop of the cell's step.

Recurrent dropout, zoneout and the all-step outputs run on LSTM_SPEC/GRU_SPEC/RNN_*_SPEC's ``kernel`` when the
backend is not "reference". Each test runs one module twice, on the fused backend and on the reference loop, with
the same weights and the same seed before each forward (the layer draws the masks, so both get the same ones), and
compares outputs, final states, all-step states and gates, and the gradient of every parameter, input and initial
state. The hand-written backward is also checked by gradcheck in float64 with fixed masks, and the per-step
gradients of a kernel's run with a ``sink`` against the reference loop's retained ``.grad``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.cellspec import SPECS
from rnnlab.diagnostics import record
from rnnlab.kernels import common, fused
from rnnlab.sequence import SequenceRun
from _tolerance import assert_float32_runs_close, max_error, perturb_parameters_, rounding_perturbed

TOL = 1e-5
T, B, I, H, P = 7, 4, 5, 6, 3
LENGTHS = torch.tensor([7, 3, 5, 1])
CLASSES = {"LSTM": rnnlab.LSTM, "GRU": rnnlab.GRU, "RNN_TANH": rnnlab.RNN, "RNN_RELU": rnnlab.RNN}
KERNELS = {"LSTM": "lstm_kernel", "GRU": "gru_kernel", "RNN_TANH": "rnn_tanh_kernel", "RNN_RELU": "rnn_relu_kernel"}
OPTIONS = {
    "recurrent_dropout": {"recurrent_dropout": 0.4},
    "zoneout": {"zoneout": 0.3},
    "all": {"recurrent_dropout": 0.3, "zoneout": 0.25, "return_gates": True},
    "states": {"return_all_states": True},
}


pytestmark = pytest.mark.usefixtures("compiled_kernels")  # skip without a compiler; fail if the build fails


def _make(mode: str, options_: dict, dtype=torch.float32, **kw) -> rnnlab.RNNBase:
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    torch.manual_seed(0)
    module = CLASSES[mode](I, H, backend="fused", dtype=dtype, **extra, **options_, **kw)
    with torch.no_grad():
        for p in module.parameters():  # larger than the default init, so that every term matters
            p.uniform_(-0.6, 0.6)
    return module


def _flat(hidden) -> list[torch.Tensor]:
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def _run(module, x, hx, lengths, seed: int):
    """Every output and the gradients of a loss that touches all of them, for one module."""
    x = x.detach().clone().requires_grad_(True)
    hx = [s.detach().clone().requires_grad_(True) for s in hx]
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(seed)
    result = module(inp, (tuple(hx) if len(hx) == 2 else hx[0]) if hx else None)
    out, hidden = result[0], result[1]
    if lengths is not None:
        out = pad_packed_sequence(out)[0]
    outs = [out, *_flat(hidden)]
    if len(result) == 3:
        states = result[2]
        outs += [states.h] + ([states.c] if states.c is not None else [])
        outs += [states.gates[k] for k in sorted(states.gates)] if states.gates else []
    g = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    wrt = [x, *hx, *module.parameters()]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return outs, grads


@contextlib.contextmanager
def _kernel_calls(module):
    """Count the calls of the module's kernel and the runs it covered (its spec's kernel, wrapped meanwhile)."""
    calls = {"called": 0, "covered": 0}
    spec, kernel = module.spec, module.spec.kernel
    assert kernel is getattr(fused, KERNELS[spec.name])

    def counting(run):
        result = kernel(run)
        calls["called"] += 1
        calls["covered"] += result is not None
        return result

    module.spec = dataclasses.replace(spec, kernel=counting)
    try:
        yield calls
    finally:
        module.spec = spec


def _compare(module, x, hx, lengths=None, seed=3):
    """The module on the fused backend (its kernel) against a copy on the reference loop; nothing may warn."""
    ref = copy.deepcopy(module)
    ref.backend = "reference"
    with warnings.catch_warnings(), _kernel_calls(module) as calls:
        warnings.simplefilter("error")  # the kernel covers the run: no "runs on the reference loop" warning
        outs, grads = _run(module, x, hx, lengths, seed)
    # every layer-direction ran on the kernel, and it covered the run
    assert calls["called"] == calls["covered"] == module.num_layers * module.num_directions, calls
    names = ["x", *[f"hx[{k}]" for k in range(len(hx))], *[n for n, _ in module.named_parameters()]]

    def named(run: tuple) -> dict[str, torch.Tensor]:
        outs, grads = run
        for name, g in zip(names, grads):
            assert g is not None, name
        return {**{f"output {k}": o for k, o in enumerate(outs)}, **dict(zip(names, grads))}

    got, want = named((outs, grads)), named(_run(ref, x, hx, lengths, seed))
    if x.dtype != torch.float32:
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=TOL, atol=TOL, msg=key)
        return

    def float64_run(g: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The reference loop in float64 (the same masks: _run seeds them) on the same values or, with g, on
        values moved by one float32 rounding (tests/_tolerance.py)."""
        move = (lambda t: t.double()) if g is None else (lambda t: rounding_perturbed(t, g))
        ref64 = copy.deepcopy(ref).double()
        if g is not None:
            perturb_parameters_(ref64, g)
        return named(_run(ref64, move(x), [move(h) for h in hx], lengths, seed))

    truth = float64_run(None)
    assert max_error(want["output 0"], truth["output 0"]) < 1e-3, "the float64 reference run must be the same run"
    assert_float32_runs_close(got, want, truth, f"{module.mode}", terms=x.size(0) * x.size(1),
                              perturbed_run=float64_run)


def _inputs(mode, layers=1, directions=1, proj=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=g, dtype=dtype)
    n = layers * directions
    hx = [torch.randn(n, B, proj or H, generator=g, dtype=dtype) * 0.5]
    if mode == "LSTM":
        hx.append(torch.randn(n, B, H, generator=g, dtype=dtype) * 0.5)
    return x, hx


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("mode", list(CLASSES))
def test_kernel_equals_reference_loop(mode, opt):
    module = _make(mode, OPTIONS[opt])
    _compare(module, *_inputs(mode))


@pytest.mark.parametrize("opt", ["all", "zoneout"])
def test_lstm_projection(opt):
    module = _make("LSTM", {**OPTIONS[opt], "zoneout": (0.3, 0.2)}, proj_size=P)
    _compare(module, *_inputs("LSTM", proj=P))


@pytest.mark.parametrize("mode", list(CLASSES))
def test_packed_bidirectional_two_layers(mode):
    kw = {"proj_size": P} if mode == "LSTM" else {}
    module = _make(mode, OPTIONS["all"], num_layers=2, bidirectional=True, dropout=0.2, **kw)
    _compare(module, *_inputs(mode, 2, 2, kw.get("proj_size", 0)), lengths=LENGTHS)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_with_the_weight_and_init_options(mode):
    """DropConnect (a non-leaf W_hh) and learnable initial states (expanded over the batch) next to the options."""
    module = _make(mode, {**OPTIONS["all"], "weight_dropout": 0.3, "learn_init": True},
                   num_layers=2, bidirectional=True)  # _make draws every parameter, h0/c0 included, away from 0
    _compare(module, _inputs(mode)[0], [], lengths=LENGTHS)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_eval_mode_zoneout_expectation(mode):
    """Eval mode: recurrent dropout is off and zoneout blends with the rate itself (fractional keep)."""
    module = _make(mode, OPTIONS["all"], num_layers=2, bidirectional=True).eval()
    x, hx = _inputs(mode, 2, 2)
    _compare(module, x, hx, lengths=LENGTHS)
    ref = copy.deepcopy(module)
    ref.backend = "reference"
    with torch.no_grad():  # inference: the forward without saving
        got, want = module(x, tuple(hx) if mode == "LSTM" else hx[0]), ref(x, tuple(hx) if mode == "LSTM" else hx[0])
    torch.testing.assert_close(got[0], want[0], rtol=TOL, atol=TOL)
    for a, b in zip(_flat(got[1]), _flat(want[1])):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    for k in sorted(want[2].gates):
        torch.testing.assert_close(got[2].gates[k], want[2].gates[k], rtol=TOL, atol=TOL)


def test_training_inference_without_grad_equals_reference():
    module = _make("LSTM", OPTIONS["all"], proj_size=P)
    ref = copy.deepcopy(module)
    ref.backend = "reference"
    x, hx = _inputs("LSTM", proj=P)
    with torch.no_grad():
        torch.manual_seed(4)
        got = module(x, tuple(hx))
        torch.manual_seed(4)
        want = ref(x, tuple(hx))
    torch.testing.assert_close(got[0], want[0], rtol=TOL, atol=TOL)
    torch.testing.assert_close(got[2].c, want[2].c, rtol=TOL, atol=TOL)


def test_declined_runs(monkeypatch):
    """The kernels decline what the compiled loops do not take (another dtype, mixed dtypes, no extension); the
    layer then warns once and runs the reference loop."""
    module = _make("GRU", OPTIONS["zoneout"])
    p = dict(module.layer_params(0))
    x, h = torch.randn(2, 1, I), torch.zeros(1, H)
    assert fused.gru_kernel(SequenceRun(x, h, p)) is not None
    assert fused.gru_kernel(SequenceRun(x.bfloat16(), h.bfloat16(), {k: v.bfloat16() for k, v in p.items()})) \
        is None
    assert fused.gru_kernel(SequenceRun(x.double(), h.double(), p)) is None  # float64 input, float32 weights
    monkeypatch.setattr(rnnlab.kernels, "_warned", set())
    monkeypatch.setattr(common, "compiled_available", lambda: False)
    assert fused.gru_kernel(SequenceRun(x, h, p)) is None
    ref = copy.deepcopy(module)
    ref.backend = "reference"
    x = torch.randn(T, B, I)
    with pytest.warns(UserWarning, match=r"GRU's kernel does not cover this run"):
        torch.manual_seed(1)
        out = module(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(out, ref(x)[0], rtol=0, atol=0)  # the same reference loop


# -- gradcheck in float64 through the kernel, with fixed masks ---------------------------------------------------

@pytest.mark.parametrize("mode", list(CLASSES))
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(mode, reverse):
    dtype = torch.float64
    Tn, Bn, In, Hn = 4, 3, 2, 3
    Pn = 2 if mode == "LSTM" else 0
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    module = CLASSES[mode](In, Hn, dtype=dtype, **extra, **({"proj_size": Pn} if Pn else {}))
    names = list(module.layer_params(0))
    g = torch.Generator().manual_seed(7)
    params = [torch.rand(p.shape, generator=g, dtype=dtype).sub(0.5).requires_grad_(True)
              for p in module.layer_params(0).values()]
    x = torch.randn(Tn, Bn, In, generator=g, dtype=dtype, requires_grad=True)
    Hout = Pn or Hn
    state = [torch.randn(Bn, Hout, generator=g, dtype=dtype, requires_grad=True)]
    keep = [(torch.rand(Tn, Bn, Hout, generator=g) < 0.4).to(dtype)]
    if mode == "LSTM":
        state.append(torch.randn(Bn, Hn, generator=g, dtype=dtype, requires_grad=True))
        keep.append(torch.rand(Tn, Bn, Hn, generator=g, dtype=dtype))  # fractional: the eval-mode blend
    h_mask = (torch.rand(Bn, Hout, generator=g) < 0.7).to(dtype) / 0.7
    lengths = torch.tensor([4, 2, 3])
    valid = (torch.arange(Tn).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1).to(dtype)  # (T, B, 1)
    kernel = getattr(fused, KERNELS[mode])

    def f(x, *tensors):
        st = tensors[:len(state)]
        p = dict(zip(names, tensors[len(state):]))
        run = SequenceRun(x, tuple(st) if len(st) == 2 else st[0], p, reverse, lengths, h_mask, tuple(keep),
                          True, True, cell=SPECS[mode])
        result = kernel(run)
        assert result is not None
        out, final, c, gates = result
        # recorded values at padding steps are arbitrary by the kernel contract: the layer zeroes them, so do we
        recorded = ([c] if c is not None else []) + [gates[k] for k in sorted(gates)]
        return out, *_flat(final), *[r * valid for r in recorded]

    assert torch.autograd.gradcheck(f, (x, *state, *params))


# -- the per-step gradient sink of the kernels ---------------------------------------------------------------------

class _Sink:
    def __init__(self) -> None:
        self.cells: torch.Tensor | None = None
        self.dh: torch.Tensor | None = None
        self.dc: torch.Tensor | None = None

    def forward(self, cells, gates=None):
        self.cells, self.gates = cells, gates

    def backward(self, dh, dc):
        self.dh, self.dc = dh, dc


@pytest.mark.parametrize("mode", list(CLASSES))
def test_sink_gradients_equal_autograd(mode):
    """dL/dh_t (and dL/dc_t) of every step from the compiled backward = the reference loop's retained .grad."""
    kw = {"proj_size": P} if mode == "LSTM" else {}
    module = _make(mode, {}, bidirectional=True, **kw)
    x, hx = _inputs(mode, 1, 2, kw.get("proj_size", 0))
    g = torch.Generator().manual_seed(9)
    probe = torch.randn(T, B, 2 * (P if kw else H), generator=g)

    def loss_of(out, hidden):
        return (out * probe).sum() + sum(((s * s).sum() * (k + 1)) for k, s in enumerate(_flat(hidden)))

    # the reference loop with every step's new state retained (rnnlab.diagnostics' recording)
    with record(module, retain_grad=True) as rec:
        out, hidden = module(pack_padded_sequence(x, LENGTHS, enforce_sorted=False),
                             tuple(hx) if mode == "LSTM" else hx[0])
    loss_of(pad_packed_sequence(out)[0], hidden).backward()

    outs, finals, sinks = [], [], []
    for direction in range(2):
        sink = _Sink()
        state = tuple(s[direction] for s in hx) if mode == "LSTM" else hx[0][direction]
        seq = SequenceRun(x, state, module.layer_params(0, direction), direction == 1, LENGTHS, sink=sink,
                          cell=SPECS[mode])
        result = getattr(fused, KERNELS[mode])(seq)
        assert result is not None
        Y, final = result[0], result[1]
        outs.append(Y)
        finals.append(final)
        sinks.append(sink)
    hidden = (tuple(torch.stack([f[k] for f in finals]) for k in range(2)) if mode == "LSTM"
              else torch.stack(finals))
    loss_of(torch.cat(outs, dim=2), hidden).backward()

    valid = (torch.arange(T).unsqueeze(1) < LENGTHS.unsqueeze(0)).unsqueeze(-1)  # (T, B, 1)
    for direction, (trace, sink) in enumerate(zip(rec.traces, sinks)):
        assert sink.dh is not None
        want_h = torch.stack([s[0].grad if mode == "LSTM" else s.grad for s in trace.states])  # (T, B, H_out)
        torch.testing.assert_close(sink.dh, want_h * valid, rtol=TOL, atol=TOL)
        assert sink.dh[~valid.expand_as(sink.dh)].abs().max() == 0  # zeros at padding steps
        if mode == "LSTM":
            want_c = torch.stack([s[1].grad for s in trace.states])
            torch.testing.assert_close(sink.dc, want_c * valid, rtol=TOL, atol=TOL)
            cells = torch.stack([s[1] for s in trace.states])
            assert sink.cells is not None
            torch.testing.assert_close(sink.cells * valid, cells.detach() * valid, rtol=TOL, atol=TOL)
        else:
            assert sink.dc is None and sink.cells is None
