"""ONNX export: the file, run by onnxruntime, gives the torch model's outputs and final states (<= 1e-4).

Each case exports with :func:`rnnlab.export.export_onnx` and compares onnxruntime with eager torch (the layer's
default backend, not the reference loop the export records) on the recording example and on fresh inputs with
another batch size (the batch axis is dynamic). ``rnnlab export`` is tested end to end from a checkpoint written
by ``rnnlab train``. Skipped as a whole only when onnxruntime (or the exporter's onnx/onnxscript) is missing:
install the ``[export]`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import rnnlab  # noqa: E402
from rnnlab.errors import UserError  # noqa: E402
from rnnlab.export import example_inputs, export_onnx, recurrent_layer, verify_onnx  # noqa: E402
from rnnlab.models import CharLM  # noqa: E402

TOL = 1e-4
# torch.export's own internals warn about a deprecated pytree spelling; nothing rnnlab can change.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def _train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    """A few optimizer steps, so the exported weights are not the symmetric initial draw."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, *state = example_inputs(model, 4, 2)
        out, _ = model(x, tuple(state) if len(state) == 2 else state[0])
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()


# Graph capture and decomposition cost grows with the unrolled steps (layers x directions x T), ~2-4 s per
# step-cell on the CI machine, so the default cases are one feature group each, T = 3; the slow ones combine them.
CASES = {
    "lstm-proj-bidir": lambda: rnnlab.LSTM(3, 6, bidirectional=True, proj_size=2),
    "gru-2layer": lambda: rnnlab.GRU(3, 4, num_layers=2),
    "rnn-tanh-batch_first": lambda: rnnlab.RNN(3, 4, batch_first=True),
}
SLOW_CASES = {
    "lstm-proj-bidir-2layer": lambda: rnnlab.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2),
    "gru-bidir-2layer": lambda: rnnlab.GRU(3, 4, num_layers=2, bidirectional=True),
    "rnn-relu-bidir-2layer": lambda: rnnlab.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True),
    "gru-no-bias": lambda: rnnlab.GRU(3, 4, bias=False),
    # A task model with token input: int64 ids -> embedding -> 2-layer GRU -> linear head.
    "charlm-gru-2layer": lambda: CharLM(vocab_size=11, hidden_size=6, cell="gru", num_layers=2, embed_size=5),
}


def _check(name: str, make, tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = make()
    _train_a_little(layer)
    exported = export_onnx(layer, tmp_path / f"{name}.onnx", seq_len=3)
    lstm = recurrent_layer(layer).mode == "LSTM"
    assert exported.input_names == (["input", "h_0", "c_0"] if lstm else ["input", "h_0"])
    assert exported.output_names == (["output", "h_n", "c_n"] if lstm else ["output", "h_n"])
    assert verify_onnx(exported, layer) <= TOL
    fresh = example_inputs(layer, 3, 7, torch.Generator().manual_seed(1))
    assert verify_onnx(exported, layer, fresh) <= TOL

    # The same comparison written out against torch directly, so the test does not rest on verify_onnx alone.
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(exported.input_names, fresh)})
    layer.eval()
    with torch.no_grad():
        out, final = layer(fresh[0], (fresh[1], fresh[2]) if lstm else fresh[1])
    want = [out, *final] if lstm else [out, final]
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=TOL)
    # A different batch element must give a different output: the graph is not a constant.
    assert not np.allclose(got[0][..., 0, :], got[0][..., 1, :])


@pytest.mark.parametrize("name", list(CASES))
def test_layer_onnx_equals_torch(name: str, tmp_path: Path) -> None:
    _check(name, CASES[name], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_layer_onnx_equals_torch_more(name: str, tmp_path: Path) -> None:
    _check(name, SLOW_CASES[name], tmp_path)


def test_export_cli_from_a_trained_checkpoint(tmp_path: Path, capsys) -> None:
    """`rnnlab train` a tiny LSTM, then `rnnlab export` its run folder; onnxruntime equals the loaded model."""
    from rnnlab.cli import main
    from rnnlab.train.run import load_run

    run_dir = tmp_path / "runs" / "sine"
    assert main(["train", "--task", "sine", "--hidden-size", "8", "--max-steps", "3", "--num-samples", "32",
                 "--batch-size", "8", "--seq-len", "4", "--eval-every", "3", "--final-eval-batches", "1",
                 "--threads", "1", "--no-plots", "--no-tensorboard", "--no-progress", "--sample-length", "0",
                 "--out-dir", str(tmp_path / "runs"), "--name", "sine"]) == 0
    out = tmp_path / "export" / "sine.onnx"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0  # --seq-len defaults to the run's 4
    assert "verified: max |onnxruntime - torch|" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["inputs"] == ["input", "h_0", "c_0"] and meta["seq_len"] == 4 and meta["task"]["name"] == "sine"

    # Independently of the command's own check: the checkpoint's model and the file agree.
    _, model, _ = load_run(run_dir)
    x = torch.randn(4, 5, 1)
    h0, c0 = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, hn, cn = session.run(None, {"input": x.numpy(), "h_0": h0.numpy(), "c_0": c0.numpy()})
    with torch.no_grad():
        want, (want_h, want_c) = model(x, (h0, c0))
    np.testing.assert_allclose(y, want.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(hn, want_h.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(cn, want_c.numpy(), atol=TOL, rtol=0)


def test_export_errors(tmp_path: Path, capsys) -> None:
    from rnnlab.cli import main

    with pytest.raises(UserError, match="exactly one rnnlab RNN/LSTM/GRU layer, found 0"):
        export_onnx(torch.nn.Linear(3, 4), tmp_path / "x.onnx", seq_len=3)
    with pytest.raises(UserError, match="seq_len and batch_size must be >= 1, got seq_len=0"):
        export_onnx(rnnlab.GRU(3, 4), tmp_path / "x.onnx", seq_len=0)
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "run folder" in capsys.readouterr().err
