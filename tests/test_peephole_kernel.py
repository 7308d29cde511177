"""PeepholeLSTM's whole-sequence kernel (rnnlab/kernels/peephole.py, csrc/peephole.cpp) against the reference loop.

Every comparison runs the same layer (same weights, peepholes randomised away from zero) once with
``backend="fused"`` (the kernel) and once with ``backend="reference"`` (the Python loop over
``cellspec._peephole_step``), with the same seed before each forward so that the layer draws the same
recurrent-dropout and zoneout masks for both; outputs, final states and the gradient of every input, initial
state and parameter must agree. The hand-written backward is also checked by gradcheck in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.cellspec import PEEPHOLE_LSTM_SPEC
from rnnlab.kernels.peephole import peephole_kernel
from rnnlab.kernels.reference import recurrence
from rnnlab.sequence import SequenceRun
from _tolerance import assert_float32_runs_close, max_error, perturb_parameters_, rounding_perturbed

TOL = 1e-5
T, B, I, H = 7, 4, 5, 6
LENGTHS = torch.tensor([5, 7, 1, 3])


pytestmark = pytest.mark.usefixtures("compiled_kernels")  # skip without a compiler; fail if the build fails


@pytest.fixture(autouse=True)
def _no_reference_loop_warning(monkeypatch):
    """A declined run warns (once per process, hence the reset): every run here must stay on the kernel."""
    monkeypatch.setattr(rnnlab.kernels, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _layer(dtype=torch.float32, **options) -> rnnlab.PeepholeLSTM:
    torch.manual_seed(0)
    layer = rnnlab.PeepholeLSTM(I, H, dtype=dtype, **options)
    with torch.no_grad():  # larger than the default init, so that the peepholes matter
        for p in layer.parameters():
            p.uniform_(-0.5, 0.5)
    return layer


def _run(layer, backend: str, x, hx, lengths=None, seed: int = 7):
    """Outputs, final states and the gradient of x, h0, c0 and every parameter, for a loss touching them all
    (and the recorded cell states and gates, when the layer returns them)."""
    layer.backend = backend
    layer.zero_grad(set_to_none=True)
    xs = x.detach().clone().requires_grad_(True)
    hs = [s.detach().clone().requires_grad_(True) for s in hx]
    torch.manual_seed(seed)  # the same masks on both paths
    inp = xs if lengths is None else pack_padded_sequence(xs, lengths, enforce_sorted=False)
    res = layer(inp, tuple(hs))
    out, (hn, cn) = res[0], res[1]
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.size(0))[0]
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * probe).sum() + (hn * hn).sum() + 2 * (cn * cn).sum()
    if len(res) == 3:
        states = res[2]
        loss = loss + (states.c * torch.cos(torch.arange(states.c.numel(), dtype=x.dtype)).view_as(states.c)).sum()
        for k, (name, g) in enumerate(sorted((states.gates or {}).items())):
            loss = loss + (g * g).sum() * (k + 1)
    loss.backward()
    named = [("x", xs.grad), ("h0", hs[0].grad), ("c0", hs[1].grad),
             *((n, p.grad) for n, p in layer.named_parameters())]
    return [("output", out), ("h_n", hn), ("c_n", cn), *named]


def _assert_same(got, ref, tol=TOL):
    for (name, a), (_, b) in zip(got, ref, strict=True):
        assert a is not None and b is not None, name
        err = (a - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} (x{scale:.3g})"


def _assert_kernel_run(layer, x, hx, lengths=None) -> None:
    """The kernel's run (float32) against the reference loop's: every quantity of :func:`_run`, bounded against
    the reference loop's float64 run on the same weights, inputs and masks as tests/_tolerance.py describes."""
    got, want = dict(_run(layer, "fused", x, hx, lengths)), dict(_run(layer, "reference", x, hx, lengths))

    def float64_run(g: torch.Generator | None) -> dict[str, torch.Tensor]:
        move = (lambda t: t.double()) if g is None else (lambda t: rounding_perturbed(t, g))
        layer64 = copy.deepcopy(layer).double()
        if g is not None:
            perturb_parameters_(layer64, g)
        return dict(_run(layer64, "reference", move(x), [move(h) for h in hx], lengths))

    truth = float64_run(None)
    assert max_error(want["output"], truth["output"]) < 1e-3, "the float64 reference run must be the same run"
    assert_float32_runs_close(got, want, truth, "peephole", terms=x.size(0) * x.size(1), perturbed_run=float64_run)


