"""torch.nn is the specification: every check of torch.nn's recurrent modules, run on torch.nn and on rnnlab.

Where the cases come from (torch 2.13):

* every ``raise`` and ``warnings.warn`` of ``torch/nn/modules/rnn.py``: ``RNNBase.__init__`` (mode, dropout, bias,
  batch_first, input_size, hidden_size, num_layers, proj_size), ``check_input`` (dtype, input size),
  ``check_hidden_size`` (via ``get_expected_hidden_size`` / ``get_expected_cell_size``, projections included), the
  forwards of RNN/LSTM/GRU (input dimensions, batched/unbatched state dimensions, RNN/GRU refusing ``proj_size``,
  RNN's nonlinearity) and of RNNCell/LSTMCell/GRUCell (input and state dimensions), plus the C++ checks those
  forwards reach (empty sequence, the cells' input size, batch and hidden size, the LSTM's two states, the matrix
  product's dtype check) and torch.empty's refusal of a negative cell size;
* PyTorch's module tests, ``torch/testing/_internal/common_modules.py``: the error inputs
  ``module_error_inputs_torch_nn_RNN_GRU`` (also LSTM's), ``..._RNN_GRU_Cell``, ``..._LSTMCell`` and the inputs
  ``module_inputs_torch_nn_RNN_GRU`` (with packed sequences), ``..._LSTM``, ``..._RNN_GRU_Cell``, ``..._LSTMCell``;
* the RNN tests of PyTorch's ``test/test_nn.py``: ``test_rnn_args_check``, ``test_projections_lstm_args_check``,
  ``test_RNN_cell_no_broadcasting``, ``test_RNN_input_size_zero`` (the empty batch),
  ``test_RNN_cell_forward_zero_hidden_size``, ``test_RNN_dropout_warning``, ``test_projections_errors_on_gru_and_rnn``,
  ``test_RNN_nonlinearity``.

CUDA-only checks (device, cuDNN's flat weights and their non-contiguous-weights warning) do not apply to the CPU.

Each case runs on torch.nn and on rnnlab (layers on both backends). Where torch raises, rnnlab raises the same class at
the same stage (construction or forward), with torch's key phrase (a regex, checked against torch's own message too)
in the message. Where torch warns, rnnlab gives the same warning, and none where torch gives none. Where torch accepts,
rnnlab returns the same outputs and gradients (float64, weights copied with ``load_state_dict``; inputs, given states
and every parameter).

The variants (LayerNormLSTM, PeepholeLSTM, LayerNormGRU and their cells) have no torch counterpart: on every error case
of their torch-layout sibling they raise what the sibling raises, and on empty inputs they return what it returns.

:data:`DEVIATIONS` lists the few inputs where rnnlab deliberately differs from torch.nn 2.13, each with the reason and
with torch's behaviour asserted too, so that a torch upgrade that changes it shows up here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnlab

F64 = torch.float64
LAYERS = ("RNN", "LSTM", "GRU")
CELLS = ("RNNCell", "LSTMCell", "GRUCell")
BACKENDS = ("fused", "reference")
OURS: dict[str, type[nn.Module]] = {name: getattr(rnnlab, name) for name in (*LAYERS, *CELLS, "RNNBase")}
# The variants, by their torch-layout sibling.
SIBLINGS: dict[str, tuple[type[nn.Module], ...]] = {
    "LSTM": (rnnlab.LayerNormLSTM, rnnlab.PeepholeLSTM),
    "GRU": (rnnlab.LayerNormGRU,),
    "LSTMCell": (rnnlab.LayerNormLSTMCell, rnnlab.PeepholeLSTMCell),
    "GRUCell": (rnnlab.LayerNormGRUCell,),
}
# torch's notes about its own CPU kernel choice, not about the caller's input.
TORCH_IMPLEMENTATION_NOTES = ("not supported with oneDNN",)

DTYPE_PHRASE = (r"RNN input dtype \(torch\.\w+\) does not match weight dtype \(torch\.\w+\)\. "
                r"Convert input: input\.to\(torch\.\w+\), or convert model: model\.to\(torch\.\w+\)")
DROPOUT_PHRASE = r"dropout should be a number in range \[0, 1\] representing the probability of an element being zeroed"


def x(*shape: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, dtype=dtype)


def hx(name: str, h: tuple[int, ...], c: tuple[int, ...] | None = None, dtype: torch.dtype = F64):
    """The state argument of class ``name``: ``(h, c)`` for the LSTMs (``c`` shaped like ``h`` unless given)."""
    if "LSTM" in name:
        return x(*h, dtype=dtype), x(*(c or h), dtype=dtype)
    return x(*h, dtype=dtype)


def packed(T: int, lengths: list[int], features: int, dtype: torch.dtype = F64, sort: bool = True) -> PackedSequence:
    return pack_padded_sequence(x(T, len(lengths), features, dtype=dtype), torch.tensor(lengths),
                                enforce_sorted=sort)


def transposed(state, *dims: int):
    """A state (or LSTM state pair) with two dimensions swapped: the same values, non-contiguous."""
    return tuple(s.transpose(*dims) for s in state) if isinstance(state, tuple) else state.transpose(*dims)


Forward = Callable[[str], tuple]  # class name -> forward arguments


@dataclass(frozen=True)
class Case:
    """One input. ``raises``: torch raises on it (``phrase``, a regex, is in torch's message and must be in ours;
    ``None`` where torch's message comes from an unrelated internal op); else torch accepts it."""

    id: str
    classes: tuple[str, ...]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    fwd: Forward | None = None  # None: construction only
    raises: bool = False
    phrase: str | None = None
    warns: str | None = None  # a regex of the UserWarning torch gives (and so must we)
    variants: bool = True  # also run the variants of the classes (their error cases, and empty inputs)
    empty: bool = False  # the outputs are empty (the case the variants are compared on)


def err(id: str, classes: tuple[str, ...], phrase: str | None, *args: Any, fwd: Forward | None = None,
        variants: bool = True, **kwargs: Any) -> Case:
    return Case(id, classes, args, kwargs, fwd, raises=True, phrase=phrase, variants=variants)


def ok(id: str, classes: tuple[str, ...], *args: Any, fwd: Forward | None = None, warns: str | None = None,
       empty: bool = False, **kwargs: Any) -> Case:
    return Case(id, classes, args, kwargs, fwd, warns=warns, empty=empty)


def plain(n: str) -> tuple:
    return (x(5, 2, 3),)


LAYER_CASES: list[Case] = [
    # -- RNNBase.__init__ (and the constructor error inputs of PyTorch's module tests) ---------------------------
    err("hidden_size_0", LAYERS, "hidden_size must be greater than zero", 10, 0, 1),
    err("hidden_size_negative", LAYERS, "hidden_size must be greater than zero", 3, -3),
    err("hidden_size_float", LAYERS, "hidden_size should be of type int, got: float", 3, 5.0),
    err("num_layers_0", LAYERS, "num_layers must be greater than zero", 10, 10, 0),
    err("num_layers_negative", LAYERS, "num_layers must be greater than zero", 3, 4, -1),
    err("num_layers_float", LAYERS, None, 3, 4, 2.0),  # torch: range(2.0), a TypeError
    err("num_layers_str", LAYERS, None, 3, 4, "2"),  # torch: "2" <= 0, a TypeError
    err("input_size_0", LAYERS, "input_size must be greater than zero", 0, 5),
    err("input_size_negative", LAYERS, "input_size must be greater than zero", -1, 5),
    err("input_size_float", LAYERS, "input_size should be of type int, got: float", 3.0, 5),
    err("input_size_str", LAYERS, "input_size should be of type int, got: str", "10", 5),
    *[err(f"bias_{v!r}", LAYERS, f"bias should be of type bool, got: {type(v).__name__}", 3, 5, bias=v)
      for v in (0, 1, "True", None)],
    *[err(f"batch_first_{v!r}", LAYERS, f"batch_first should be of type bool, got: {type(v).__name__}", 3, 5,
          batch_first=v) for v in (0, 1, "False", None)],
    *[err(f"dropout_{v!r}", LAYERS, DROPOUT_PHRASE, 3, 5, dropout=v) for v in (1.5, -0.1, "0.5", True)],
    ok("dropout_one_layer_warns", LAYERS, 3, 4, dropout=0.5, fwd=plain,
       warns=r"dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
             r"num_layers greater than 1, but got dropout=0.5 and num_layers=1"),
    ok("dropout_int_one_layer_warns", LAYERS, 3, 4, dropout=1, fwd=plain, warns=r"but got dropout=1 and num_layers=1"),
    ok("dropout_two_layers_no_warning", LAYERS, 3, 4, 2, dropout=0.5),
    err("proj_size_negative", ("LSTM",), "proj_size should be a positive integer or zero to disable projections",
        3, 4, proj_size=-1, variants=False),
    err("proj_size_equal_hidden", ("LSTM",), "proj_size has to be smaller than hidden_size", 3, 4, proj_size=4,
        variants=False),
    err("proj_size_above_hidden", ("LSTM",), "proj_size has to be smaller than hidden_size", 3, 4, proj_size=5,
        variants=False),
    err("proj_size_float", ("LSTM",), None, 3, 4, proj_size=2.0, variants=False),  # torch.empty: TypeError
    err("proj_size_none", ("LSTM",), None, 3, 4, proj_size=None, variants=False),  # None < 0: TypeError
    *[err(f"proj_size_{v}_on_rnn_gru", ("RNN", "GRU"), "proj_size argument is only supported for LSTM, not RNN or GRU",
          3, 4, proj_size=v, variants=False) for v in (2, 0, -1)],
    err("unknown_nonlinearity", ("RNN",), r"Unknown nonlinearity 'gelu'\. Select from 'tanh' or 'relu'\.", 3, 4,
        nonlinearity="gelu"),
    err("nonlinearity_not_a_string", ("RNN",), r"Unknown nonlinearity '5'", 3, 4, nonlinearity=5),
    ok("nonlinearity_fourth_positional", ("RNN",), 3, 4, 1, "relu", fwd=plain),
    err("unrecognized_mode", ("RNNBase",), "Unrecognized RNN mode: FOO", "FOO", 3, 4),
    # -- check_input ----------------------------------------------------------------------------------------------
    err("input_float64_into_float32", LAYERS, DTYPE_PHRASE, 3, 5, dtype=torch.float32,
        fwd=lambda n: (x(2, 4, 3),)),
    err("input_float32_into_float64", LAYERS, DTYPE_PHRASE, 3, 5, fwd=lambda n: (x(2, 4, 3, dtype=torch.float32),)),
    err("input_int64", LAYERS, DTYPE_PHRASE, 3, 5, fwd=lambda n: (torch.ones(2, 4, 3, dtype=torch.int64),)),
    err("packed_input_float32_into_float64", ("RNN", "GRU"), DTYPE_PHRASE, 3, 5,
        fwd=lambda n: (packed(3, [3, 2], 3, dtype=torch.float32),)),
    err("input_4d", LAYERS, "Expected input to be 2D or 3D, got 4D", 3, 4, fwd=lambda n: (x(5, 2, 3, 1),)),
    err("input_1d", LAYERS, "Expected input to be 2D or 3D, got 1D", 3, 4, fwd=lambda n: (x(3),)),
    err("input_size_mismatch", LAYERS, r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 7", 3, 4,
        fwd=lambda n: (x(5, 2, 7),)),
    err("input_size_mismatch_unbatched", LAYERS, r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 7",
        3, 4, fwd=lambda n: (x(5, 7),)),
    err("input_size_mismatch_packed", ("RNN", "GRU"),
        r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 7", 3, 4, fwd=lambda n: (packed(3, [3, 1], 7),)),
    # torch's LSTM skips its Python checks on packed input; in float64 its matrix product then fails
    err("lstm_packed_input_size", ("LSTM",), None, 3, 4, fwd=lambda n: (packed(3, [3, 1], 7),)),
    err("input_no_features", LAYERS, r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 0", 3, 4,
        fwd=lambda n: (x(5, 2, 0),)),
    # -- the forwards: state dimensions -----------------------------------------------------------------------------
    err("hx_2d_for_batched_input", LAYERS, r"For batched 3-D input, hx (and cx )?should also be 3-D", 3, 4,
        fwd=lambda n: (x(5, 2, 3), hx(n, (1, 4)))),
    err("hx_3d_for_unbatched_input", LAYERS, r"For unbatched 2-D input, hx (and cx )?should also be 2-D", 3, 4,
        fwd=lambda n: (x(5, 3), hx(n, (1, 1, 4)))),
    err("lstm_h_2d_c_3d", ("LSTM",), r"hx and cx should also be 3-D but got \(2-D, 3-D\) tensors", 3, 4,
        fwd=lambda n: (x(5, 2, 3), (x(1, 4), x(1, 2, 4)))),
    err("lstm_three_states", ("LSTM",), "expects two hidden states", 3, 4,
        fwd=lambda n: (x(5, 2, 3), (x(1, 2, 4),) * 3)),
    # -- check_hidden_size: test_rnn_args_check (2 layers, T=6, B=4, I=3, H=5; a bad size of 7) -------------------
    err("args_check_input_batch", LAYERS, r"Expected hidden(\[0\])? size \(2, 7, 5\), got \[2, 4, 5\]", 3, 5, 2,
        fwd=lambda n: (x(6, 7, 3), hx(n, (2, 4, 5)))),
    err("args_check_hidden_batch", LAYERS, r"Expected hidden(\[0\])? size \(2, 4, 5\), got \[2, 7, 5\]", 3, 5, 2,
        fwd=lambda n: (x(6, 4, 3), hx(n, (2, 7, 5), (2, 4, 5)))),
    err("args_check_input_size", LAYERS, r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 7", 3, 5,
        2, fwd=lambda n: (x(6, 4, 7), hx(n, (2, 4, 5)))),
    err("args_check_hidden_size", LAYERS, r"Expected hidden(\[0\])? size \(2, 4, 5\), got \[2, 4, 7\]", 3, 5, 2,
        fwd=lambda n: (x(6, 4, 3), hx(n, (2, 4, 7), (2, 4, 5)))),
    err("args_check_hidden_layers", LAYERS, r"Expected hidden(\[0\])? size \(2, 4, 5\), got \[7, 4, 5\]", 3, 5, 2,
        fwd=lambda n: (x(6, 4, 3), hx(n, (7, 4, 5), (2, 4, 5)))),
    *[err(f"args_check_cell_state_{what}", ("LSTM",), rf"Expected hidden\[1\] size \(2, 4, 5\), got \[{got}\]", 3, 5,
          2, fwd=lambda n, bad=bad: (x(6, 4, 3), (x(2, 4, 5), x(*bad))))
      for what, bad, got in (("batch", (2, 7, 5), "2, 7, 5"), ("size", (2, 4, 7), "2, 4, 7"),
                             ("layers", (7, 4, 5), "7, 4, 5"))],
    err("unbatched_hx_layers", LAYERS, r"Expected hidden(\[0\])? size \(2, 1, 4\), got \[7, 1, 4\]", 3, 4, 2,
        fwd=lambda n: (x(5, 3), hx(n, (7, 4), (2, 4)))),
    err("packed_hx_batch", ("RNN", "GRU"), r"Expected hidden size \(2, 2, 4\), got \[2, 7, 4\]", 3, 4, 2,
        fwd=lambda n: (packed(3, [3, 2], 3), x(2, 7, 4))),
    err("packed_hx_2d", ("RNN", "GRU"), r"Expected hidden size \(2, 2, 4\), got \[2, 4\]", 3, 4, 2,
        fwd=lambda n: (packed(3, [3, 2], 3), x(2, 4))),
    # torch's LSTM skips its Python checks on packed input: its own op then fails, a RuntimeError too
    err("lstm_packed_hx_batch", ("LSTM",), None, 3, 4, 2, fwd=lambda n: (packed(3, [3, 2], 3), hx(n, (2, 7, 4)))),
    # test_projections_lstm_args_check: h is (L, B, proj_size), c is (L, B, hidden_size)
    err("proj_h_of_hidden_size", ("LSTM",), r"Expected hidden\[0\] size \(2, 4, 2\), got \[2, 4, 5\]", 3, 5, 2,
        proj_size=2, variants=False, fwd=lambda n: (x(6, 4, 3), (x(2, 4, 5), x(2, 4, 5)))),
    err("proj_c_of_proj_size", ("LSTM",), r"Expected hidden\[1\] size \(2, 4, 5\), got \[2, 4, 2\]", 3, 5, 2,
        proj_size=2, variants=False, fwd=lambda n: (x(6, 4, 3), (x(2, 4, 2), x(2, 4, 2)))),
    # -- the C++ op: empty sequence, state dtype ---------------------------------------------------------------------
    err("empty_sequence", LAYERS, "Expected sequence length to be larger than 0 in RNN", 5, 6,
        fwd=lambda n: (x(0, 10, 5),)),
    err("empty_sequence_batch_first", LAYERS, "Expected sequence length to be larger than 0 in RNN", 5, 6,
        batch_first=True, fwd=lambda n: (x(10, 0, 5),)),
    err("empty_sequence_unbatched", LAYERS, "Expected sequence length to be larger than 0 in RNN", 5, 6,
        fwd=lambda n: (x(0, 5),)),
    err("hx_float32_into_float64", ("RNN", "GRU"), "must have the same dtype", 3, 4,
        fwd=lambda n: (x(5, 2, 3), x(1, 2, 4, dtype=torch.float32))),
    # torch's LSTM reports it from oneDNN ("unsupported data type"): the class is the contract
    err("lstm_h_float32_into_float64", ("LSTM",), None, 3, 4,
        fwd=lambda n: (x(5, 2, 3), (x(1, 2, 4, dtype=torch.float32), x(1, 2, 4)))),
    err("lstm_c_float64_into_float32", ("LSTM",), None, 3, 4, dtype=torch.float32,
        fwd=lambda n: (x(5, 2, 3, dtype=torch.float32), (x(1, 2, 4, dtype=torch.float32), x(1, 2, 4)))),
    # -- accepted: the empty batch (test_RNN_input_size_zero) -----------------------------------------------------
    ok("empty_batch", LAYERS, 3, 4, fwd=lambda n: (x(5, 0, 3),), empty=True),
    ok("empty_batch_with_state", LAYERS, 3, 4, fwd=lambda n: (x(5, 0, 3), hx(n, (1, 0, 4))), empty=True),
    ok("empty_batch_batch_first", LAYERS, 3, 4, batch_first=True, fwd=lambda n: (x(0, 5, 3),), empty=True),
    ok("empty_batch_two_layers_bidirectional", LAYERS, 3, 4, 2, bidirectional=True,
       fwd=lambda n: (x(5, 0, 3), hx(n, (4, 0, 4))), empty=True),
    ok("empty_batch_projections", ("LSTM",), 3, 4, 2, proj_size=2, bidirectional=True,
       fwd=lambda n: (x(5, 0, 3), (x(4, 0, 2), x(4, 0, 4)))),
    # -- accepted: other inputs ---------------------------------------------------------------------------------------
    ok("batched", LAYERS, 3, 4, 2, fwd=lambda n: (x(5, 2, 3), hx(n, (2, 2, 4)))),
    ok("no_bias", LAYERS, 3, 4, bias=False, fwd=plain),
    ok("non_contiguous_input_and_state", LAYERS, 3, 4, 2,
       fwd=lambda n: (x(3, 2, 5).transpose(0, 2), transposed(hx(n, (4, 2, 2)), 0, 2))),
    ok("lstm_state_as_list", ("LSTM",), 3, 4, fwd=lambda n: (x(5, 2, 3), list(hx(n, (1, 2, 4))))),
    ok("packed_unsorted_with_state", LAYERS, 3, 4, 2, fwd=lambda n: (packed(5, [3, 5, 2], 3, sort=False),
                                                                     hx(n, (2, 3, 4)))),
]


def _module_inputs() -> list[Case]:
    """``module_inputs_torch_nn_RNN_GRU`` (with packed sequences) and ``module_inputs_torch_nn_LSTM``: unbatched
    input with and without a state over bias x batch_first x bidirectional (x nonlinearity, x proj_size)."""
    cases = []
    for name in LAYERS:
        extra = {"RNN": [{"nonlinearity": nl} for nl in ("relu", "tanh")], "GRU": [{}],
                 "LSTM": [{"proj_size": p} for p in (0, 2)]}[name]
        for b, bf, bidir, more in product((False, True), (False, True), (False, True), extra):
            kw = dict(bias=b, batch_first=bf, bidirectional=bidir, num_layers=2, **more)
            tag = f"bias{int(b)}_bf{int(bf)}_bi{int(bidir)}" + "".join(f"_{k}{v}" for k, v in more.items())
            L = 4 if bidir else 2
            if name == "LSTM":
                h_out = more["proj_size"] or 3
                state: Forward = lambda n, L=L, h_out=h_out: (x(3, 2), (x(L, h_out), x(L, 3)))  # noqa: E731
                cases.append(ok(f"module_input_{tag}", (name,), fwd=lambda n: (x(2, 2),), input_size=2,
                                hidden_size=3, **kw))
            else:
                state = lambda n, L=L: (x(3, 2), x(L, 3))  # noqa: E731
                cases.append(ok(f"module_input_{tag}", (name,), fwd=lambda n: (x(3, 2),), input_size=2,
                                hidden_size=2, **kw))
            cases.append(ok(f"module_input_with_state_{tag}", (name,), fwd=state, input_size=2, hidden_size=3, **kw))
            if not more.get("proj_size"):
                cases.append(ok(f"module_input_packed_{tag}", (name,), fwd=lambda n: (packed(5, [5, 3, 3, 2, 2], 2),),
                                input_size=2, hidden_size=2, **kw))
    return cases


CELL_CASES: list[Case] = [
    # -- construction: torch.nn's cells check nothing themselves; torch.empty refuses a negative or non-int size --
    err("cell_hidden_size_negative", CELLS, "Trying to create tensor with negative dimension", 3, -1),
    err("cell_input_size_negative", CELLS, "Trying to create tensor with negative dimension", -1, 4),
    err("cell_hidden_size_float", CELLS, None, 3, 4.0),
    err("cell_input_size_str", CELLS, None, "3", 4),
    # -- module_error_inputs_torch_nn_RNN_GRU_Cell / _LSTMCell (cell (10, 20), batch 3) ---------------------------
    err("cell_input_size", CELLS, "input has inconsistent input_size: got 11 expected 10", 10, 20,
        fwd=lambda n: (x(3, 11), hx(n, (3, 20)))),
    err("cell_hidden_size", CELLS, "hidden0 has inconsistent hidden_size: got 21, expected 20", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (3, 21)))),
    err("cell_hidden_batch", CELLS, "Input batch size 3 doesn't match hidden0 batch size 5", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (5, 20)))),
    err("cell_hidden_4d", CELLS, r"Expected (hidden|hx\[0\]) to be 1D or 2D, got 4D instead", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (3, 1, 1, 20)))),
    # the third positional argument is bias: torch takes any truthy value ('relu', 'tanh') as bias=True
    *[err(f"cell_bias_{v}_hidden_size", CELLS, "hidden0 has inconsistent hidden_size: got 21, expected 20", 10, 20, v,
          fwd=lambda n: (x(3, 10), hx(n, (3, 21)))) for v in ("relu", "tanh")],
    err("lstm_cell_c_size", ("LSTMCell",), "hidden1 has inconsistent hidden_size: got 21, expected 20", 10, 20,
        fwd=lambda n: (x(3, 10), (x(3, 20), x(3, 21)))),
    err("lstm_cell_c_batch", ("LSTMCell",), "Input batch size 3 doesn't match hidden1 batch size 5", 10, 20,
        fwd=lambda n: (x(3, 10), (x(3, 20), x(5, 20)))),
    err("lstm_cell_c_4d", ("LSTMCell",), r"Expected hx\[1\] to be 1D or 2D, got 4D instead", 10, 20,
        fwd=lambda n: (x(3, 10), (x(3, 20), x(3, 1, 1, 20)))),
    err("cell_input_3d", CELLS, "Expected input to be 1D or 2D, got 3D instead", 3, 4, fwd=lambda n: (x(1, 2, 3),)),
    err("cell_input_0d", CELLS, "Expected input to be 1D or 2D, got 0D instead", 3, 4,
        fwd=lambda n: (torch.tensor(1.0, dtype=F64),)),
    # -- test_RNN_cell_no_broadcasting: a state of batch 1 or size 1, an input of size 1 --------------------------
    err("no_broadcast_hidden_batch_1", CELLS, "Input batch size 3 doesn't match hidden0 batch size 1", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (1, 20), (3, 20)))),
    err("no_broadcast_hidden_size_1", CELLS, "hidden0 has inconsistent hidden_size: got 1, expected 20", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (3, 1), (3, 20)))),
    err("no_broadcast_input_size_1", CELLS, "input has inconsistent input_size: got 1 expected 10", 10, 20,
        fwd=lambda n: (x(3, 1), hx(n, (3, 20)))),
    err("no_broadcast_cell_state_batch_1", ("LSTMCell",), "Input batch size 3 doesn't match hidden1 batch size 1",
        10, 20, fwd=lambda n: (x(3, 10), (x(3, 20), x(1, 20)))),
    err("no_broadcast_cell_state_size_1", ("LSTMCell",), "hidden1 has inconsistent hidden_size: got 1, expected 20",
        10, 20, fwd=lambda n: (x(3, 10), (x(3, 20), x(3, 1)))),
    # -- batched vs unbatched -------------------------------------------------------------------------------------
    err("unbatched_input_batched_state", CELLS, "hidden0 has inconsistent hidden_size: got 3, expected 20", 10, 20,
        fwd=lambda n: (x(10), hx(n, (3, 20)))),
    err("batched_input_unbatched_state", CELLS, "Input batch size 3 doesn't match hidden0 batch size 20", 10, 20,
        fwd=lambda n: (x(3, 10), hx(n, (20,)))),
    # -- dtype (torch: the matrix product's check) and the LSTM cell's two states -----------------------------------
    err("cell_input_float64_into_float32", CELLS, "must have the same dtype", 3, 4, dtype=torch.float32,
        fwd=lambda n: (x(2, 3),)),
    err("cell_input_int64", CELLS, "must have the same dtype", 3, 4,
        fwd=lambda n: (torch.ones(2, 3, dtype=torch.int64),)),
    err("cell_hidden_float32_into_float64", CELLS, "must have the same dtype", 3, 4,
        fwd=lambda n: (x(2, 3), hx(n, (2, 4), dtype=torch.float32))),
    err("lstm_cell_three_states", ("LSTMCell",), "expects two hidden states", 3, 4,
        fwd=lambda n: (x(2, 3), (x(2, 4),) * 3)),
    err("lstm_cell_one_state", ("LSTMCell",), "expects two hidden states", 3, 4, fwd=lambda n: (x(2, 3), (x(2, 4),))),
    err("lstm_cell_state_not_a_tuple", ("LSTMCell",), "must be tuple of Tensors", 3, 4,
        fwd=lambda n: (x(2, 3), x(2, 4))),
    # -- accepted: module_inputs_torch_nn_RNN_GRU_Cell / _LSTMCell (unbatched) ---------------------------------------
    ok("cell_module_input", CELLS, 5, 10, fwd=lambda n: (x(5), hx(n, (10,)))),
    ok("cell_module_input_bias", CELLS, 5, 10, bias=True, fwd=lambda n: (x(5), hx(n, (10,)))),
    ok("cell_module_input_relu", ("RNNCell",), 5, 10, bias=True, nonlinearity="relu", fwd=lambda n: (x(5), x(10))),
    # -- accepted: test_RNN_cell_forward_zero_hidden_size, an input size of 0, the empty batch ----------------------
    ok("cell_hidden_size_0", CELLS, 10, 0, fwd=lambda n: (x(3, 10), hx(n, (3, 0))), empty=True),
    ok("cell_hidden_size_0_relu", ("RNNCell",), 10, 0, nonlinearity="relu", fwd=lambda n: (x(3, 10), x(3, 0)),
       empty=True),
    ok("cell_hidden_size_0_no_state", CELLS, 10, 0, fwd=lambda n: (x(3, 10),), empty=True),
    ok("cell_hidden_size_0_unbatched", CELLS, 10, 0, fwd=lambda n: (x(10), hx(n, (0,))), empty=True),
    ok("cell_input_size_0", CELLS, 0, 4, fwd=lambda n: (x(2, 0), hx(n, (2, 4)))),
    ok("cell_empty_batch", CELLS, 3, 4, fwd=lambda n: (x(0, 3),), empty=True),
    ok("cell_empty_batch_with_state", CELLS, 3, 4, fwd=lambda n: (x(0, 3), hx(n, (0, 4))), empty=True),
    # -- accepted: other inputs ---------------------------------------------------------------------------------------
    ok("cell_batched", CELLS, 3, 4, fwd=lambda n: (x(2, 3), hx(n, (2, 4)))),
    ok("cell_no_state", CELLS, 3, 4, fwd=lambda n: (x(2, 3),)),
    ok("cell_no_bias", CELLS, 3, 4, bias=False, fwd=lambda n: (x(2, 3), hx(n, (2, 4)))),
    *[ok(f"cell_bias_{v!r}", CELLS, 3, 4, v, fwd=lambda n: (x(2, 3),)) for v in ("relu", None, 0)],
    ok("cell_non_contiguous_input_and_state", CELLS, 3, 4, fwd=lambda n: (x(3, 2).t(), transposed(hx(n, (4, 2)), 0, 1))),
    ok("lstm_cell_state_as_list", ("LSTMCell",), 3, 4, fwd=lambda n: (x(2, 3), [x(2, 4), x(2, 4)])),
]

