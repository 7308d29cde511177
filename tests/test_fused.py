"""torch's cells' kernels (rnnlab.kernels.fused) against the reference loop: outputs, final states and every
gradient, on the same weights.

The kernels run the compiled step loops (C++, built on first use); where those do not cover a run, a kernel
declines and the reference loop runs it (checked too). The hand-written backward is also checked by gradcheck in
float64. The options on the same kernels: tests/test_options_kernel.py. tests/test_layers.py separately runs the
whole torch.nn equivalence grid on every registered backend, "fused" included.
"""

from __future__ import annotations

import itertools
import shutil
import time

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnlab
from rnnlab.cellspec import SPECS
from rnnlab.kernels import _extension, common, fused, get_backend, reference, resolve_backend
from rnnlab.sequence import SequenceRun
from _tolerance import assert_float32_runs_close, rounding_perturbed

TOL = 1e-5
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
KERNELS = {"LSTM": fused.lstm_kernel, "GRU": fused.gru_kernel, "RNN_TANH": fused.rnn_tanh_kernel,
           "RNN_RELU": fused.rnn_relu_kernel}
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def kernel_run(mode, x, state, weights, *, reverse=False, lengths=None):
    """One layer-direction on ``mode``'s kernel, with torch's cell as the run's ``cell``; it must cover the run."""
    p = {name: w for name, w in zip(NAMES, weights) if w is not None}
    result = KERNELS[mode](SequenceRun(x, state, p, reverse, lengths, cell=SPECS[mode]))
    assert result is not None, "the kernel declined"
    return result[0], result[1]


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    """The compiled path must really be tested: with a compiler present, the build must succeed."""
    if shutil.which("c++") is not None and not _extension.extension_disabled():
        assert fused.compiled_available(), "fused C++ kernels failed to build (see the RuntimeWarning)"


def _weights(mode: str, I: int, H: int, P: int = 0, bias: bool = True, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    G, Hout = GATES[mode] * H, P or H
    rand = lambda *s: (torch.rand(*s, generator=g, dtype=dtype) * 2 - 1) * 0.5  # noqa: E731
    w = [rand(G, I), rand(G, Hout), rand(G) if bias else None, rand(G) if bias else None]
    if P:
        w.append(rand(P, H))
    return w


def _state(mode: str, B: int, H: int, P: int = 0, dtype=torch.float32):
    h = torch.randn(B, P or H, dtype=dtype) * 0.5
    return (h, torch.randn(B, H, dtype=dtype) * 0.5) if mode == "LSTM" else h


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _run_with_grads(run_layer, mode, x, state, weights, reverse, lengths, wanted):
    """Outputs, final state and d(loss)/d(each tensor in ``wanted``) for a loss that touches every output."""
    leaves = [t.detach().clone().requires_grad_(i in wanted) if t is not None else None
              for i, t in enumerate([x, *_flat(state), *weights])]
    n_state = len(_flat(state))
    xs, st, ws = leaves[0], leaves[1:1 + n_state], leaves[1 + n_state:]
    out, final = run_layer(mode, xs, tuple(st) if n_state == 2 else st[0], ws, reverse=reverse, lengths=lengths)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * probe).sum() + sum((f * f).sum() * (k + 1) for k, f in enumerate(_flat(final)))
    grads = torch.autograd.grad(loss, [leaves[i] for i in sorted(wanted)]) if wanted else []
    return out.detach(), [f.detach() for f in _flat(final)], list(grads)


def _assert_close(a, b, tol=TOL, what=""):
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol}"


def _assert_same_as_reference(mode, x, state, weights, reverse, lengths, wanted, what="") -> None:
    """The kernel against reference.run_layer (float32): outputs, final states and the wanted gradients,
    bounded against the reference loop's float64 run on the same values as tests/_tolerance.py describes."""
    def named(run: tuple) -> dict[str, torch.Tensor]:
        return {"outputs": run[0], **{f"final state {k}": f for k, f in enumerate(run[1])},
                **{f"gradient {i}": g for i, g in zip(sorted(wanted), run[2])}}

    def float64_run(g: torch.Generator | None) -> dict[str, torch.Tensor]:
        move = (lambda t: t.double()) if g is None else (lambda t: rounding_perturbed(t, g))
        state64 = tuple(move(s) for s in _flat(state))
        return named(_run_with_grads(reference.run_layer, mode, move(x), state64 if len(state64) == 2 else state64[0],
                                     [None if w is None else move(w) for w in weights], reverse, lengths, wanted))

    got = named(_run_with_grads(kernel_run, mode, x, state, weights, reverse, lengths, wanted))
    want = named(_run_with_grads(reference.run_layer, mode, x, state, weights, reverse, lengths, wanted))
    assert_float32_runs_close(got, want, float64_run(None), f"{mode} {what}", terms=x.size(0) * x.size(1),
                              perturbed_run=float64_run)