def _inputs(layer, batch_first=False):
    D = layer.num_layers * layer.num_directions
    g = torch.Generator().manual_seed(3)
    dt = layer.weight_ih_l0.dtype
    x = torch.randn(B, T, I, generator=g, dtype=dt) if batch_first else torch.randn(T, B, I, generator=g, dtype=dt)
    return x, (torch.randn(D, B, H, generator=g, dtype=dt) * 0.5, torch.randn(D, B, H, generator=g, dtype=dt) * 0.5)


CASES = {
    "plain": {},
    "2layers_bidir": {"num_layers": 2, "bidirectional": True},
    "nobias_batch_first": {"bias": False, "batch_first": True},
    "recurrent_dropout": {"recurrent_dropout": 0.4, "num_layers": 2, "bidirectional": True},
    "zoneout": {"zoneout": 0.3, "bidirectional": True},
    "zoneout_c_only": {"zoneout": (0.0, 0.4)},
    "weight_dropout_forget_bias": {"weight_dropout": 0.3, "forget_bias": 1.0},
    "record_gates_all_options": {"return_gates": True, "recurrent_dropout": 0.3, "zoneout": (0.2, 0.1),
                                 "num_layers": 2, "bidirectional": True},
    "record_states": {"return_all_states": True, "bidirectional": True},
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_reference_loop(case, packed):
    layer = _layer(**CASES[case])
    x, hx = _inputs(layer, layer.batch_first)
    if packed and layer.batch_first:
        x = x.transpose(0, 1)  # pack_padded_sequence takes (T, B, I) here
        layer.batch_first = False
    lengths = LENGTHS if packed else None
    _assert_kernel_run(layer, x, hx, lengths)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_learned_initial_states_get_the_same_gradients(unbatched):
    """learn_init: the kernel's h0/c0 are broadcast views of parameters (h0_l0, c0_l0), which must get gradients."""
    layer = _layer(learn_init=True, bidirectional=True)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith(("h0_", "c0_")):
                p.uniform_(-0.5, 0.5)
    x = torch.randn(T, I) if unbatched else torch.randn(T, B, I)
    results = []
    for backend in ("fused", "reference"):
        layer.backend = backend
        layer.zero_grad(set_to_none=True)
        out, (hn, cn) = layer(x)
        (out.sin().sum() + (hn * cn).sum()).backward()
        results.append([("output", out), ("h_n", hn), ("c_n", cn),
                        *((n, p.grad) for n, p in layer.named_parameters())])
    _assert_same(*results)


def test_packed_padding_outputs_zero_and_states_stop_at_each_length():
    layer = _layer(num_layers=2, bidirectional=True)
    x, hx = _inputs(layer)
    got = dict(_run(layer, "fused", x, hx, LENGTHS))
    for b, n in enumerate(LENGTHS.tolist()):
        assert torch.all(got["output"][n:, b] == 0)
    # each row's final forward state is that of its own last step: the same as running that row alone, cut
    layer.backend = "fused"
    with torch.no_grad():
        for b, n in enumerate(LENGTHS.tolist()):
            _, (hn, cn) = layer(x[:n, b:b + 1], (hx[0][:, b:b + 1], hx[1][:, b:b + 1]))
            assert (hn[:, 0] - got["h_n"][:, b]).abs().max() <= TOL
            assert (cn[:, 0] - got["c_n"][:, b]).abs().max() <= TOL


@pytest.mark.parametrize("options", [{}, {"zoneout": 0.25, "bidirectional": True},
                                     {"return_gates": True, "zoneout": (0.1, 0.3)}],
                         ids=["plain", "zoneout_expectation", "record_gates"])
def test_eval_mode_inference_equals_reference_loop(options):
    """Eval mode, no gradient: the inference path (chunked projection, nothing saved; or the recording one)."""
    layer = _layer(num_layers=2, **options).eval()
    x, hx = _inputs(layer)
    results = []
    for backend in ("fused", "reference"):
        layer.backend = backend
        with torch.no_grad():
            results.append(layer(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), hx))
    (out, (h, c), *extra), (out_r, (h_r, c_r), *extra_r) = results
    assert (pad_packed_sequence(out)[0] - pad_packed_sequence(out_r)[0]).abs().max() <= TOL
    assert (h - h_r).abs().max() <= TOL and (c - c_r).abs().max() <= TOL
    if extra:
        assert (extra[0].c - extra_r[0].c).abs().max() <= TOL
        for k in "ifgo":
            assert (extra[0].gates[k] - extra_r[0].gates[k]).abs().max() <= TOL


def test_eval_mode_with_gradients_equals_reference_loop():
    layer = _layer(zoneout=0.2, recurrent_dropout=0.5, num_layers=2).eval()  # expectation zoneout, no dropout
    x, hx = _inputs(layer)
    _assert_kernel_run(layer, x, hx, LENGTHS)