CASES = LAYER_CASES + _module_inputs() + CELL_CASES


# -- running a case -----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    stage: str | None = None  # "construction" or "forward" where it raised
    error: Exception | None = None
    warnings: list[warnings.WarningMessage] = field(default_factory=list)
    module: nn.Module | None = None
    output: Any = None


def construct(cls: type[nn.Module], case: Case, extra: dict[str, Any]) -> Outcome:
    kwargs = {"dtype": F64, **case.kwargs, **extra}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            module = cls(*case.args, **kwargs)
        except Exception as e:  # noqa: BLE001 - comparing whatever torch raises
            return Outcome("construction", e, list(caught))
    return Outcome(warnings=list(caught), module=module)


def forward(outcome: Outcome, inputs: tuple) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome.output = outcome.module(*inputs)  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001
            outcome.stage, outcome.error = "forward", e
    outcome.warnings += caught


def leaves_requiring_grad(inputs: Any) -> Any:
    """A copy of the forward arguments whose floating-point tensors are fresh leaves that require grad (strides
    kept, so a non-contiguous input stays non-contiguous)."""
    if isinstance(inputs, PackedSequence):
        return inputs._replace(data=leaves_requiring_grad(inputs.data))
    if isinstance(inputs, Tensor):
        copy = inputs.detach().clone()
        return copy.requires_grad_() if copy.is_floating_point() else copy
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(leaves_requiring_grad(i) for i in inputs)
    return inputs


