"""Export rnnlab layers and task models to ONNX, and check the file with onnxruntime.

rnnlab's layers are plain autograd ops, so torch's ``torch.export``-based ONNX exporter (the default since torch
2.9, needs ``onnxscript``) records them whole: the exported graph is the reference time loop unrolled over the
steps, in the standard ONNX operators (MatMul, Sigmoid, Tanh, ...), runnable by any ONNX runtime.

What the file looks like:

* inputs ``input`` and the initial state ``h_0`` (and ``c_0`` for an LSTM), outputs ``output`` and the final
  state ``h_n`` (and ``c_n``), so a runtime can carry the state across calls, e.g. one step at a time for
  generation (export with ``seq_len=1``);
* the batch size is dynamic; the sequence length is fixed at export time, because the time loop is unrolled
  (torch.nn's exporter emits ONNX's ``LSTM`` operator instead, whose loop is hidden in the runtime);
* eval mode: dropout is off; the layers run the reference backend while exported (the fused C++ kernel is opaque
  to graph capture), which equals every other backend up to float rounding.

Install the optional dependencies with ``pip install 'rnnlab[export]'`` (onnx, onnxscript, onnxruntime).

Example:
    >>> import rnnlab
    >>> from rnnlab.export import export_onnx, verify_onnx
    >>> lstm = rnnlab.LSTM(8, 16, num_layers=2)
    >>> exported = export_onnx(lstm, "lstm.onnx", seq_len=20)
    >>> verify_onnx(exported, lstm)   # max |onnxruntime - torch| over outputs and states, e.g. 3e-8
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import UserError
from .layers import RNNBase

__all__ = ["ExportedModel", "export_onnx", "verify_onnx", "example_inputs", "recurrent_layer"]


@dataclass
class ExportedModel:
    """An ONNX file written by :func:`export_onnx` and what it takes.

    Attributes:
        path: the ``.onnx`` file.
        input_names, output_names: ONNX graph names, in order (``input, h_0[, c_0]`` and ``output, h_n[, c_n]``).
        seq_len: the fixed sequence length of the graph. batch_axis: the dynamic axis of ``input``.
        example: the example inputs the graph was recorded with (reused by :func:`verify_onnx`).
    """

    path: Path
    input_names: list[str]
    output_names: list[str]
    seq_len: int
    batch_axis: int
    example: tuple[Tensor, ...] = field(repr=False)


def recurrent_layer(model: nn.Module) -> RNNBase:
    """The one rnnlab recurrent layer in ``model`` (``model`` itself if it is one).

    Raises:
        UserError: ``model`` contains no rnnlab RNN/LSTM/GRU, or more than one.
    """
    if isinstance(model, RNNBase):
        return model
    layers = [m for m in model.modules() if isinstance(m, RNNBase)]
    if len(layers) != 1:
        raise UserError(f"export: expected a model with exactly one rnnlab RNN/LSTM/GRU layer, found {len(layers)} "
                        f"in {type(model).__name__}")
    return layers[0]


def _state_shapes(layer: RNNBase, batch: int) -> list[tuple[int, int, int]]:
    """Shapes of ``h_0`` (and ``c_0``): ``(L*D, B, H_out)`` and ``(L*D, B, H)``."""
    n = layer.num_layers * layer.num_directions
    h_out = layer.proj_size or layer.hidden_size
    return [(n, batch, h_out), (n, batch, layer.hidden_size)] if layer.mode == "LSTM" else [(n, batch, h_out)]


def example_inputs(model: nn.Module, seq_len: int, batch_size: int = 2,
                   generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Random ``(input, h_0[, c_0])`` for ``model``: a layer, or a task model of :mod:`rnnlab.models`.

    Token models (``model.tokens``) get int64 ids below ``model.input_size``; everything else floats in the
    parameters' dtype. ``input`` is ``(T, B, I)``, or ``(B, T, I)`` for a ``batch_first`` layer.

    Raises:
        UserError: ``seq_len`` or ``batch_size`` below 1.
    """
    if seq_len < 1 or batch_size < 1:
        raise UserError(f"export: seq_len and batch_size must be >= 1, got seq_len={seq_len}, "
                        f"batch_size={batch_size}")
    layer = recurrent_layer(model)
    param = next(layer.parameters())
    dtype, device = param.dtype, param.device
    if getattr(model, "tokens", False):
        vocab = int(getattr(model, "input_size"))
        x = torch.randint(0, vocab, (seq_len, batch_size), generator=generator, device=device)  # (T, B)
    elif model is layer and layer.batch_first:
        x = torch.randn(batch_size, seq_len, layer.input_size, generator=generator, dtype=dtype,
                        device=device)  # (B, T, I)
    else:
        features = int(getattr(model, "input_size", layer.input_size))
        x = torch.randn(seq_len, batch_size, features, generator=generator, dtype=dtype, device=device)  # (T, B, I)
    states = tuple(0.5 * torch.randn(shape, generator=generator, dtype=dtype, device=device)
                   for shape in _state_shapes(layer, batch_size))
    return (x, *states)


