"""LayerNormLSTM / LayerNormGRU on their compiled kernel against the reference loop, on the same weights.

The kernel (``backend="fused"``, csrc/layernorm.cpp + kernels/layernorm.py) must give the reference loop's outputs,
final states and every gradient (input, initial states, each parameter), with the layer-norm gains and shifts
away from their 1/0 init; with packed input, reversed (bidirectional) and stacked runs, recurrent dropout and
zoneout (the same seed before each forward draws the same masks), in eval mode and without autograd; and its
hand-written backward must pass gradcheck in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.cellspec import LAYER_NORM_GRU_SPEC, LAYER_NORM_LSTM_SPEC
from rnnlab.kernels.layernorm import ln_gru_kernel, ln_lstm_kernel
from rnnlab.sequence import SequenceRun
from _tolerance import assert_float32_runs_close, max_error, perturb_parameters_, rounding_perturbed

TOL = 1e-5
T, B, I, H = 7, 4, 5, 8
LENGTHS = [5, 7, 2, 6]
CELLS = {"lstm": rnnlab.LayerNormLSTM, "gru": rnnlab.LayerNormGRU}


pytestmark = pytest.mark.usefixtures("compiled_kernels")  # skip without a compiler; fail if the build fails


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch):
    """Forget which reference-loop notices were given, so that a declined run warns (and fails the tests that
    turn warnings into errors) even when an earlier test gave the same notice."""
    monkeypatch.setattr(rnnlab.kernels, "_warned", set())


def _pair(cell: str, dtype=torch.float32, **options):
    """The same randomised layer twice: on the kernel (``fused``) and on the reference loop."""
    torch.manual_seed(0)
    ours = CELLS[cell](I, H, dtype=dtype, backend="fused", **options)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.startswith("ln_") and "weight" in name:
                p.uniform_(0.5, 1.5)  # gains away from 1
            else:
                # weights, biases and the cell-norm shift away from 0. (With +-0.5 instead, one float32 case,
                # 2 bidirectional LayerNormLSTM layers with zoneout 0.3, misses the tolerance of _assert_same_run
                # by 2x: its float32 runs are badly conditioned, see there. +-0.3 and +-0.7 pass too.)
                p.uniform_(-0.4, 0.4)
    ref = CELLS[cell](I, H, dtype=dtype, backend="reference", **options)
    ref.load_state_dict(ours.state_dict())
    ref.train(ours.training)
    return ours, ref


def _initial(cell: str, layer, dtype=torch.float32):
    n = layer.num_layers * (2 if layer.bidirectional else 1)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, B, H, generator=g, dtype=dtype) * 0.5
    return (h, torch.randn(n, B, H, generator=g, dtype=dtype) * 0.5) if cell == "lstm" else (h,)


def _forward_backward(layer, cell: str, x: Tensor, hx: tuple, packed: bool, seed: int = 7):
    """Outputs, final states and the gradients of a loss touching every output, input, state and parameter.
    With ``return_all_states`` / ``return_gates`` the recorded ``h``, ``c`` and gates count as more "final
    states" (compared and differentiated the same way)."""
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(s.detach().clone().requires_grad_(True) for s in hx)
    inp = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False) if packed else x
    torch.manual_seed(seed)  # the same recurrent-dropout and zoneout masks on both paths
    out, hidden, *rest = layer(inp, hx if cell == "lstm" else hx[0])
    if packed:
        out, _ = pad_packed_sequence(out, total_length=T)
    finals = hidden if isinstance(hidden, tuple) else (hidden,)
    if rest:  # AllStates: h, c (LSTM), the gates by name
        states = rest[0]
        assert (states.c is not None) == (cell == "lstm") and (states.gates is not None) == layer.return_gates
        finals = (*finals, states.h, *([states.c] if states.c is not None else []),
                  *(states.gates[k] for k in sorted(states.gates or {})))
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * probe).sum() + sum((f * f).sum() * (k + 1) for k, f in enumerate(finals))
    names = ["x", *(f"hx{k}" for k in range(len(hx))), *(n for n, _ in layer.named_parameters())]
    grads = torch.autograd.grad(loss, [x, *hx, *layer.parameters()])
    return out.detach(), [f.detach() for f in finals], dict(zip(names, grads))


def _assert_close(a: Tensor, b: Tensor, what: str, tol: float = TOL, floor: float = 0.0) -> None:
    """Max abs error <= tol relative to the magnitude (>= 1), or <= ``floor`` when that is larger."""
    assert a.shape == b.shape, what
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err <= max(tol * scale, floor), f"{what}: max abs error {err:.3g} > max({tol} * {scale:.3g}, {floor:.3g})"