@pytest.mark.parametrize("options,packed", [
    ({"num_layers": 2, "bidirectional": True}, True),
    ({"recurrent_dropout": 0.3, "zoneout": (0.3, 0.2), "bidirectional": True}, True),
    ({"return_gates": True, "zoneout": 0.2}, False),
], ids=["2layers_bidir_packed", "dropout_zoneout_packed", "record_gates"])
def test_gradcheck_float64_through_the_kernel(options, packed):
    """The hand-written backward against finite differences: x, h0, c0 and every parameter (w_c* included)."""
    torch.manual_seed(0)
    layer = rnnlab.PeepholeLSTM(3, 2, dtype=torch.float64, backend="fused", **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    D = layer.num_layers * layer.num_directions
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(D, 3, 2, dtype=torch.float64) * 0.5).requires_grad_(True)
    c0 = (torch.randn(D, 3, 2, dtype=torch.float64) * 0.5).requires_grad_(True)
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0, c0, *ps):
        torch.manual_seed(5)  # the same dropout and zoneout masks on every call
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        res = torch.func.functional_call(layer, dict(zip(names, ps)), (inp, (h0, c0)))
        out = pad_packed_sequence(res[0])[0] if packed else res[0]
        extra = []
        if len(res) == 3:
            extra = [res[2].c, *(res[2].gates[k] for k in "ifgo")]
        return out, *res[1], *extra

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_kernel_declines_what_it_does_not_cover():
    """Another dtype: the kernel returns None (the layer then runs the reference loop, with its warning)."""
    layer = _layer(dtype=torch.bfloat16)
    x = torch.randn(T, B, I, dtype=torch.bfloat16)
    state = (torch.zeros(B, H, dtype=torch.bfloat16), torch.zeros(B, H, dtype=torch.bfloat16))
    assert peephole_kernel(SequenceRun(x, state, layer.layer_params(0), cell=PEEPHOLE_LSTM_SPEC)) is None
    layer.backend = "fused"
    with pytest.warns(UserWarning, match="PeepholeLSTM's kernel does not cover this run"):
        layer(x)


def test_spec_kernel_equals_the_recurrence_of_the_spec_step():
    """The contract at its narrowest: the spec's kernel on one SequenceRun = recurrence over the spec's step."""
    layer = _layer()
    x, (h0, c0) = _inputs(layer)
    p = layer.layer_params(0)
    state = (h0[0], c0[0])
    for reverse in (False, True):
        with torch.no_grad():
            result = PEEPHOLE_LSTM_SPEC.kernel(SequenceRun(x, state, p, reverse, LENGTHS, cell=PEEPHOLE_LSTM_SPEC))
            ref_out, (ref_h, ref_c) = recurrence(lambda x_t, s: PEEPHOLE_LSTM_SPEC.step(x_t, s, p, None), x, state,
                                                 reverse=reverse, lengths=LENGTHS)
        assert result is not None
        out, (hn, cn), c_seq, gates = result
        assert c_seq is None and gates is None  # not asked for
        assert (out - ref_out).abs().max() <= TOL
        assert (hn - ref_h).abs().max() <= TOL and (cn - ref_c).abs().max() <= TOL


@pytest.mark.parametrize("change", ["float64_weight", "float64_keep", "meta_mask", "no_cell", "sink"])
def test_kernel_declines_mixed_dtypes_other_devices_no_cell_and_a_sink(change):
    """The one coverage rule of every compiled kernel (rnnlab.kernels.common.covers): every tensor of the run on
    the CPU in the input's dtype; and a run without its cell (the double backward's loop) or with a gradient sink
    (which this kernel does not feed) is declined too. The same run unchanged is taken."""
    layer = _layer(zoneout=0.3)
    x, (h0, c0) = _inputs(layer)
    keep = (torch.full((T, B, H), 0.3), torch.full((T, B, H), 0.3))
    run = SequenceRun(x, (h0[0], c0[0]), layer.layer_params(0), keep=keep, cell=PEEPHOLE_LSTM_SPEC)
    assert peephole_kernel(run) is not None
    changed = {
        "float64_weight": dataclasses.replace(run, p={**run.p, "weight_co": run.p["weight_co"].double()}),
        "float64_keep": dataclasses.replace(run, keep=(keep[0], keep[1].double())),
        "meta_mask": dataclasses.replace(run, h_mask=torch.ones(B, H, device="meta")),
        "no_cell": dataclasses.replace(run, cell=None),
        "sink": dataclasses.replace(run, sink=object()),  # type: ignore[arg-type]
    }[change]
    assert peephole_kernel(changed) is None