def tensors(value: Any) -> list[Tensor]:
    """The tensors of an output or argument structure, in order (a PackedSequence's data)."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []


def user_warnings(outcome: Outcome, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in outcome.warnings
            if not any(note in str(w.message) for note in ignore)]


def assert_same_error(theirs: Outcome, ours: Outcome, phrase: str | None, what: str) -> None:
    assert theirs.error is not None, f"{what}: torch.nn accepts this case; the table says it raises"
    assert ours.error is not None, f"{what}: torch.nn raises {theirs.error!r}; rnnlab accepts"
    assert type(ours.error) is type(theirs.error) and ours.stage == theirs.stage, (
        f"{what}: torch.nn raises {type(theirs.error).__name__} at {theirs.stage} ({theirs.error}), "
        f"rnnlab {type(ours.error).__name__} at {ours.stage} ({ours.error})")
    if phrase is not None:
        assert re.search(phrase, str(theirs.error)), f"the phrase {phrase!r} is not torch's: {theirs.error}"
        assert re.search(phrase, str(ours.error)), f"{what}: {phrase!r} not in rnnlab's message: {ours.error}"


def assert_close(ours: Tensor, theirs: Tensor, what: str) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (what, ours.shape, theirs.shape)
    scale = max(1.0, float(theirs.detach().abs().max())) if theirs.numel() else 1.0
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11 * scale, msg=what)


def assert_same_results(theirs: Outcome, ours: Outcome, t_inputs: tuple, o_inputs: tuple, what: str) -> None:
    """Outputs, then the gradients of a fixed random weighting of them w.r.t. inputs, states and parameters."""
    t_out, o_out = tensors(theirs.output), tensors(ours.output)
    assert len(t_out) == len(o_out), what
    if isinstance(theirs.output, tuple) and isinstance(theirs.output[0], PackedSequence):
        for a, b in zip(theirs.output[0][1:], ours.output[0][1:]):
            assert (a is None and b is None) or torch.equal(a, b), f"{what}: packed batch layout"
    for k, (a, b) in enumerate(zip(o_out, t_out)):
        assert_close(a, b, f"{what}: output {k}")
    weights = [torch.randn(t.shape, dtype=t.dtype) for t in t_out]
    for out in (t_out, o_out):
        loss = sum((t * w).sum() for t, w in zip(out, weights))
        if isinstance(loss, Tensor) and loss.requires_grad:
            loss.backward()
    for k, (a, b) in enumerate(zip(tensors(o_inputs), tensors(t_inputs))):
        if b.requires_grad:
            assert_close(grad_or_zeros(a), grad_or_zeros(b), f"{what}: gradient of argument {k}")
    o_params = dict(ours.module.named_parameters())  # type: ignore[union-attr]
    t_params = dict(theirs.module.named_parameters())  # type: ignore[union-attr]
    assert o_params.keys() == t_params.keys(), what
    for name, p in t_params.items():
        assert_close(grad_or_zeros(o_params[name]), grad_or_zeros(p), f"{what}: gradient of {name}")


def grad_or_zeros(t: Tensor) -> Tensor:
    """A gradient that autograd left unset (no path from the loss) is a zero gradient."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def run_case(case: Case, name: str, ours_cls: type[nn.Module], backend: str | None) -> tuple[Outcome, Outcome,
                                                                                              tuple, tuple]:
    """torch.nn's ``name`` and ``ours_cls`` (on ``backend``) on the case: both outcomes and both inputs."""
    # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a formatted stack trace, ~3 ms
    torch.random.default_generator.manual_seed(0)
    theirs = construct(getattr(nn, name), case, {})
    ours = construct(ours_cls, case, {"backend": backend} if backend else {})
    t_inputs: tuple = ()
    o_inputs: tuple = ()
    if case.fwd is not None:
        if theirs.module is not None and ours.module is not None and ours_cls is OURS.get(name):
            ours.module.load_state_dict(theirs.module.state_dict())
        inputs = case.fwd(name)
        t_inputs, o_inputs = leaves_requiring_grad(inputs), leaves_requiring_grad(inputs)
        for outcome, args in ((theirs, t_inputs), (ours, o_inputs)):
            if outcome.module is not None:
                forward(outcome, args)
    return theirs, ours, t_inputs, o_inputs


