"""torch.func transforms and forward-mode AD through rnnlab's layers and cells, on every backend.

The compiled kernels' autograd Functions have no ``setup_context``, ``jvp`` or ``vmap`` rule, so under a transform
(or a ``forward_ad.dual_level``) a layer runs the reference loop (``rnnlab.kernels.transformed``), whatever backend
is the default or pinned. Checked here, in float64:

* Against torch.nn with copied weights, for every transform torch.nn 2.13 supports on the CPU for the six drop-in
  classes: ``grad`` of a ``functional_call`` (w.r.t. every parameter), ``jacrev``, ``jacfwd``, ``hessian``, ``jvp``
  and ``forward_ad`` dual tensors (tangents on the input and on every parameter), over the output and the final
  states. ``vmap``: torch.nn supports it for RNNCell and GRUCell (compared under vmap); its layers and LSTMCell
  have no batching rule and raise, where rnnlab's run, compared with torch.nn sample by sample.
* A PackedSequence: torch.nn's exception where torch.nn refuses (grad, jacrev, jacfwd), its tangents under
  forward_ad, torch.nn per sample under vmap.
* The train-mode masks (recurrent dropout, zoneout, DropConnect) under each of vmap's ``randomness`` modes.
* LayerNormLSTM (no torch.nn counterpart): each transform of the default (fused) backend against plain reverse-mode
  autograd outside any transform (``torch.autograd.grad`` through the compiled kernel, and
  ``torch.autograd.functional`` Jacobians, Hessian and jvp on the reference backend).
* Outside a transform the check is off and the default backend still runs the compiled kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.testing import assert_close

import rnnlab
from rnnlab.kernels import get_backend
from rnnlab.kernels import transformed as _transformed
from test_double_backward import _kernel_nodes

pytestmark = [
    pytest.mark.usefixtures("compiled_kernels"),  # the default backend must be the compiled one
    # torch's own forward-AD decompositions, loaded at the first make_dual, call torch.jit.script
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

F64 = torch.float64
T, B, I, H = 3, 2, 2, 3
LENGTHS = torch.tensor([1, 3])  # unequal and unsorted
BACKENDS = (None, "fused", "reference")  # None: the default backend (fused where the kernels are compiled)
Params = dict[str, Tensor]

# name -> (torch.nn class, rnnlab class, constructor arguments)
CASES: dict[str, tuple[type[nn.Module], type[nn.Module], dict]] = {
    "lstm-proj-bi": (nn.LSTM, rnnlab.LSTM, dict(proj_size=2, bidirectional=True)),
    "gru-2layer-bi": (nn.GRU, rnnlab.GRU, dict(num_layers=2, bidirectional=True)),
    "rnn_relu-batch_first": (nn.RNN, rnnlab.RNN, dict(nonlinearity="relu", batch_first=True)),
    "lstmcell": (nn.LSTMCell, rnnlab.LSTMCell, {}),
    "grucell": (nn.GRUCell, rnnlab.GRUCell, {}),
    "rnncell": (nn.RNNCell, rnnlab.RNNCell, {}),
}
TORCH_NN_VMAPS = ("grucell", "rnncell")  # the only drop-in classes torch.nn 2.13 runs under vmap
# the layers on every backend; the cells have none (plain torch ops)
RUNS = [pytest.param(name, backend, id=f"{name}-{backend or 'default'}")
        for name in CASES for backend in (BACKENDS if "cell" not in name else (None,))]


def _pair(name: str, backend: str | None) -> tuple[nn.Module, nn.Module]:
    """(torch.nn module, rnnlab module with a copy of its weights), float64."""
    theirs_cls, ours_cls, kw = CASES[name]
    torch.manual_seed(0)
    theirs = theirs_cls(I, H, **kw).to(F64)
    ours = ours_cls(I, H, **kw) if "cell" in name else ours_cls(I, H, **kw, backend=backend)
    ours = ours.to(F64)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _input(name: str, samples: int | None = None) -> Tensor:
    shape = (B, I) if "cell" in name else (T, B, I)
    torch.manual_seed(1)
    return torch.randn(shape if samples is None else (samples, *shape), dtype=F64)


def _flat(result: Tensor | tuple) -> Tensor:
    """The output and every final state of a layer (or a cell's states), as one vector."""
    parts: list[Tensor] = []
    stack = [result]
    while stack:
        item = stack.pop(0)
        if isinstance(item, tuple):
            stack = list(item) + stack
        else:
            parts.append(item.reshape(-1))
    return torch.cat(parts)


def _params(module: nn.Module) -> Params:
    return {k: v.detach() for k, v in module.named_parameters()}


def _run(module: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    return lambda p, x: _flat(functional_call(module, p, (x,)))


def _loss(module: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    # a non-linear scalar of everything the module returns, so the Hessian has off-diagonal terms
    return lambda p, x: _flat(functional_call(module, p, (x,))).pow(2).sum()


def _tangents(p: Params, x: Tensor) -> tuple[Params, Tensor]:
    torch.manual_seed(2)
    return {k: torch.randn_like(v) for k, v in p.items()}, torch.randn_like(x)


def _forward_ad(module: nn.Module, p: Params, x: Tensor, tp: Params, tx: Tensor) -> tuple[Tensor, Tensor]:
    with forward_ad.dual_level():
        dual_p = {k: forward_ad.make_dual(v, tp[k]) for k, v in p.items()}
        out = forward_ad.unpack_dual(_run(module)(dual_p, forward_ad.make_dual(x, tx)))
    assert out.tangent is not None, "forward-mode AD lost the tangent"
    return out.primal, out.tangent


# one entry per transform: (module, params, input) -> what the transform returns
TRANSFORMS: dict[str, Callable[[nn.Module, Params, Tensor], object]] = {
    "grad": lambda m, p, x: grad(_loss(m))(p, x),
    "grad-input": lambda m, p, x: grad(_loss(m), argnums=1)(p, x),
    "jacrev": lambda m, p, x: jacrev(_run(m), argnums=(0, 1))(p, x),
    "jacfwd": lambda m, p, x: jacfwd(_run(m), argnums=(0, 1))(p, x),
    "hessian": lambda m, p, x: hessian(_loss(m), argnums=1)(p, x),
    "jvp": lambda m, p, x: jvp(_run(m), (p, x), _tangents(p, x)),
    "forward_ad": lambda m, p, x: _forward_ad(m, p, x, *_tangents(p, x)),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(("name", "backend"), RUNS)
def test_transform_equals_torch_nn(name: str, transform: str, backend: str | None) -> None:
    theirs, ours = _pair(name, backend)
    x = _input(name)
    apply = TRANSFORMS[transform]
    assert_close(apply(ours, _params(ours), x), apply(theirs, _params(theirs), x))


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch.nn's cells: a slow batching fallback
@pytest.mark.parametrize(("name", "backend"), RUNS)
def test_vmap_equals_torch_nn(name: str, backend: str | None) -> None:
    """vmap over a leading dimension of inputs: torch.nn's own vmap where it has one, else torch.nn per sample."""
    theirs, ours = _pair(name, backend)
    xs = _input(name, samples=3)
    got = vmap(_run(ours), in_dims=(None, 0))(_params(ours), xs)
    if name in TORCH_NN_VMAPS:
        want = vmap(_run(theirs), in_dims=(None, 0))(_params(theirs), xs)
    else:
        with pytest.raises(RuntimeError, match="Batching rule not implemented"):  # so the sample loop is the truth
            vmap(_run(theirs), in_dims=(None, 0))(_params(theirs), xs)
        want = torch.stack([_run(theirs)(_params(theirs), x) for x in xs])
    assert_close(got, want)


def _packed(module: nn.Module, x: Tensor) -> PackedSequence:
    batch_first = getattr(module, "batch_first", False)
    return pack_padded_sequence(x.transpose(0, 1) if batch_first else x, LENGTHS, batch_first=batch_first,
                                enforce_sorted=False)


@pytest.mark.parametrize("transform", ("grad", "jacrev", "jacfwd", "forward_ad", "vmap"))
@pytest.mark.parametrize(("name", "backend"), [run for run in RUNS if "cell" not in run.values[0]])
def test_packed_sequence_under_a_transform_as_torch_nn(name: str, backend: str | None, transform: str) -> None:
    """A PackedSequence, packed outside the transform (pack_padded_sequence refuses to run under one); the
    transform over the parameters (and for forward_ad also the packed data). torch.nn 2.13 refuses grad, jacrev
    and jacfwd there (RuntimeError on a wrapped tensor): rnnlab raises the same exception. forward_ad: torch.nn
    runs and so does rnnlab, with the same tangents. vmap (over W_hh): torch.nn has no batching rule; rnnlab runs
    and equals torch.nn per sample."""
    theirs, ours = _pair(name, backend)
    x = _input(name)  # (T, B, I)

    def run(module: nn.Module, p: Params, tangent: Tensor | None = None) -> Tensor:
        packed = _packed(module, x)
        if tangent is not None:  # a dual PackedSequence.data (pack_padded_sequence has no forward-mode rule)
            packed = packed._replace(data=forward_ad.make_dual(packed.data, tangent))
        return _flat(functional_call(module, p, (packed,)))

    def apply(module: nn.Module) -> object:
        p = _params(module)
        if transform == "vmap":
            stacked = torch.stack([p["weight_hh_l0"] * scale for scale in (1.0, 0.5, -1.0)])
            return vmap(lambda w: run(module, {**p, "weight_hh_l0": w}))(stacked)
        if transform == "forward_ad":
            with forward_ad.dual_level():
                dual = {k: forward_ad.make_dual(v, torch.ones_like(v)) for k, v in p.items()}
                tangent = torch.linspace(-1, 1, int(LENGTHS.sum()) * I, dtype=F64).view(-1, I)
                return forward_ad.unpack_dual(run(module, dual, tangent)).tangent
        f = {"grad": lambda p: grad(lambda p: run(module, p).pow(2).sum())(p),
             "jacrev": jacrev(lambda p: run(module, p)), "jacfwd": jacfwd(lambda p: run(module, p))}[transform]
        return f(p)

    if transform in ("grad", "jacrev", "jacfwd"):
        with pytest.raises(RuntimeError) as refused:
            apply(theirs)
        with pytest.raises(RuntimeError, match=re.escape(str(refused.value).splitlines()[0])):
            apply(ours)
        return
    if transform == "vmap":
        with pytest.raises(RuntimeError, match="Batching rule not implemented"):
            apply(theirs)
        p = _params(theirs)
        want = torch.stack([run(theirs, {**p, "weight_hh_l0": p["weight_hh_l0"] * scale})
                            for scale in (1.0, 0.5, -1.0)])
    else:
        want = apply(theirs)
    assert_close(apply(ours), want)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # the plain mask path's lt_ under vmap
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b or "default")
def test_train_mode_masks_under_vmap(backend: str | None) -> None:
    """Recurrent dropout, zoneout and DropConnect draw their masks inside the forward. randomness="same": one
    mask for every sample, equal to an eager run from the same seed; "different": each sample its own (the
    samples of one repeated input differ); "error" (vmap's default): torch's error, as for torch.nn's dropout."""
    torch.manual_seed(0)
    layer = rnnlab.LSTM(I, H, recurrent_dropout=0.3, zoneout=0.2, weight_dropout=0.2, backend=backend).to(F64)
    x = _input("layer")
    run = lambda x: _flat(layer(x))  # noqa: E731
    torch.manual_seed(3)
    same = vmap(run, randomness="same")(x.expand(3, *x.shape))
    torch.manual_seed(3)
    assert_close(same, run(x).expand(3, -1))
    different = vmap(run, randomness="different")(x.expand(3, *x.shape))
    assert (different[0] - different[1]).abs().max() > 1e-3 and (different[1] - different[2]).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(run)(x.expand(3, *x.shape))


# -- a variant, against plain reverse-mode autograd outside any transform -------------------------------------------


def _layernorm_lstm(backend: str | None) -> nn.Module:
    torch.manual_seed(0)
    return rnnlab.LayerNormLSTM(I, H, bidirectional=True, backend=backend).to(F64)


def test_layernorm_lstm_transforms_equal_reverse_mode_autograd() -> None:
    fused_layer, reference = _layernorm_lstm(None), _layernorm_lstm("reference")
    p, x = _params(fused_layer), _input("layer")
    names = list(p)

    # grad: against the compiled kernel's hand-written backward (the kernel must really run)
    leaves = [v.clone().requires_grad_() for v in p.values()]
    loss = _loss(fused_layer)(dict(zip(names, leaves)), x)
    assert _kernel_nodes([loss]) == {"_LNLSTMBackward"}
    assert_close(grad(_loss(fused_layer))(p, x), dict(zip(names, torch.autograd.grad(loss, leaves))))

    # Jacobians, Hessian, jvp: against torch.autograd.functional (vjps, and double backward for hessian and jvp)
    # on the reference backend; w.r.t. the input and every parameter together
    def flat_run(x: Tensor, *ws: Tensor) -> Tensor:
        return _run(reference)(dict(zip(names, ws)), x)

    jac = torch.autograd.functional.jacobian(flat_run, (x, *p.values()))
    for transform in (jacrev, jacfwd):
        got_p, got_x = transform(_run(fused_layer), argnums=(0, 1))(p, x)
        assert_close(got_x, jac[0])
        assert_close(got_p, dict(zip(names, jac[1:])))
    assert_close(hessian(_loss(fused_layer), argnums=1)(p, x),
                 torch.autograd.functional.hessian(lambda x: _loss(reference)(p, x), x))
    tp, tx = _tangents(p, x)
    want = torch.autograd.functional.jvp(flat_run, (x, *p.values()), (tx, *tp.values()))
    assert_close(jvp(_run(fused_layer), (p, x), (tp, tx)), want)
    assert_close(_forward_ad(fused_layer, p, x, tp, tx), want)

    # vmap: against the default backend run sample by sample, outside the transform (the compiled kernel)
    xs = _input("layer", samples=3)
    assert_close(vmap(_run(fused_layer), in_dims=(None, 0))(p, xs),
                 torch.stack([_run(fused_layer)(p, x) for x in xs]))


# -- the check itself --------------------------------------------------------------------------------------------


def test_the_normal_path_keeps_the_compiled_kernel() -> None:
    """Outside a transform the check is off and the default backend runs the compiled kernel; inside each kind
    of transform it is on (else torch would have refused the kernel's Function above)."""
    assert get_backend() == "fused"
    assert not _transformed()
    _, layer = _pair("lstm-proj-bi", None)
    out = layer(_input("layer").requires_grad_())[0]
    assert _kernel_nodes([out]) == {"LSTMBackward"}
    seen: list[bool] = []

    def probe(x: Tensor) -> Tensor:
        seen.append(_transformed())
        return x.sin()

    x = torch.ones(2, dtype=F64)
    grad(lambda x: probe(x).sum())(x)
    vmap(probe)(x)
    jvp(probe, (x,), (x,))
    with forward_ad.dual_level():
        probe(forward_ad.make_dual(x, x))
    assert seen == [True] * 4
    assert not _transformed()
