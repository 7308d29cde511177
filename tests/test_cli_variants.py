"""`rnnlab train` with the cell variants, the layer options and gradient tracking, end to end through the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from rnnlab.cli import main
from rnnlab.data import build_task
from rnnlab.models import build_model
from rnnlab.train.checkpoint import load_checkpoint
from rnnlab.train.config import load_config
from rnnlab.train.run import load_run
from rnnlab.variants import LayerNormGRU, LayerNormLSTM

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--no-tensorboard", "--no-plots", "--threads", "1"]
TINY = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--max-steps", "3", "--eval-every", "0",
        "--final-eval-batches", "2", "--sample-length", "20", *QUIET]


def _column(path: Path, name: str) -> list[float]:
    with path.open() as f:
        return [float(row[name]) for row in csv.DictReader(f)]


def test_shipped_lnlstm_config_trains_a_layernorm_lstm_with_recurrent_dropout(tmp_path, capsys):
    config = ROOT / "configs" / "shakespeare_lnlstm.toml"
    assert main(["train", "--config", str(config), "--out-dir", str(tmp_path), "--name", "ln", *TINY]) == 0
    out = capsys.readouterr().out
    assert "done: 3 steps" in out and "--- sample" in out
    run = tmp_path / "ln"
    cfg, model, info = load_run(run)  # rebuilt from config.json + the checkpoint (strict state_dict load)
    assert info["name"] == "shakespeare" and cfg.model.cell == "layernorm_lstm"
    assert isinstance(model.rnn, LayerNormLSTM)
    assert model.rnn.recurrent_dropout == 0.1 == load_config(config).model.recurrent_dropout  # from the TOML file
    losses = _column(run / "train.csv", "loss") + _column(run / "val.csv", "val_loss")
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    # The rebuilt model is the trained one: `rnnlab eval` (a fresh model + the checkpoint) on the same 2 validation
    # batches gives the loss the run's final evaluation logged (recurrent dropout is off in eval mode).
    assert main(["eval", str(run), "--batches", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] == pytest.approx(_column(run / "val.csv", "val_loss")[-1],
                                                                            rel=1e-5)


def test_every_layer_option_reaches_the_layer():
    cfg = load_config(None, {"task.name": "sine", "task.num_samples": 16, "model.cell": "layernorm_gru",
                             "model.hidden_size": 8, "model.num_layers": 2, "model.recurrent_dropout": 0.2,
                             "model.zoneout": 0.1, "model.weight_dropout": 0.3, "model.forget_bias": 1.5,
                             "model.learn_init": True})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    torch.manual_seed(0)  # the layer is the model's first module: the same draws give the same weights
    expected = LayerNormGRU(task.input_size, 8, 2, recurrent_dropout=0.2, zoneout=0.1, weight_dropout=0.3,
                            forget_bias=1.5, learn_init=True)
    assert (model.rnn.recurrent_dropout, model.rnn.zoneout, model.rnn.weight_dropout) == (0.2, (0.1,), 0.3)
    got = model.rnn.state_dict()
    assert got.keys() == expected.state_dict().keys() and "h0_l1" in got  # learn_init's parameters
    for name, value in expected.state_dict().items():
        assert torch.equal(got[name], value), name  # forget_bias wrote the same update-gate block
    plain = load_config(None, {"task.name": "sine", "model.cell": "layernorm_gru", "model.hidden_size": 8})
    torch.manual_seed(0)
    assert not torch.equal(build_model(plain.model, task).rnn.bias_ih_l0, got["bias_ih_l0"])  # 1.5 is not init


def test_variant_with_every_option_resumes_bit_identically(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 30)
    flags = ["--task", "text", "--path", str(text), "--embed-size", "8", "--cell", "peephole_lstm", "--num-layers",
             "2", "--recurrent-dropout", "0.2", "--zoneout", "0.1", "--weight-dropout", "0.2", "--forget-bias", "1.0",
             "--learn-init", "--schedule", "constant", "--log-every", "1", "--out-dir", str(tmp_path), *TINY,
             "--sample-length", "0"]
    assert main(["train", *flags, "--name", "a", "--max-steps", "6"]) == 0
    assert main(["train", *flags, "--name", "b", "--max-steps", "3"]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--max-steps", "6", "--no-progress"]) == 0
    capsys.readouterr()
    straight, _ = load_checkpoint(tmp_path / "a")
    resumed, saved = load_checkpoint(tmp_path / "b")
    assert saved["model"]["forget_bias"] == 1.0 and saved["model"]["learn_init"] is True
    assert straight["step"] == resumed["step"] == 6
    assert straight["model"].keys() == resumed["model"].keys() and "rnn.c0_l1" in straight["model"]
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name  # same dropout/zoneout masks after the resume
    assert _column(tmp_path / "a" / "train.csv", "loss") == _column(tmp_path / "b" / "train.csv", "loss")  # per step


@pytest.mark.parametrize("argv, message", [
    (["--cell", "xlstm"], "config: model.cell: unknown cell 'xlstm'; expected one of ['lstm', 'gru', 'rnn_tanh', "
                          "'rnn_relu', 'layernorm_lstm', 'layernorm_gru', 'peephole_lstm']"),
    (["--recurrent-dropout", "1.0"], "config: model.recurrent_dropout must be in [0, 1), got 1.0"),
    (["--zoneout", "-0.1"], "config: model.zoneout must be in [0, 1), got -0.1"),
    (["--track-every", "-1"], "config: train.track_every must be >= 0, got -1"),
    (["--track-spectra-every", "0"], "config: train.track_spectra_every must be >= 1, got 0"),
    (["--task", "sine", "--num-samples", "16", "--cell", "rnn_tanh", "--forget-bias", "1"],
     "model: RNN: forget_bias needs a cell with a forget gate, and RNN_TANH has none"),
])
def test_bad_variant_settings_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out-dir", str(tmp_path), *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_track_every_writes_per_layer_gradient_norms_and_off_writes_none(tmp_path, capsys):
    argv = ["train", "--task", "adding", "--num-samples", "64", "--seq-len", "12", "--batch-size", "16",
            "--hidden-size", "8", "--num-layers", "2", "--cell", "layernorm_lstm", "--max-steps", "4",
            "--eval-every", "0", "--final-eval-batches", "1", "--clip-norm", "0", "--log-every", "1", "--out-dir", str(tmp_path),
            "--name", "g", *QUIET]
    assert main([*argv, "--track-every", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    logged = map(json.loads, (tmp_path / "g" / "metrics.jsonl").read_text().splitlines())
    trained = {r["step"]: r for r in logged if r["split"] == "train"}  # log_every 1: each step's own norm
    for rec in records[1:]:
        norms = rec["layer_grad_norm_post"]
        # every parameter is in its layer's group (layer-norm gains and the single bias included) or the head's
        assert set(norms) == {"rnn.l0", "rnn.l1", "head"} and all(v > 0 for v in norms.values())
        total = math.sqrt(sum(v * v for v in norms.values()))
        assert total == pytest.approx(rec["grad_norm_pre"], rel=1e-5)  # no clipping: the groups make the total
        assert rec["grad_norm_pre"] == pytest.approx(trained[rec["step"]]["grad_norm"], rel=1e-6)
        assert [len(rec["profile"][k]) for k in ("rnn.l0", "rnn.l1")] == [12, 12]  # ||dL/dh_t|| at every step
    assert [r["step"] for r in records if "rho" in r] == [0, 4]  # by default every 10th record: the start, the end
    assert main([*argv, "--overwrite", "--track-every", "2", "--track-spectra-every", "1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "diagnostics.jsonl").read_text().splitlines()]
    assert all("rho" in r for r in records)  # K=1: rho at every record
    assert main([*argv, "--overwrite", "--track-every", "2", "--track-spectra-every", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "rho" in r] == [0, 4]  # every 2nd record (step 4), the start, the end
    # the same folder, replaced: a run without tracking leaves no records
    assert main([*argv, "--overwrite", "--track-every", "0"]) == 0
    assert not (tmp_path / "g" / "diagnostics.jsonl").exists()
    capsys.readouterr()