def params(cases: list[Case], variants: bool = False) -> list:
    """``(case, torch class name, our class)`` for every class of every case (for ``variants``, the variants of
    the class, on its error and empty cases)."""
    out = []
    for case in cases:
        for name in case.classes:
            if not variants:
                out.append(pytest.param(case, name, OURS[name], id=f"{case.id}-{name}"))
            elif case.variants and (case.raises or case.empty):
                out += [pytest.param(case, name, cls, id=f"{case.id}-{cls.__name__}") for cls in SIBLINGS.get(name, ())]
    return out


def backends(name: str) -> tuple[str | None, ...]:
    """A layer runs on each backend (one test item for both: half the items, the same checks); a cell has none."""
    return BACKENDS if name in LAYERS or name == "RNNBase" else (None,)


@pytest.mark.parametrize("case,name,cls", params(CASES))
def test_rnnlab_does_what_torch_nn_does(case: Case, name: str, cls: type[nn.Module]):
    for backend in backends(name):
        check_case(case, name, cls, backend)


def check_case(case: Case, name: str, cls: type[nn.Module], backend: str | None) -> None:
    theirs, ours, t_inputs, o_inputs = run_case(case, name, cls, backend)
    what = f"{name}({case.id}) on backend {backend}"
    if case.raises:
        assert_same_error(theirs, ours, case.phrase, what)
    else:
        assert theirs.error is None, f"{what}: torch.nn raises {theirs.error!r}; the table says it accepts"
        assert ours.error is None, f"{what}: torch.nn accepts, rnnlab raises {ours.error!r}"
        if case.fwd is not None:
            assert_same_results(theirs, ours, t_inputs, o_inputs, what)
    # the same warnings: the case's one from both, and nothing else from either
    t_warnings = user_warnings(theirs, TORCH_IMPLEMENTATION_NOTES)
    o_warnings = user_warnings(ours)
    if case.warns is None:
        assert t_warnings == [] and o_warnings == [], (what, t_warnings, o_warnings)
    else:
        for got in (t_warnings, o_warnings):
            assert len(got) == 1 and got[0].startswith("UserWarning") and re.search(case.warns, got[0]), (what, got)