KERNEL_CASES = [
    pytest.param(mode, P, bias, reverse, use_lengths,
                 id=f"{mode}-P{P}-{'bias' if bias else 'nobias'}-{'rev' if reverse else 'fwd'}"
                    f"-{'lengths' if use_lengths else 'full'}")
    for mode in MODES
    for P in ([0, 3] if mode == "LSTM" else [0])
    for bias, reverse, use_lengths in itertools.product([True, False], [False, True], [False, True])
]


@pytest.mark.parametrize("mode,P,bias,reverse,use_lengths", KERNEL_CASES)
def test_fused_equals_reference_outputs_and_all_gradients(mode, P, bias, reverse, use_lengths):
    T, B, I, H = 7, 5, 4, 6
    x = torch.randn(T, B, I)
    state, weights = _state(mode, B, H, P), _weights(mode, I, H, P, bias)
    lengths = torch.tensor([7, 3, 1, 6, 7]) if use_lengths else None
    everything = set(range(1 + len(_flat(state)) + len(weights))) - {
        i for i, w in enumerate(weights, start=1 + len(_flat(state))) if w is None}
    _assert_same_as_reference(mode, x, state, weights, reverse, lengths, everything)
    got = _run_with_grads(kernel_run, mode, x, state, weights, reverse, lengths, set())
    if use_lengths:  # padded steps output exactly zero
        for b_, n in enumerate(lengths.tolist()):
            assert torch.all(got[0][n:, b_] == 0)


@pytest.mark.parametrize("mode", MODES)
def test_requires_grad_on_any_subset(mode):
    T, B, I, H = 5, 3, 4, 5
    P = 2 if mode == "LSTM" else 0
    x, state, weights = torch.randn(T, B, I), _state(mode, B, H, P), _weights(mode, I, H, P)
    n = 1 + len(_flat(state)) + len(weights)
    lengths = torch.tensor([5, 2, 4])
    subsets = [{0}, {1}, {n - 1}, {0, 2}, set(range(1, n)), set(range(n)), set()]
    for wanted in subsets:
        got = _run_with_grads(kernel_run, mode, x, state, weights, True, lengths, wanted)
        assert len(got[2]) == len(wanted)
        _assert_same_as_reference(mode, x, state, weights, True, lengths, wanted, f"grads wanted {wanted}")


def test_unwanted_gradients_are_not_computed():
    """Frozen weights get no .grad, and only the tensors that require grad receive one."""
    lstm = rnnlab.LSTM(4, 5, backend="fused")
    lstm.weight_ih_l0.requires_grad_(False)
    lstm.bias_hh_l0.requires_grad_(False)
    x = torch.randn(6, 2, 4)  # no grad
    out, _ = lstm(x)
    out.sum().backward()
    assert lstm.weight_ih_l0.grad is None and lstm.bias_hh_l0.grad is None
    assert lstm.weight_hh_l0.grad is not None and lstm.bias_ih_l0.grad is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse,use_lengths", [(False, False), (True, True), (False, True)])