class _Flat(nn.Module):
    """``model(x, state)`` with the state as separate tensors in and out, the calling convention of the file."""

    def __init__(self, model: nn.Module, lstm: bool) -> None:
        super().__init__()
        self.model = model
        self.lstm = lstm

    def forward(self, x: Tensor, h_0: Tensor, c_0: Tensor | None = None) -> tuple[Tensor, ...]:
        # Explicit arguments, not *state: torch.export maps dynamic_shapes onto the signature's parameters.
        out, final = self.model(x, (h_0, c_0) if self.lstm else h_0)
        return (out, *final) if self.lstm else (out, final)


@contextlib.contextmanager
def _export_mode(model: nn.Module, reference: bool = True) -> Iterator[None]:
    """Eval mode and (with ``reference``) the reference backend in every rnnlab layer, restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, RNNBase)] if reference else []
    saved = [m.backend for m in layers]
    was_training = model.training
    try:
        model.eval()
        for m in layers:
            m.backend = "reference"
        yield
    finally:
        for m, backend in zip(layers, saved):
            m.backend = backend
        model.train(was_training)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise UserError(f"export: this needs the '{module}' package; install the optional dependencies with "
                        f"pip install 'rnnlab[export]'") from None


def export_onnx(model: nn.Module, path: str | Path, *, seq_len: int, batch_size: int = 2,
                opset_version: int | None = None, seed: int = 0) -> ExportedModel:
    """Write ``model`` (an rnnlab layer or a task model) to an ONNX file.

    Args:
        model: an ``rnnlab.RNN/LSTM/GRU`` or a module holding exactly one (``rnnlab.models`` task models), whose
            forward is ``model(x, state) -> (output, state)``.
        path: the ``.onnx`` file to write (its folder is created).
        seq_len: the time steps of the graph (fixed: the loop is unrolled). batch_size: of the example used to
            record the graph; the file accepts any batch size (>= 2 recommended: torch.export specialises 1).
        opset_version: ONNX opset (None: the exporter's default).
        seed: for the random example inputs.

    Returns:
        An :class:`ExportedModel` naming the graph's inputs and outputs.

    Raises:
        UserError: onnx/onnxscript missing, a model without exactly one rnnlab layer, bad sizes.
    """
    for module in ("onnx", "onnxscript"):
        _require(module)
    layer = recurrent_layer(model)
    lstm = layer.mode == "LSTM"
    example = example_inputs(model, seq_len, batch_size, torch.Generator().manual_seed(seed))
    batch_axis = 0 if (model is layer and layer.batch_first) else 1
    input_names = ["input", "h_0", "c_0"] if lstm else ["input", "h_0"]
    output_names = ["output", "h_n", "c_n"] if lstm else ["output", "h_n"]
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({batch_axis: batch},) + tuple({1: batch} for _ in example[1:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter logs a warning per missing optional torchvision op; they concern vision models only.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with _export_mode(model), torch.no_grad(), warnings.catch_warnings():
            # "axis name batch will not be used": the state tensors share the input's batch axis, as intended.
            warnings.filterwarnings("ignore", message=".*axis name.*")
            # torch.export's own use of a deprecated pytree spelling; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(_Flat(model, lstm).eval(), example, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic,
                                        opset_version=opset_version, verbose=False)
    finally:
        registration_log.setLevel(old_level)
    assert program is not None  # dynamo=True always returns the program
    program.save(str(path))
    return ExportedModel(path, input_names, output_names, seq_len, batch_axis, example)


def verify_onnx(exported: ExportedModel, model: nn.Module, inputs: tuple[Tensor, ...] | None = None) -> float:
    """Run the file with onnxruntime and ``model`` in torch on the same inputs; return the largest abs difference.

    Args:
        exported: what :func:`export_onnx` returned. model: the torch model it was exported from.
        inputs: ``(input, h_0[, c_0])``; default: the example the graph was recorded with.

    Raises:
        UserError: onnxruntime missing, or inputs whose count does not match the graph's.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    inputs = exported.example if inputs is None else inputs
    if len(inputs) != len(exported.input_names):
        raise UserError(f"export: the graph takes {len(exported.input_names)} inputs {exported.input_names}, "
                        f"got {len(inputs)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic and polite on shared machines; these graphs are small
    session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
    got = session.run(exported.output_names,
                      {name: t.detach().cpu().numpy() for name, t in zip(exported.input_names, inputs)})
    with _export_mode(model, reference=False), torch.no_grad():  # torch as the model runs: its own backend
        want = _Flat(model, len(exported.output_names) == 3)(*inputs)
    return max(float((torch.from_numpy(g) - w.cpu()).abs().max()) for g, w in zip(got, want))
