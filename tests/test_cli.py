"""Smoke tests of the CLI: every subcommand on a tiny budget, --help everywhere, one-line errors with exit 2."""

import json

import pytest

from rnnlab.cli import main

TINY = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--max-steps", "5", "--eval-every", "0",
        "--final-eval-batches", "2", "--no-progress", "--no-tensorboard", "--threads", "1"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 40)
    return path


@pytest.mark.parametrize("command", ["train", "eval", "generate", "forecast"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: rnnlab " + command in out
    if command == "train":
        assert "--hidden-size" in out and "--bptt-horizon" in out and "--resume" in out


def test_train_eval_generate_on_text(tmp_path, text_file, capsys):
    rc = main(["train", "--task", "text", "--path", str(text_file), "--out-dir", str(tmp_path), "--name", "t",
               "--sample-length", "30", "--embed-size", "8", *TINY, "--tensorboard"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "done: 5 steps" in out and "nats/char" in out and "--- sample" in out
    run = tmp_path / "t"
    for name in ("config.json", "task.json", "train.csv", "val.csv", "metrics.jsonl", "checkpoint.json",
                 "checkpoint.safetensors", "loss.png", "sample.txt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["hidden_size"] == 16
    assert main(["eval", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["step"] == 5 and metrics["val_loss"] > 0
    assert main(["generate", str(run), "--prime", "Thou", "--length", "40", "--top-k", "5", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("Thou") and len(first.rstrip("\n")) >= 44
    main(["generate", str(run), "--prime", "Thou", "--length", "40", "--top-k", "5", "--seed", "1"])
    assert capsys.readouterr().out == first  # the seed fixes the sample
    # resume: continue the finished run for 2 more steps
    assert main(["train", "--resume", str(run), "--max-steps", "7", "--no-progress"]) == 0
    assert "done: 7 steps" in capsys.readouterr().out
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = tensorboard.EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [5, 7]  # TensorBoard holds the same evaluation
    assert events.Scalars("val/loss")[0].value == pytest.approx(
        float((run / "val.csv").read_text().splitlines()[1].split(",")[1]))


def test_train_and_forecast_csv(tmp_path, capsys):
    data = tmp_path / "s.csv"
    data.write_text("t,a,b\n" + "".join(f"{i},{(i % 12) / 3},{i % 5}\n" for i in range(120)))
    rc = main(["train", "--task", "csv", "--path", str(data), "--columns", "a", "b", "--target", "a",
               "--horizon", "3", "--out-dir", str(tmp_path), "--name", "f", *TINY])
    assert rc == 0
    capsys.readouterr()
    assert main(["forecast", str(tmp_path / "f")]) == 0
    assert "next 3 steps" in capsys.readouterr().out
    rows = (tmp_path / "f" / "forecast.csv").read_text().splitlines()
    assert rows[0] == "index,a_actual,a_predicted" and len(rows) == 1 + 120 + 3
    assert (tmp_path / "f" / "forecast.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "nope"], "unknown task 'nope'"),
    (["train", "--task", "text"], "text task: give the text file with --path FILE"),
    (["train", "--config", "missing.toml"], "config: file not found: missing.toml"),
    (["eval", "no/such/run"], "checkpoint: expected checkpoint.json"),
    (["generate", "no/such/run"], "has no task.json"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_generate_refuses_a_non_text_run(tmp_path, capsys):
    assert main(["train", "--task", "sine", "--num-samples", "16", "--out-dir", str(tmp_path), "--name", "s",
                 *TINY]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "s")]) == 2
    assert "not a character model" in capsys.readouterr().err
    assert main(["forecast", str(tmp_path / "s")]) == 2
    assert "not a forecasting task" in capsys.readouterr().err


def test_a_new_run_replaces_the_folders_earlier_results_only_with_overwrite(tmp_path, capsys):
    argv = ["train", "--task", "sine", "--num-samples", "16", "--out-dir", str(tmp_path), "--name", "s",
            "--log-every", "2", *TINY]
    assert main(argv) == 0
    assert main(argv) == 2  # refused: the folder holds a run (tests/test_run_safety.py checks it is untouched)
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    steps = [line.split(",")[0] for line in (tmp_path / "s" / "train.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "4", "5"]  # one run's rows, not two runs' appended
    assert len((tmp_path / "s" / "val.csv").read_text().splitlines()) == 2  # header + the final evaluation


def test_a_run_on_torch_nn_layer_for_measurement(tmp_path, text_file, capsys):
    """``--backend torch.nn``: the same model (same seed, same weights) with torch.nn's layer; it trains, its
    checkpoint loads for generate, and its logged training loss is rnnlab's; options torch.nn lacks are refused."""
    from torch import nn

    from rnnlab.layers import RNNBase
    from rnnlab.train.config import load_config
    from rnnlab.train.run import build_model_and_task

    overrides = {"task.name": "text", "task.path": str(text_file), "task.batch_size": 4, "task.seq_len": 16,
                 "model.hidden_size": 16, "model.embed_size": 8}
    ours, _ = build_model_and_task(load_config(None, overrides))
    theirs, _ = build_model_and_task(load_config(None, {**overrides, "model.backend": "torch.nn"}))
    assert isinstance(ours.rnn, RNNBase) and type(theirs.rnn) is nn.LSTM
    assert {k: v.tolist() for k, v in ours.state_dict().items()} == {
        k: v.tolist() for k, v in theirs.state_dict().items()}
    losses = []
    for backend in ("", "torch.nn"):
        name = backend or "rnnlab"
        assert main(["train", "--task", "text", "--path", str(text_file), "--out-dir", str(tmp_path), "--name", name,
                     "--embed-size", "8", "--backend", backend, *TINY]) == 0
        capsys.readouterr()
        losses.append(float((tmp_path / name / "train.csv").read_text().splitlines()[1].split(",")[1]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # the same 5 steps: another model is off by > 1e-2
    assert main(["generate", str(tmp_path / "torch.nn"), "--length", "20"]) == 0
    for option, message in ((["--zoneout", "0.1"], "torch.nn's layers have no zoneout"),
                            (["--cell", "layernorm_lstm"], "needs a cell torch.nn has"),
                            (["--track-every", "1"], "cannot be tracked")):
        assert main(["train", "--task", "text", "--path", str(text_file), "--out-dir", str(tmp_path), "--name", "x",
                     "--backend", "torch.nn", *TINY, *option]) == 2
        assert message in capsys.readouterr().err


def test_bench_times_the_training_loop_and_generation(tmp_path, text_file, capsys):
    """`rnnlab bench --train-steps`: rnnlab vs torch.nn on the training loop; `--generate`: generate_text."""
    config = tmp_path / "tiny.toml"
    config.write_text(f'[model]\nhidden_size = 16\nembed_size = 8\n[task]\nname = "text"\npath = "{text_file}"\n'
                      f'batch_size = 4\nseq_len = 16\n')
    out = tmp_path / "tt.json"
    assert main(["bench", "--train-steps", "2", "--rounds", "2", "--config", str(config), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ratio rnnlab / torch.nn:" in text and "B=4 T=16" in text
    result = json.loads(out.read_text())["train_throughput"]
    assert result["chars_per_step"] == 4 * 16 and result["steps"] == 2 and result["rounds"] == 2
    for label in ("rnnlab", "torch.nn"):
        assert result[label]["chars_per_s_cpu"]["median"] > 0
    assert result["ratio_cpu"] == pytest.approx(result["rnnlab"]["chars_per_s_cpu"]["median"]
                                                 / result["torch.nn"]["chars_per_s_cpu"]["median"])
    assert main(["bench", "--generate", "20", "--rounds", "1", "--config", str(config), "--out", str(out)]) == 0
    assert "chars/s wall" in capsys.readouterr().out
    generated = json.loads(out.read_text())["generate"]
    assert generated["chars"] == 20 and generated["chars_per_s_cpu"]["median"] > 0
