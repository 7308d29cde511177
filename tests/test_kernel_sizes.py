"""The compiled kernels at the sizes users run, against the float64 reference loop and torch.nn.

Four code paths of the kernels depend on the size or the thread count, so the small-size tests elsewhere (one
thread) never reach them:

* **Few rows**: a step's product with at most ``kFewRows`` = 4 rows (a batch of 1-4 sequences; generation) is a
  matrix-vector product per row (``few_rows`` in csrc/common.h), read from panels of ``W`` packed once per sequence
  when it has two steps or more, split between the threads in blocks of 32 columns. The cases of
  :func:`test_few_rows` take batches 1-4 at H = 256 and 512 (and odd sizes for the loops' tails), with 1 and 2
  threads; every other case here has a batch of 5, so that it takes the GEMM below.
* **Batch slices**: with more than one thread a batch of at least 2 * ``kSliceRows`` = 10 sequences is split
  between the threads, each running its own rows through the whole loop (``batch_slices``); :func:`test_batch_slices`
  runs torch's three cells with 11 sequences on 2 threads, with lengths and every option.
* **MKL's packed GEMM** (``StepGemm<float>`` in csrc/common.h) multiplies a step's state by a recurrent weight of at
  least ``min_packed_weights()`` = 128K elements (``RNNLAB_FUSED_PACK_MIN``): an LSTM's ``W_hh`` from H = 182 on
  (the main job's H = 512), a GRU's from H = 209, an Elman ``W_hh`` from H = 363, an LSTM projection ``W_hr`` when
  ``P * H`` is that large, when the product has more than 64 rows or ``panel_gemm`` does not run it (an AVX-512
  build on an Intel CPU, or ``RNNLAB_PANEL_GEMM=0``, as in ``make test-isa``). Float32 only (float64 keeps plain
  dgemm).
* **Chunked inference** (``InputChunks`` in csrc/common.h, used by ``lstm_infer``, ``gru_infer``,
  ``peephole_infer``): without autograd the input projection is computed ``L = 2^18 / (B * G)`` steps at a time
  into one reused buffer, so a run with ``T * B * G > 2^18`` crosses chunk boundaries (forwards and in reverse,
  where the last chunk is the partial one).

Every case here checks its own sizes against those thresholds (:func:`_reaches`), so shrinking a case to save time
cannot silently leave the path untested. The float32 kernel is compared with the float64 answer (the reference
loop in float64, and for the drop-in classes torch.nn in float64 with copied weights, which must agree with it): its
error may be at most a small multiple of the float32 reference loop's own error, with a floor of a few float32 ulps
of the magnitudes involved (``tests/_tolerance.py``). Sizes are picked to just exceed the thresholds (the default run of
this file takes about 10 s on 2 cores); the main job's size and benchmark S3's are in a slow test.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from _tolerance import assert_float32_close, max_error

pytestmark = pytest.mark.usefixtures("compiled_kernels")  # skip without a compiler; fail if the build fails

CHUNK = 1 << 18                                  # InputChunks: T * B * G above this crosses a chunk boundary
PACK_MIN = int(os.environ.get("RNNLAB_FUSED_PACK_MIN", 128 * 1024))  # StepGemm<float>: packed from here on
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1, "LayerNormLSTM": 4, "PeepholeLSTM": 4}
T_INFER, T_TRAIN, B, I = 101, 24, 5, 32          # B = 5: one more than csrc/common.h's kFewRows
LENGTHS = [100, 57, 100, 13, 80]                 # for T_INFER; T_TRAIN cases use min(n, T_TRAIN)


# -- the float32 bound: the suite's one rule (tests/_tolerance.py) ----------------------------------------------------

def _err(a: Tensor, truth: Tensor) -> float:
    assert a.shape == truth.shape
    return max_error(a, truth)


def _assert_as_accurate(got: dict[str, Tensor], ref32: dict[str, Tensor], truth: dict[str, Tensor],
                        where: str) -> None:
    """Every float32 quantity of the kernel run is as close to the float64 truth as the float32 reference loop's
    (:func:`_tolerance.assert_float32_close`)."""
    assert got.keys() == ref32.keys() == truth.keys(), where
    for key, t in truth.items():
        ref_err = _err(ref32[key], t)
        assert ref_err < 1e-2 * max(1.0, t.abs().max().item()), f"{where}: {key}: float64 run is not the same run"
        assert_float32_close(got[key], ref32[key], t, f"{where}: {key}")


def _assert_same(a: dict[str, Tensor], b: dict[str, Tensor], where: str, rtol: float = 1e-9) -> None:
    """Two float64 runs of the same maths agree to float64 rounding (relative to each quantity's magnitude)."""
    assert a.keys() == b.keys(), where
    for key in a:
        scale = max(1.0, b[key].abs().max().item())
        assert _err(a[key], b[key]) <= rtol * scale, f"{where}: {key}: {_err(a[key], b[key]):.3g}"


# -- the runs --------------------------------------------------------------------------------------------------------

def _reaches(mode: str, H: int, T: int, batch: int, grad: bool, P: int = 0, partial: bool = True) -> None:
    """The case really runs the paths this file is about (the thresholds of csrc/common.h); ``partial``: the
    last inference chunk is a partial one (the first one processed in reverse)."""
    G = GATES[mode] * H
    if mode in ("LSTM", "GRU", "PeepholeLSTM") and not grad:
        steps = max(1, CHUNK // (batch * G))  # per chunk
        assert T > steps, "no chunk boundary crossed"
        assert T % steps != 0 or not partial, "no partial last chunk"
    if mode != "RNN_RELU" or H * H >= PACK_MIN:  # the one case below the packed size, on purpose
        assert G * (P or H) >= PACK_MIN, "the recurrent weight is below the packed-GEMM size"


def _randomised(module: torch.nn.Module, H: int) -> torch.nn.Module:
    """Parameters drawn from U(-2/sqrt(H), 2/sqrt(H)) (twice torch's init, so the recurrent term matters at every
    step without saturating the gates); LayerNorm gains from U(0.5, 1.5), those of the recurrent term's norm
    halved: with gains around 1 a LayerNormLSTM of H = 256 is chaotic (the float32 reference loop's own error grows
    from 2e-6 to 1e-4 over 100 steps, which would leave a bound too loose to catch anything small)."""
    g = torch.Generator().manual_seed(11)
    a = 2 / H ** 0.5
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_") and "weight" in name:
                p.copy_((torch.rand(p.shape, generator=g) + 0.5) * (0.5 if name.startswith("ln_hh") else 1.0))
            else:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * a)
    return module


def _inputs(module, T: int, batch: int, lengths: list[int] | None):
    n = module.num_layers * (2 if module.bidirectional else 1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, batch, module.input_size, generator=g, dtype=torch.float64)
    h_out = module.proj_size or module.hidden_size
    hx = [torch.randn(n, batch, h_out, generator=g, dtype=torch.float64) * 0.5]
    if module.spec.n_states == 2:
        hx.append(torch.randn(n, batch, module.hidden_size, generator=g, dtype=torch.float64) * 0.5)
    lens = None if lengths is None else torch.tensor([min(k, T) for k in lengths])
    return x, hx, lens


def _run(module, x: Tensor, hx: list[Tensor], lengths: Tensor | None, grad: bool, seed: int = 7
         ) -> dict[str, Tensor]:
    """Output and final states (and with ``grad`` the gradients of a loss touching all of them with respect to the
    input, the initial states and every parameter), in the module's dtype."""
    dtype = next(module.parameters()).dtype
    xs = x.to(dtype).requires_grad_(grad)
    hs = [h.to(dtype).requires_grad_(grad) for h in hx]
    inp = xs if lengths is None else pack_padded_sequence(xs, lengths, enforce_sorted=False)
    torch.manual_seed(seed)  # the same recurrent-dropout and zoneout masks in every run
    with torch.set_grad_enabled(grad):
        res = module(inp, tuple(hs) if len(hs) == 2 else hs[0])
    out, hidden = res[0], res[1]
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.size(0))[0]
    finals = list(hidden) if isinstance(hidden, tuple) else [hidden]
    result = {"output": out, **{f"final[{k}]": f for k, f in enumerate(finals)}}
    if grad:
        g = torch.Generator().manual_seed(5)
        loss = sum((v * torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
                   for v in result.values())
        names = ["x", *(f"hx[{k}]" for k in range(len(hs))), *(n for n, _ in module.named_parameters())]
        result.update(zip(names, torch.autograd.grad(loss, [xs, *hs, *module.parameters()])))
    return {k: v.detach() for k, v in result.items()}


def _kernel_run(module, *args) -> dict[str, Tensor]:
    """The fused run; a layer that declined the kernel and ran on the reference loop would warn: an error here."""
    rnnlab.kernels._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return _run(module, *args)


def _check(layer_cls, mode: str, H: int, grad: bool, *, lengths: list[int] | None = None, torch_cls=None,
           T: int | None = None, batch: int = B, input_size: int = I, partial: bool = True, sized: bool = True,
           **options) -> None:
    """The fused float32 layer against the float64 reference loop (and torch.nn, when ``torch_cls`` is given);
    ``sized``: the case must reach the packed GEMM and the chunk boundaries (:func:`_reaches`)."""
    T = T or (T_TRAIN if grad else T_INFER)
    if sized:
        _reaches(mode, H, T, batch, grad, options.get("proj_size", 0), partial)
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") else {}
    ours = _randomised(layer_cls(input_size, H, backend="fused", **extra, **options), H)
    ref = copy.deepcopy(ours)
    ref.backend = "reference"
    ref64 = copy.deepcopy(ref).double()
    x, hx, lens = _inputs(ours, T, batch, lengths)
    where = f"{layer_cls.__name__} H={H} {options} {'forward+backward' if grad else 'no-grad forward'}"
    truth = _run(ref64, x, hx, lens, grad)
    if torch_cls is not None:  # the float64 reference loop is torch.nn's answer at this size
        theirs = torch_cls(input_size, H, **extra, **options).double()
        theirs.load_state_dict(ref64.state_dict())
        _assert_same(truth, _run(theirs, x, hx, lens, grad), f"{where}: reference loop vs torch.nn")
    if not grad:  # chunked inference in float64 too: the same maths to float64 rounding
        _assert_same(_kernel_run(copy.deepcopy(ours).double(), x, hx, lens, grad), truth, f"{where} float64")
    _assert_as_accurate(_kernel_run(ours, x, hx, lens, grad), _run(ref, x, hx, lens, grad), truth, where)


# -- torch's cells ---------------------------------------------------------------------------------------------------

DROPIN = {"LSTM": (rnnlab.LSTM, torch.nn.LSTM), "GRU": (rnnlab.GRU, torch.nn.GRU),
          "RNN_TANH": (rnnlab.RNN, torch.nn.RNN), "RNN_RELU": (rnnlab.RNN, torch.nn.RNN)}
DROPIN_CASES = [
    # each cell at a packed size, the LSTM's options (bidirectional with lengths, projections, two layers)
    pytest.param("LSTM", 256, dict(bidirectional=True), LENGTHS, id="LSTM-H256-bidir-lengths"),
    pytest.param("LSTM", 512, dict(proj_size=256), None, id="LSTM-H512-proj256"),
    pytest.param("GRU", 256, dict(bidirectional=True), None, id="GRU-H256-bidir"),
    pytest.param("RNN_TANH", 512, {}, None, id="RNN_TANH-H512"),
    pytest.param("LSTM", 512, dict(bidirectional=True), LENGTHS, id="LSTM-H512-bidir-lengths"),
    pytest.param("LSTM", 256, dict(proj_size=200, num_layers=2), None, id="LSTM-H256-proj200-2layers"),
    pytest.param("GRU", 512, dict(bidirectional=True), LENGTHS, id="GRU-H512-bidir-lengths"),
    pytest.param("RNN_RELU", 256, dict(bidirectional=True), LENGTHS, id="RNN_RELU-H256-bidir-lengths"),
    pytest.param("RNN_RELU", 512, dict(bidirectional=True), None, id="RNN_RELU-H512-bidir"),
]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("mode,H,options,lengths", DROPIN_CASES)
def test_dropin_layers_at_size(mode, H, options, lengths, grad):
    """rnnlab.LSTM/GRU/RNN on the fused backend: outputs, final states and (``backward``) every gradient."""
    ours, theirs = DROPIN[mode]
    _check(ours, mode, H, grad, lengths=lengths, torch_cls=theirs, **options)


# -- few rows: batches of 1-4 -----------------------------------------------------------------------------------------

FEW_ROWS_CASES = [
    # (mode, H, input size, batch, steps): the main job's H with one sequence (generation's batch), H = 256 with
    # 2-4, one step (W read in place, no panels), and odd sizes: k % 8, n % 4 and n % 32 tails in both products
    pytest.param("LSTM", 512, 64, 1, 24, id="LSTM-H512-B1"),
    pytest.param("LSTM", 512, 64, 1, 1, id="LSTM-H512-B1-T1"),
    pytest.param("GRU", 256, 32, 2, 24, id="GRU-H256-B2"),
    pytest.param("RNN_TANH", 256, 32, 3, 24, id="RNN_TANH-H256-B3"),
    pytest.param("LSTM", 256, 32, 4, 24, id="LSTM-H256-B4"),
    pytest.param("LSTM", 45, 13, 3, 9, id="LSTM-H45-I13-B3"),
    pytest.param("RNN_RELU", 37, 13, 1, 9, id="RNN_RELU-H37-I13-B1"),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("mode,H,input_size,batch,T", FEW_ROWS_CASES)
def test_few_rows(mode, H, input_size, batch, T, grad, threads):
    """Batches of at most kFewRows sequences (csrc/common.h's few_rows, in panels from the second step on), with
    one thread and with two (each takes its own blocks of W's rows or columns)."""
    ours, theirs = DROPIN[mode]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(ours, mode, H, grad, torch_cls=theirs, T=T, batch=batch, input_size=input_size, sized=False)
    finally:
        torch.set_num_threads(before)


# -- panel_gemm's tiles of rows ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("batch", [8, 9, 13, 32])
def test_panel_tiles(batch, grad):
    """A step's product with 5-64 rows runs in tiles of 6 rows, the last two sharing 7-11 (csrc/common.h's
    tile_rows): 8 = 4+4, 9 = 5+4, 13 = 6+4+3, 32 = 6+6+6+6+4+4, with odd H for the column tails."""
    _check(rnnlab.LSTM, "LSTM", 45, grad, T=9, batch=batch, input_size=13, sized=False)


# -- batch slices: each thread runs its own sequences ---------------------------------------------------------------

SLICED_B = 11                                    # two slices of >= kSliceRows = 5 rows with 2 threads (5 and 6)
SLICED_LENGTHS = [24, 9, 24, 3, 17, 24, 1, 20, 24, 12, 6]
SLICED_CASES = [
    pytest.param(rnnlab.LSTM, "LSTM", 256, dict(bidirectional=True), SLICED_LENGTHS, SLICED_B,
                 id="LSTM-H256-bidir-lengths"),
    pytest.param(rnnlab.LSTM, "LSTM", 64, dict(proj_size=48, recurrent_dropout=0.3, zoneout=0.2), None, SLICED_B,
                 id="LSTM-H64-proj-rdrop-zoneout"),
    pytest.param(rnnlab.GRU, "GRU", 256, dict(bidirectional=True), SLICED_LENGTHS, SLICED_B,
                 id="GRU-H256-bidir-lengths"),
    pytest.param(rnnlab.GRU, "GRU", 64, dict(recurrent_dropout=0.3, zoneout=0.2), None, SLICED_B,
                 id="GRU-H64-rdrop-zoneout"),
    pytest.param(rnnlab.RNN, "RNN_TANH", 256, dict(bidirectional=True), SLICED_LENGTHS, SLICED_B,
                 id="RNN_TANH-H256-lengths"),
    pytest.param(rnnlab.RNN, "RNN_RELU", 64, dict(zoneout=0.2, return_gates=True), None, SLICED_B,
                 id="RNN_RELU-H64-zoneout"),
    # 7 sequences are one slice: the two threads split each step's panel_gemm by its panels of W instead
    pytest.param(rnnlab.LSTM, "LSTM", 256, {}, SLICED_LENGTHS[:7], 7, id="LSTM-H256-B7-panels-split"),
]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("layer_cls,mode,H,options,lengths,batch", SLICED_CASES)
def test_batch_slices(layer_cls, mode, H, options, lengths, batch, grad):
    """With two threads each runs its own slice of the batch's sequences through the whole loop (csrc/common.h's
    batch_slices): every option and lengths, and the bias gradients summed over the slices; a batch too small to
    slice splits each step's product between the threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check(layer_cls, mode, H, grad, lengths=lengths, T=24, batch=batch, sized=False, **options)
    finally:
        torch.set_num_threads(before)


# -- the options kernel and the variants' kernels --------------------------------------------------------------------

VARIANT_CASES = [
    pytest.param(rnnlab.LSTM, "LSTM", dict(recurrent_dropout=0.3, zoneout=0.2), id="LSTM-rdrop-zoneout"),
    pytest.param(rnnlab.GRU, "GRU", dict(recurrent_dropout=0.3, zoneout=0.2, bidirectional=True),
                 id="GRU-rdrop-zoneout-bidir"),
    pytest.param(rnnlab.LayerNormLSTM, "LayerNormLSTM", {}, id="LayerNormLSTM"),
    pytest.param(rnnlab.LayerNormLSTM, "LayerNormLSTM", dict(recurrent_dropout=0.3, zoneout=0.2, bidirectional=True),
                 id="LayerNormLSTM-rdrop-zoneout-bidir"),
    pytest.param(rnnlab.PeepholeLSTM, "PeepholeLSTM", dict(bidirectional=True), id="PeepholeLSTM-bidir"),
    pytest.param(rnnlab.PeepholeLSTM, "PeepholeLSTM", dict(zoneout=0.2), id="PeepholeLSTM-zoneout"),
]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("layer_cls,mode,options", VARIANT_CASES)
def test_kernels_with_options_and_variants_at_size(layer_cls, mode, options, grad):
    """Recurrent dropout and zoneout (csrc/fused.cpp's option loops), LayerNormLSTM (csrc/layernorm.cpp) and
    PeepholeLSTM (csrc/peephole.cpp, which has a chunked inference of its own) at H = 256, in training mode (the
    masks are drawn; the same seed gives every run the same ones)."""
    _check(layer_cls, mode, 256, grad, **options)


@pytest.mark.slow
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "backward"])
@pytest.mark.parametrize("T,batch,input_size,H", [(128, 32, 64, 512), (500, 1, 256, 256)], ids=["main-job", "S3"])
def test_lstm_at_the_sizes_users_run(T, batch, input_size, H, grad):
    """The main job's LSTM (configs/shakespeare.toml: H = 512, 32 streams of 128 characters, 64-wide embeddings;
    32 full inference chunks of 4 steps) and the benchmark size S3 (one long sequence: a packed GEMM with one row
    per step, two inference chunks)."""
    _check(rnnlab.LSTM, "LSTM", H, grad, torch_cls=torch.nn.LSTM, T=T, batch=batch, input_size=input_size,
           partial=False)  # the main job's 128 steps are 32 whole chunks