@pytest.mark.parametrize("case,name,cls", params(CASES, variants=True))
def test_variants_do_what_their_torch_sibling_does(case: Case, name: str, cls: type[nn.Module]):
    """A variant raises its torch-layout sibling's class (and phrase) on the sibling's error cases; on an empty input
    it returns what the sibling returns (empty outputs of the same shapes, zero gradients)."""
    for backend in backends(name):
        check_variant(case, name, cls, backend)


def check_variant(case: Case, name: str, cls: type[nn.Module], backend: str | None) -> None:
    theirs, ours, t_inputs, o_inputs = run_case(case, name, cls, backend)
    what = f"{cls.__name__} as {name}({case.id}) on backend {backend}"
    if case.raises:
        assert_same_error(theirs, ours, case.phrase, what)
        return
    assert theirs.error is None and ours.error is None, (what, theirs.error, ours.error)
    t_out, o_out = tensors(theirs.output), tensors(ours.output)
    assert [t.shape for t in o_out] == [t.shape for t in t_out] and all(t.numel() == 0 for t in o_out), what
    sum(t.sum() for t in t_out).backward()  # type: ignore[union-attr]
    sum(t.sum() for t in o_out).backward()  # type: ignore[union-attr]
    for k, (a, b) in enumerate(zip(tensors(o_inputs), tensors(t_inputs))):
        assert_close(grad_or_zeros(a), grad_or_zeros(b), f"{what}: gradient of argument {k}")
    for pname, p in ours.module.named_parameters():  # type: ignore[union-attr]
        assert torch.equal(grad_or_zeros(p), torch.zeros_like(p)), f"{what}: gradient of {pname}"