def _assert_same_run(cell: str, ours, ref, packed: bool, dtype=torch.float32, tol: float = TOL) -> None:
    """The kernel's run equals the reference loop's: outputs, final states, every gradient.

    float64 runs are compared at ``tol``. A float32 run is compared with the float64 run of the reference loop on
    the same weights, inputs and masks, as tests/_tolerance.py describes: its error must stay within a few times
    the float32 reference loop's own error (or the run's sensitivity to float32 rounding, which the layer norms
    make large on some cases), plus a floor scaled by the quantity's magnitude over the T * B summed rows.
    """
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(2), dtype=dtype)
    hx = _initial(cell, ours, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel covers the run: no reference-loop notice
        got = _forward_backward(ours, cell, x, hx, packed)
    want = _forward_backward(ref, cell, x, hx, packed)
    assert got[2].keys() == want[2].keys()
    if dtype != torch.float32:
        _assert_close(got[0], want[0], "output", tol)
        for k, (a, b) in enumerate(zip(got[1], want[1])):
            _assert_close(a, b, f"final state {k}", tol)
        for name in want[2]:
            _assert_close(got[2][name], want[2][name], f"d/d{name}", tol)
        return

    def flat(run: tuple) -> dict[str, Tensor]:
        return {"output": run[0], **{f"final state {k}": f for k, f in enumerate(run[1])},
                **{f"d/d{n}": g for n, g in run[2].items()}}

    def float64_run(g: torch.Generator | None) -> dict[str, Tensor]:
        """The reference loop in float64 (the same masks: _forward_backward seeds them), on the same inputs or,
        with a generator, on inputs and weights moved by one float32 rounding."""
        move = (lambda t: t.double()) if g is None else (lambda t: rounding_perturbed(t, g))
        layer = copy.deepcopy(ref).double()
        if g is not None:
            perturb_parameters_(layer, g)
        return flat(_forward_backward(layer, cell, move(x), tuple(move(h) for h in hx), packed))

    mine, theirs, truth = flat(got), flat(want), float64_run(None)
    # the float64 run is the same run (same masks): a different mask moves outputs by ~0.1, rounding by ~1e-6
    assert max_error(theirs["output"], truth["output"]) < 1e-3, "the float64 reference run must be the same run"
    assert_float32_runs_close(mine, theirs, truth, cell, terms=T * B, perturbed_run=float64_run)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("stack", ["1layer", "bidir-2layers"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel_equals_reference_loop(cell, bias, stack, packed, dtype):
    """float64 shows the maths is the same (to rounding); float32 that the fast path is as accurate."""
    options = dict(num_layers=2, bidirectional=True) if stack == "bidir-2layers" else {}
    ours, ref = _pair(cell, dtype=dtype, bias=bias, **options)
    _assert_same_run(cell, ours, ref, packed, dtype, tol=TOL if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("option", [dict(recurrent_dropout=0.4), dict(zoneout=0.3), dict(zoneout=(0.2, 0.5)),
                                    dict(recurrent_dropout=0.3, zoneout=0.25)],
                         ids=["recurrent_dropout", "zoneout", "zoneout_per_state", "both"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernel_with_recurrent_dropout_and_zoneout(cell, option, dtype):
    if cell == "gru" and isinstance(option.get("zoneout"), tuple):
        option = dict(zoneout=0.35)  # one state: one rate
    ours, ref = _pair(cell, dtype=dtype, num_layers=2, bidirectional=True, **option)
    _assert_same_run(cell, ours, ref, True, dtype, tol=TOL if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel_in_eval_mode_and_without_autograd(cell):
    """Eval mode: zoneout's keep tensors hold the rate (not 0/1), recurrent dropout is off; and the no-grad path
    (nothing saved) gives the same numbers."""
    ours, ref = _pair(cell, num_layers=2, bidirectional=True, zoneout=0.3, recurrent_dropout=0.3)
    ours.eval()
    ref.eval()
    _assert_same_run(cell, ours, ref, packed=True)
    x = torch.randn(T, B, I)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        got, got_h = ours(x)
    want, want_h = ref(x)
    _assert_close(got, want, "no-grad output")
    for a, b in zip(got_h if isinstance(got_h, tuple) else (got_h,), want_h if isinstance(want_h, tuple) else (want_h,)):
        _assert_close(a, b, "no-grad final state")


@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel_gradcheck_float64(cell):
    """The hand-written backward against finite differences: 2 bidirectional layers, packed input, recurrent
    dropout and zoneout (masks re-drawn from the same seed on every call), and the recorded cell states and gates
    as outputs too (their gradients join the backward loop)."""
    layer = CELLS[cell](3, 2, num_layers=2, bidirectional=True, dtype=torch.float64, backend="fused",
                        recurrent_dropout=0.3, zoneout=0.3, return_gates=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])

    def f(x, h0, *ps):
        torch.manual_seed(5)
        hx = (h0, torch.tanh(h0) * 0.7) if cell == "lstm" else h0
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hidden, states = torch.func.functional_call(layer, dict(zip(names, ps)), (packed, hx))
        recorded = ([states.c] if states.c is not None else []) + [states.gates[k] for k in sorted(states.gates)]
        return pad_packed_sequence(out)[0], *(hidden if isinstance(hidden, tuple) else (hidden,)), *recorded

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.autograd.gradcheck(f, (x, h0, *params))


@pytest.mark.parametrize("option", [dict(return_all_states=True), dict(return_gates=True),
                                    dict(return_gates=True, recurrent_dropout=0.3, zoneout=0.25)],
                         ids=["all_states", "gates", "gates+options"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernel_records_states_and_gates(cell, option, dtype):
    """return_all_states / return_gates on the kernel: the recorded h, c and gates and their gradients (the loss
    touches each) equal the reference loop's, with packed input, 2 bidirectional layers, dropout and zoneout."""
    ours, ref = _pair(cell, dtype=dtype, num_layers=2, bidirectional=True, **option)
    _assert_same_run(cell, ours, ref, True, dtype, tol=TOL if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel_records_without_autograd(cell):
    """The no-grad path with return_gates (the forward keeps the cell states and gates only for the caller)."""
    ours, ref = _pair(cell, return_gates=True, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours(x)
        want = ref(x)
    _assert_close(got[0], want[0], "no-grad output")
    _assert_close(got[2].h, want[2].h, "no-grad all-step h")
    if cell == "lstm":
        _assert_close(got[2].c, want[2].c, "no-grad all-step c")
    assert got[2].gates.keys() == want[2].gates.keys()
    for k in want[2].gates:
        _assert_close(got[2].gates[k], want[2].gates[k], f"no-grad gate {k}")


@pytest.mark.parametrize("cell", list(CELLS))
def test_uncovered_runs_fall_back_to_the_reference_loop(cell):
    """A dtype the kernel does not cover (bfloat16) is declined: the layer says so and the reference loop still
    gives the answer."""
    ours, ref = _pair(cell)
    ours, ref = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="kernel does not cover this run"):
        got = ours(x)
    want = ref(x)
    assert torch.equal(got[0], want[0])  # both are the reference loop


@pytest.mark.parametrize("change", ["float64_weight", "float64_state", "meta_mask", "meta_keep", "no_cell", "sink"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_kernel_declines_mixed_dtypes_other_devices_no_cell_and_a_sink(cell, change):
    """The one coverage rule of every compiled kernel (rnnlab.kernels.common.covers): every tensor of the run, not
    only the input, on the CPU in the input's dtype (a float64 gain with float32 inputs used to pass); and a run
    without its cell (the double backward's loop) or with a gradient sink (which these kernels do not feed) is
    declined too. The same run unchanged is taken."""
    kernel, spec = {"lstm": (ln_lstm_kernel, LAYER_NORM_LSTM_SPEC), "gru": (ln_gru_kernel, LAYER_NORM_GRU_SPEC)}[cell]
    layer, _ = _pair(cell)
    hx = _initial(cell, layer)
    state = tuple(s[0] for s in hx) if cell == "lstm" else hx[0][0]
    x = torch.randn(T, B, I)
    run = SequenceRun(x, state, layer.layer_params(0), keep=(torch.full((T, B, H), 0.3),), cell=spec)
    assert kernel(run) is not None
    changed = {
        "float64_weight": dataclasses.replace(run, p={**run.p, "ln_hh_weight": run.p["ln_hh_weight"].double()}),
        "float64_state": dataclasses.replace(run, state=tuple(s.double() for s in state) if cell == "lstm"
                                             else state.double()),
        "meta_mask": dataclasses.replace(run, h_mask=torch.ones(B, H, device="meta")),
        "meta_keep": dataclasses.replace(run, keep=(torch.full((T, B, H), 0.3, device="meta"),)),
        "no_cell": dataclasses.replace(run, cell=None),
        "sink": dataclasses.replace(run, sink=object()),
    }[change]
    assert kernel(changed) is None