def test_gradcheck_fused_float64(mode, reverse, use_lengths):
    """The hand-written backward against finite differences (every input, state and weight)."""
    T, B, I, H = 4, 3, 3, 3
    P = 2 if mode == "LSTM" else 0
    dt = torch.float64
    x = torch.randn(T, B, I, dtype=dt, requires_grad=True)
    state = [s.requires_grad_() for s in _flat(_state(mode, B, H, P, dt))]
    weights = [w.requires_grad_() for w in _weights(mode, I, H, P, dtype=dt)]
    lengths = torch.tensor([4, 1, 3]) if use_lengths else None

    def f(x, *rest):
        st = tuple(rest[:len(state)]) if mode == "LSTM" else rest[0]
        out, final = kernel_run(mode, x, st, list(rest[len(state):]), reverse=reverse, lengths=lengths)
        return (out, *_flat(final))

    assert torch.autograd.gradcheck(f, (x, *state, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_and_gradgradcheck_with_batch_slices(mode):
    """Ten sequences on two threads run as two slices of the batch (csrc/common.h's batch_slices), each thread its
    own rows through the whole loop: the backward (bias gradients summed over the slices) against finite
    differences, and the second derivatives."""
    T, B, I, H = 3, 10, 2, 3
    dt = torch.float64
    x = torch.randn(T, B, I, dtype=dt, requires_grad=True)
    state = [s.requires_grad_() for s in _flat(_state(mode, B, H, 0, dt))]
    weights = [w.requires_grad_() for w in _weights(mode, I, H, 0, dtype=dt)]
    lengths = torch.tensor([3, 1, 2, 3, 3, 2, 1, 3, 2, 3])

    def f(x, *rest):
        st = tuple(rest[:len(state)]) if mode == "LSTM" else rest[0]
        out, final = kernel_run(mode, x, st, list(rest[len(state):]), lengths=lengths)
        return (out, *_flat(final))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.autograd.gradcheck(f, (x, *state, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)
        assert torch.autograd.gradgradcheck(f, (x, *state, *weights), eps=1e-6, atol=1e-6, rtol=1e-4)
    finally:
        torch.set_num_threads(before)


LAYER_CONFIGS = {
    "2layers_bidir": {"num_layers": 2, "bidirectional": True},
    "3layers_nobias_batch_first": {"num_layers": 3, "bias": False, "batch_first": True},
    "proj_bidir": {"num_layers": 2, "bidirectional": True, "proj_size": 3},
}


@pytest.mark.parametrize("cls,cfg_name,packed", [
    pytest.param(cls, name, packed, id=f"{cls.__name__}-{name}-{'packed' if packed else 'padded'}")
    for cls in (rnnlab.LSTM, rnnlab.GRU, rnnlab.RNN) for name in LAYER_CONFIGS for packed in (False, True)
    if cls is rnnlab.LSTM or "proj_size" not in LAYER_CONFIGS[name]])
def test_layers_fused_equal_reference_with_all_gradients(cls, cfg_name, packed):
    """Stacks, both directions, no bias, batch_first, proj_size and packed input, through the public layers."""
    cfg = LAYER_CONFIGS[cfg_name]
    torch.manual_seed(3)
    I, H, T, B = 5, 7, 9, 4
    fused_layer = cls(I, H, **cfg, backend="fused")
    ref_layer = cls(I, H, **cfg, backend="reference")
    ref_layer.load_state_dict(fused_layer.state_dict())
    x = torch.randn(B, T, I) if cfg.get("batch_first") else torch.randn(T, B, I)
    lengths = torch.tensor([9, 4, 1, 7])
    results = []
    for layer in (fused_layer, ref_layer):
        xi = x.clone().requires_grad_()
        inp = pack_padded_sequence(xi, lengths, batch_first=bool(cfg.get("batch_first")),
                                   enforce_sorted=False) if packed else xi
        out, hidden = layer(inp)
        out = out.data if packed else out
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss = loss + sum((h * h).sum() for h in (hidden if isinstance(hidden, tuple) else (hidden,)))
        loss.backward()
        results.append((out.detach(), hidden, xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (o1, h1, gx1, gp1), (o2, h2, gx2, gp2) = results
    _assert_close(o1, o2, what="output")
    for a, b in zip(h1 if isinstance(h1, tuple) else (h1,), h2 if isinstance(h2, tuple) else (h2,)):
        _assert_close(a.detach(), b.detach(), what="final state")
    _assert_close(gx1, gx2, what="input gradient")
    for name in gp1:
        _assert_close(gp1[name], gp2[name], what=f"grad of {name}")


@pytest.mark.parametrize("mode", MODES)
def test_inference_path_equals_training_path(mode):
    """Under no_grad the kernel skips saving activations (the chunked inference ops); the numbers must not
    change."""
    x, state, weights = torch.randn(6, 3, 4), _state(mode, 3, 5), _weights(mode, 4, 5)
    lengths = torch.tensor([6, 2, 5])
    with torch.no_grad():
        y0, s0 = kernel_run(mode, x, state, weights, reverse=True, lengths=lengths)
    y1, s1 = kernel_run(mode, x.requires_grad_(), state, weights, reverse=True, lengths=lengths)
    assert y1.requires_grad
    _assert_close(y0, y1.detach(), tol=1e-6, what="outputs")
    for a, b in zip(_flat(s0), _flat(s1)):
        _assert_close(a, b.detach(), tol=1e-6, what="state")


@pytest.mark.parametrize("mode", MODES)
def test_a_run_the_loops_do_not_cover_is_declined(mode, monkeypatch):
    """A kernel declines (None) a dtype, a mix of dtypes, or no compiled extension; the reference loop is the only
    fallback."""
    x, state, weights = torch.randn(3, 2, 4), _state(mode, 2, 5), _weights(mode, 4, 5)
    p = dict(zip(NAMES, weights))
    kernel = KERNELS[mode]
    assert kernel(SequenceRun(x, state, p)) is not None
    assert kernel(SequenceRun(x.bfloat16(), state, p)) is None
    assert kernel(SequenceRun(x.double(), state, p)) is None  # float64 input, float32 weights and state
    monkeypatch.setattr(common, "compiled_available", lambda: False)
    assert kernel(SequenceRun(x, state, p)) is None


@pytest.mark.parametrize("mode", MODES)
def test_deprecated_run_layer(mode, monkeypatch):
    """``fused.run_layer`` stays for one release with a DeprecationWarning: the kernel's numbers and gradients, or,
    where the kernel declines (forced here), the reference loop's."""
    P = 2 if mode == "LSTM" else 0
    x, state, weights = torch.randn(5, 3, 4), _state(mode, 3, 5, P), _weights(mode, 4, 5, P)
    lengths = torch.tensor([5, 1, 3])
    wanted = set(range(1 + len(_flat(state)) + len(weights)))
    ref = _run_with_grads(reference.run_layer, mode, x, state, weights, True, lengths, wanted)
    for covered in (True, False):
        if not covered:
            monkeypatch.setattr(common, "compiled_available", lambda: False)
        with pytest.warns(DeprecationWarning, match=r"rnnlab\.kernels\.fused\.run_layer is deprecated; use "
                                                    r"rnnlab\.kernels\.run"):
            got = _run_with_grads(fused.run_layer, mode, x, state, weights, True, lengths, wanted)
        for a, b in zip([got[0], *got[1], *got[2]], [ref[0], *ref[1], *ref[2]]):
            _assert_close(a, b, tol=TOL if covered else 0.0)


def test_no_compiler_warns_once_and_falls_back(monkeypatch):
    """Without a compiler the loader says so in one line and returns False (the fallback is then used)."""

    monkeypatch.setenv("CXX", "no-such-compiler-rnnlab")
    monkeypatch.delenv("RNNLAB_FUSED_EXT", raising=False)
    loader = _extension.load_extension.__wrapped__  # bypass the process-wide cache
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler .*the layers run the reference loop") as record:
        assert loader() is False
    assert len(record) == 1 and "\n" not in str(record[0].message)


def test_float64_and_noncontiguous_inputs():
    """float64 runs compiled too; a transposed (non-contiguous) input and state give the same result."""
    mode = "GRU"
    x = torch.randn(3, 6, 4, dtype=torch.float64).transpose(0, 1)  # (T=6, B=3, I=4), non-contiguous
    h = torch.randn(5, 3, dtype=torch.float64).t()  # (B=3, H=5), non-contiguous
    weights = _weights(mode, 4, 5, dtype=torch.float64)
    y_ref, h_ref = reference.run_layer(mode, x, h, weights)
    y, hn = kernel_run(mode, x, h, weights)
    _assert_close(y, y_ref, tol=1e-12)
    _assert_close(hn, h_ref, tol=1e-12)


def test_long_sequence_backward_is_linear_in_T():
    """Indexing a saved tensor per step makes backward O(T^2); doubling T twice must stay near 4x, not 16x."""
    lstm = rnnlab.LSTM(8, 8, backend="fused")

    def cost(T: int) -> float:
        x = torch.randn(T, 1, 8, requires_grad=True)
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            out, _ = lstm(x)
            out.sum().backward()
            best = min(best, time.process_time() - t0)
        return best

    cost(500)  # warm-up
    short, long = cost(1000), cost(4000)
    assert long / short < 8.0, f"T=4000 took {long / short:.1f}x T=1000 (linear: 4x, quadratic: 16x)"
    x = torch.randn(4000, 2, 8)
    y_ref, _ = reference.run_layer("LSTM", x, (torch.zeros(2, 8), torch.zeros(2, 8)), lstm.layer_weights(0))
    y, _ = kernel_run("LSTM", x, (torch.zeros(2, 8), torch.zeros(2, 8)), lstm.layer_weights(0))
    _assert_close(y.detach(), y_ref.detach(), what="T=4000 outputs")


def test_workspace_hands_out_a_buffer_again_only_when_no_tensor_uses_it():
    """Buffers of 4 MiB or more (the gates, outputs, saved states and dG) are kept between calls; one is handed
    out again only when no tensor but the pool's own uses it, and never to another dtype or size."""
    ops = common.ops()
    n = 2 << 20  # floats: 8 MiB
    a = ops.workspace([n], torch.float32)
    b = ops.workspace([n], torch.float32)  # `a` is in use
    assert b.data_ptr() != a.data_ptr()
    kept, view = a.data_ptr(), a[1:]
    del a
    assert ops.workspace([n], torch.float64).data_ptr() != kept  # another dtype
    assert ops.workspace([n + 1], torch.float32).data_ptr() != kept  # another size
    assert ops.workspace([n], torch.float32).data_ptr() != kept  # a view of `a` still uses it
    del view
    again = ops.workspace([2, n // 2], torch.float32)
    assert again.data_ptr() == kept and again.shape == (2, n // 2) and again.is_contiguous()
    small = ops.workspace([4, 5], torch.float64)  # below 4 MiB: an ordinary tensor
    assert small.shape == (4, 5) and small.dtype == torch.float64


def test_release_workspaces_frees_the_unused_ones_and_leaves_the_used_ones_to_their_tensors():
    """rnnlab.kernels.release_workspaces empties the pool: it frees (and counts) the buffers no tensor uses; one
    still in use keeps its data, is not handed out again, and is freed by its tensor, not by a later release."""
    ops = common.ops()
    n = 2 << 20  # floats: 8 MiB
    rnnlab.kernels.release_workspaces()
    a = ops.workspace([n], torch.float32).fill_(1.0)
    b = ops.workspace([n], torch.float32)
    del b
    assert rnnlab.kernels.release_workspaces() == 4 * n  # b's buffer; a's is in use
    assert torch.equal(a, torch.ones(n))
    c = ops.workspace([n], torch.float32)
    assert c.data_ptr() != a.data_ptr()
    del a, c
    assert rnnlab.kernels.release_workspaces() == 4 * n  # c's buffer only: a's left the pool at the first release
    assert rnnlab.kernels.release_workspaces() == 0


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_an_input_gradient_comes_from_the_workspaces_and_one_the_caller_keeps_stays(mode):
    """dX = dG W_ih of 4 MiB or more is a workspace: an input's .grad that the caller keeps is not handed out again
    (a later backward leaves it as it was), and once the caller lets go of it the next dX takes its buffer. At
    T = B = 64, I = 256, H = 128 dX is the only buffer of 2^20 floats (the outputs are 2 MiB, the gates 8 MiB)."""
    T, B, I, H = 64, 64, 256, 128
    weights, state = _weights(mode, I, H), _state(mode, B, H)

    def input_grad():
        x = torch.randn(T, B, I, requires_grad=True)
        out, _ = kernel_run(mode, x, state, weights)
        out.sum().backward()
        return x.grad

    kept = input_grad()
    copy = kept.clone()
    other = input_grad()
    assert torch.equal(kept, copy) and other.data_ptr() != kept.data_ptr()
    freed = kept.data_ptr()
    del kept
    assert input_grad().data_ptr() == freed


@pytest.mark.parametrize("mode,H", [("LSTM", 64), ("GRU", 64), ("RNN_TANH", 128)])
def test_a_graph_kept_for_a_second_backward_keeps_its_workspaces(mode, H):
    """A graph kept alive (here for a later backward) holds its buffers (gates, outputs, saved states), so another
    run in between may not reuse them: the later backward gives exactly the gradients of a fresh run. At T=128,
    B=64 the gates (the Elman's outputs) are 4 MiB or more, the size from which buffers are pooled; an output
    kept by the caller is not overwritten either."""
    T, B, I = 128, 64, 4
    weights = _weights(mode, I, H)
    x, state = torch.randn(T, B, I), _state(mode, B, H)
    wanted = set(range(len(_flat(state)) + 1 + len(weights)))
    fresh = _run_with_grads(kernel_run, mode, x, state, weights, False, None, wanted)
    leaves = [t.detach().clone().requires_grad_() for t in [x, *_flat(state), *weights]]
    st = leaves[1:1 + len(_flat(state))]
    out, final = kernel_run(mode, leaves[0], tuple(st) if mode == "LSTM" else st[0], leaves[1 + len(st):])
    probe = torch.linspace(-1, 1, out.numel()).view_as(out)
    loss = (out * probe).sum() + sum((f * f).sum() * (k + 1) for k, f in enumerate(_flat(final)))
    with torch.inference_mode():  # the inference op's outputs come from the same pool
        kernel_run(mode, torch.randn(T, B, I), _state(mode, B, H), weights)
    _run_with_grads(kernel_run, mode, torch.randn(T, B, I), _state(mode, B, H), weights, False, None, wanted)
    assert torch.equal(out.detach(), fresh[0]), f"{mode} outputs changed by the runs in between"
    grads = torch.autograd.grad(loss, leaves)
    for k, (g, want) in enumerate(zip(grads, fresh[2])):
        assert torch.equal(g, want), f"{mode} gradient {k} changed by the runs in between"


@pytest.mark.parametrize("cls", [rnnlab.LayerNormLSTM, rnnlab.LayerNormGRU, rnnlab.PeepholeLSTM])
def test_the_variants_kernels_keep_the_workspaces_of_a_kept_graph(cls):
    """The variants' kernels (csrc/layernorm.cpp, csrc/peephole.cpp) take their big buffers from the same pool: a
    graph kept across an inference run and a training run still gives exactly a fresh run's gradients."""
    T, B, I, H = 128, 64, 4, 64
    torch.manual_seed(0)
    layer = cls(I, H, backend="fused")
    x = torch.randn(T, B, I)

    def loss_of(inputs: torch.Tensor) -> torch.Tensor:
        out, _ = layer(inputs)
        return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()

    params = list(layer.parameters())
    fresh = torch.autograd.grad(loss_of(x), params)
    kept = loss_of(x)
    with torch.inference_mode():
        layer(torch.randn(T, B, I))
    torch.autograd.grad(loss_of(torch.randn(T, B, I)), params)
    for k, (g, want) in enumerate(zip(torch.autograd.grad(kept, params), fresh)):
        assert torch.equal(g, want), f"{cls.__name__} gradient {k} changed by the runs in between"


def test_fused_is_the_default_and_reference_stays_selectable(monkeypatch):
    monkeypatch.delenv("RNNLAB_BACKEND", raising=False)
    rnnlab.set_backend(None)
    assert get_backend() == "fused"
    with pytest.warns(DeprecationWarning, match="resolve_backend is deprecated"):
        assert resolve_backend(None) is fused.run_layer
    with pytest.warns(DeprecationWarning, match="resolve_backend is deprecated"):
        assert resolve_backend("reference") is reference.run_layer
    monkeypatch.setenv("RNNLAB_BACKEND", "reference")
    assert get_backend() == "reference"
    rnnlab.set_backend("fused")
    try:
        assert get_backend() == "fused"
    finally:
        rnnlab.set_backend(None)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match=r"fused backend: unknown RNN mode 'LSTMX'; expected 'LSTM'"), \
            pytest.warns(DeprecationWarning):
        fused.run_layer("LSTMX", torch.randn(2, 1, 3), torch.zeros(1, 3), _weights("RNN_TANH", 3, 3))


def test_bench_config_errors_name_the_field():
    """`rnnlab bench` rejects bad input with one line naming the field, expected vs got (no benchmark is run)."""
    from rnnlab.bench import BenchConfig
    from rnnlab.cli import main
    from rnnlab.errors import UserError

    with pytest.raises(UserError, match=r"bench: cells must be a non-empty subset of \['lstm', 'gru', 'rnn'\], "
                                        r"got \['lstmx'\]"):
        BenchConfig(cells=("lstmx",)).validate()
    with pytest.raises(UserError, match=r"bench: rounds must be >= 1, got 0"):
        BenchConfig(rounds=0).validate()
    with pytest.raises(UserError, match=r"bench: backend must be one of .*, got 'nope'"):
        BenchConfig(backend="nope").validate()
    assert main(["bench", "--sizes", "S9", "--no-memory"]) == 2
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"bench: device 'cuda' requested but torch.cuda.is_available\(\) is False"):
            BenchConfig(device="cuda").validate()