# -- where rnnlab deliberately differs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Deviation:
    """torch's behaviour (``torch_raises`` ``None``: it accepts) and ours on the same call, and why they differ."""

    id: str
    name: str
    args: tuple
    kwargs: dict[str, Any]
    fwd: Forward | None
    torch_raises: tuple[str, type[Exception]] | None  # (stage, class)
    ours: tuple[str, type[Exception], str]  # (stage, class, phrase)
    why: str


DEVIATIONS: list[Deviation] = [
    Deviation("input_not_a_tensor", "LSTM", (3, 4), {}, lambda n: ([[1.0, 2.0, 3.0]],),
              ("forward", AttributeError), ("forward", TypeError, "LSTM: input must be a Tensor or PackedSequence"),
              "torch reaches input.dim() on a list; we name the argument with the class Python uses for it"),
    Deviation("cell_input_not_a_tensor", "GRUCell", (3, 4), {}, lambda n: ([1.0, 2.0, 3.0],),
              ("forward", AttributeError), ("forward", TypeError, "GRUCell: input must be a Tensor"), "as above"),
    Deviation("hx_not_a_tensor", "GRU", (3, 4), {}, lambda n: (x(5, 2, 3), (x(1, 2, 4),)),
              ("forward", AttributeError), ("forward", TypeError, "GRU: hx must be a Tensor, got tuple"), "as above"),
    Deviation("cell_hx_not_a_tensor", "RNNCell", (3, 4), {}, lambda n: (x(2, 3), [x(2, 4)]),
              ("forward", AttributeError), ("forward", TypeError, "RNNCell: hx must be a Tensor, got list"),
              "as above"),
    Deviation("lstm_hx_a_tensor", "LSTM", (3, 4), {}, lambda n: (x(5, 2, 3), x(1, 2, 4)),
              ("forward", IndexError), ("forward", TypeError, r"LSTM: hx must be tuple of Tensors \(h_0, c_0\)"),
              "torch indexes hx[1] of a tensor; we say what hx must be (LSTMCell's TypeError)"),
    Deviation("lstm_one_state", "LSTM", (3, 4), {}, lambda n: (x(5, 2, 3), (x(1, 2, 4),)),
              ("forward", IndexError), ("forward", RuntimeError, "LSTM: expects two hidden states"),
              "torch indexes hx[1] of a 1-tuple; three states give its RuntimeError, so one does too"),
    Deviation("bool_hidden_size", "LSTM", (3, True), {}, None, None,
              ("construction", TypeError, "hidden_size should be of type int, got: bool"),
              "torch's LSTM(3, True) builds a hidden size of 1 by accident (its RNN(3, True) fails in torch.empty)"),
    Deviation("bool_num_layers", "GRU", (3, 4, True), {}, None, None,
              ("construction", TypeError, "num_layers should be of type int, got: bool"), "as above"),
    Deviation("bool_cell_size", "RNNCell", (3, True), {}, None, None,
              ("construction", TypeError, "hidden_size should be of type int, got: bool"), "as above"),
    Deviation("bidirectional_not_bool", "LSTM", (3, 4), {"bidirectional": 1}, lambda n: (x(5, 2, 3),),
              ("forward", TypeError), ("construction", TypeError, "bidirectional should be of type bool, got: int"),
              "torch builds it and every forward fails (a TypeError from its op); we fail at once"),
    Deviation("cell_unknown_nonlinearity", "RNNCell", (3, 4), {"nonlinearity": "gelu"}, lambda n: (x(2, 3),),
              ("forward", RuntimeError), ("construction", RuntimeError, "Unknown nonlinearity: gelu"),
              "torch builds a cell that can never run; same class and phrase, at construction"),
    Deviation("lstm_packed_input_size", "LSTM", (3, 4), {"dtype": torch.float32},
              lambda n: (packed(3, [3, 3], 7, torch.float32),), None,
              ("forward", RuntimeError, r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 7"),
              "torch's LSTM skips check_forward_args on packed input: in float32 (oneDNN) it runs a 7-feature input "
              "through a 3-feature layer and returns a result (with unequal lengths or in float64 its matrix product "
              "fails, see the main table); we apply the check its RNN and GRU apply"),
    Deviation("lstm_packed_input_dtype", "LSTM", (3, 4), {}, lambda n: (packed(3, [3, 1], 3, torch.float32),),
              ("forward", RuntimeError), ("forward", ValueError, DTYPE_PHRASE), "as above"),
    Deviation("lstm_packed_hx_2d", "LSTM", (3, 4), {}, lambda n: (packed(3, [3, 1], 3), (x(1, 4), x(1, 4))),
              ("forward", IndexError), ("forward", RuntimeError, r"Expected hidden\[0\] size \(1, 2, 4\), got \[1, 4\]"),
              "as above"),
    Deviation("lstm_cell_c_dtype", "LSTMCell", (3, 4), {}, lambda n: (x(2, 3), (x(2, 4), x(2, 4, dtype=torch.float32))),
              None, ("forward", RuntimeError, r"hx\[1\] and the weights must have the same dtype"),
              "torch computes c' and h' in the promoted dtype (float64 from a float32 c: the next step then fails on "
              "h); we refuse the c that h would be refused for"),
    Deviation("lstm_c_dtype", "LSTM", (3, 4), {}, lambda n: (x(5, 2, 3), (x(1, 2, 4), x(1, 2, 4, dtype=torch.float32))),
              None, ("forward", RuntimeError, r"hx\[1\] and the weights must have the same dtype"),
              "torch 2.13 runs a float32 c through a float64 LSTM (type promotion) but refuses a float64 c in a float32 "
              "one (oneDNN, a RuntimeError); we refuse both, as for h"),
    Deviation("cell_unbatched_input_2d_state", "RNNCell", (3, 1), {}, lambda n: (x(3), x(1, 1)), None,
              ("forward", RuntimeError, r"RNNCell: for unbatched input, the state must have shape \(1,\)"),
              "torch unsqueezes the (1, 1) state to 3-D and its check reads two dims: it returns a batched (1, 1) "
              "result for an unbatched input"),
]


@pytest.mark.parametrize("dev", DEVIATIONS, ids=[d.id for d in DEVIATIONS])
def test_deliberate_deviations(dev: Deviation):
    case = Case(dev.id, (dev.name,), dev.args, dev.kwargs, dev.fwd)
    theirs, ours, _, _ = run_case(case, dev.name, OURS[dev.name], None)
    if dev.torch_raises is None:
        assert theirs.error is None, f"torch.nn now raises {theirs.error!r}: move {dev.id} to the main table"
    else:
        assert (theirs.stage, type(theirs.error)) == dev.torch_raises, (
            f"torch.nn changed: {theirs.stage} {theirs.error!r}; revisit {dev.id}")
    stage, cls, phrase = dev.ours
    assert ours.stage == stage and type(ours.error) is cls, (ours.stage, ours.error)
    assert re.search(phrase, str(ours.error)), ours.error


# -- the empty batch with rnnlab's own options (no torch counterpart) --------------------------------------------

@pytest.mark.parametrize("cls", [rnnlab.LSTM, rnnlab.GRU, rnnlab.RNN, rnnlab.LayerNormLSTM, rnnlab.PeepholeLSTM],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_with_every_option(cls: type[rnnlab.RNNBase], backend: str):
    """With options that run on the cells' own kernels (zoneout, recurrent and weight dropout, learnt initial
    states, all-step outputs), an empty batch gives the shapes a batch of one gives, with its batch axis empty, zero
    gradients everywhere, and no warning (it runs on the reference loop, which is no fallback worth a warning)."""
    options = dict(zoneout=0.2, recurrent_dropout=0.3, weight_dropout=0.1, learn_init=True, return_gates=True)
    layer = cls(3, 4, num_layers=2, bidirectional=True, backend=backend, dtype=F64, **options)

    def run(batch: int) -> list[tuple[Tensor, int]]:
        """Every output tensor with its batch axis (AllStates has a leading layer axis)."""
        out, state, extra = layer(x(5, batch, 3))
        return ([(t, 1) for t in tensors((out, state))]
                + [(t, 2) for t in tensors((extra.h, extra.c, list(extra.gates.values())))])

    one = run(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = [t for t, _ in run(0)]
    assert [list(t.shape) for t in empty] == [[0 if d == axis else n for d, n in enumerate(t.shape)]
                                              for t, axis in one]
    sum(t.sum() for t in empty).backward()  # type: ignore[union-attr]
    for name, p in layer.named_parameters():
        assert torch.equal(grad_or_zeros(p), torch.zeros_like(p)), name
