"""CLI bad input: every case exits with status 2 and prints one clear line (no traceback), and nothing in an
existing run folder is overwritten or lost.

The CLI runs in-process (``rnnlab.cli.main``) so the whole table costs one torch import. Each case points the run
folder at an existing, finished run (``--out-dir``/``--name`` or ``--resume``/``RUN_DIR``): if the command wrote
anything before failing, the folder's fingerprint (every file's name and SHA-256) would change. The table of
cases is in docs/robustness.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from rnnlab.cli import main

TINY = ["--task", "sine", "--num-samples", "16", "--batch-size", "4", "--seq-len", "6", "--hidden-size", "4",
        "--max-steps", "2", "--eval-every", "0", "--final-eval-batches", "1", "--no-progress", "--no-plots",
        "--no-tensorboard", "--threads", "1"]


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny LSTM run: runs/keep."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out-dir", str(root), "--name", "keep"]) == 0
    return root / "keep"


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """A finished run of another model (GRU, 6 units)."""
    root = tmp_path_factory.mktemp("other")
    assert main(["train", *TINY, "--cell", "gru", "--hidden-size", "6", "--out-dir", str(root), "--name", "o"]) == 0
    return root / "o"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    (d / "ok.csv").write_text("a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(40)))
    (d / "header.csv").write_text("a,b\n")
    (d / "header_blank.csv").write_text("a,b\n\n , \n")
    (d / "words.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(40)))
    (d / "letters.csv").write_text("a,b\n" + "".join(f"p{i},x{i}\n" for i in range(40)))
    (d / "inf.csv").write_text("a\n" + "".join(f"{'inf' if i == 7 else i}\n" for i in range(40)))
    (d / "neg_inf.csv").write_text("a,b\n" + "".join(f"{i},{'-Infinity' if i == 30 else i}\n" for i in range(40)))
    (d / "all_nan.csv").write_text("a,b\n" + "".join(f"{i},nan\n" for i in range(40)))
    (d / "one_nan.csv").write_text("a,b\n" + "".join(f"{i},{'NaN' if i == 5 else i}\n" for i in range(40)))
    (d / "short.csv").write_text("a\n1\n2\n3\n4\n")
    (d / "empty.txt").write_text("")
    (d / "one.txt").write_text("x")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81abc")
    (d / "a_folder.csv").mkdir()
    (d / "unknown_key.toml").write_text("[model]\nhiden_size = 3\n")
    (d / "unknown_section.toml").write_text("[modle]\nhidden_size = 3\n")
    (d / "bad_type.toml").write_text("[model]\nhidden_size = \"big\"\n")
    (d / "broken.toml").write_text("[model\nhidden_size = 3\n")
    (d / "locked.csv").write_text("a\n1\n2\n")
    os.chmod(d / "locked.csv", 0)
    return d


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and the non-empty stderr lines of ``rnnlab argv``."""
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse exits on its own errors
        rc = exit_.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


# (id, argv after `train` + TINY + the run folder, regex the one line must match). {d} = the inputs folder.
TRAIN_CASES = [
    ("missing_file", ["--task", "csv", "--path", "{d}/nope.csv"], r"csv task: file not found: .*nope\.csv"),
    ("folder_as_file", ["--task", "csv", "--path", "{d}/a_folder.csv"], r"csv task: .*a_folder\.csv.* not a file"),
    ("csv_header_only", ["--task", "csv", "--path", "{d}/header.csv"], r"needs a header row and at least one data"),
    ("csv_header_blank_rows", ["--task", "csv", "--path", "{d}/header_blank.csv"], r"needs a header row and at "),
    ("csv_non_numeric_column", ["--task", "csv", "--path", "{d}/words.csv", "--columns", "b"],
     r"column 'b' of words\.csv has non-numeric values"),
    ("csv_no_numeric_column", ["--task", "csv", "--path", "{d}/letters.csv"], r"letters\.csv has no numeric column"),
    ("csv_inf", ["--task", "csv", "--path", "{d}/inf.csv"], r"inf\.csv.*row 9.*column 'a'.*infinite"),
    ("csv_minus_inf", ["--task", "csv", "--path", "{d}/neg_inf.csv"], r"neg_inf\.csv.*row 32.*column 'b'.*infinite"),
    ("csv_all_nan_column", ["--task", "csv", "--path", "{d}/all_nan.csv", "--columns", "b", "--missing",
                            "interpolate"], r"has no values"),
    ("csv_nan_cell", ["--task", "csv", "--path", "{d}/one_nan.csv"],
     r"one_nan\.csv has 1 empty or NaN value\(s\), the first in row 7 .*column 'b'; pass --missing interpolate"),
    ("csv_missing_policy", ["--task", "csv", "--path", "{d}/ok.csv", "--missing", "drop"],
     r"--missing must be 'error' or 'interpolate', got 'drop'"),
    ("csv_unknown_column", ["--task", "csv", "--path", "{d}/ok.csv", "--columns", "zz"],
     r"columns \['zz'\] not in ok\.csv; available: \['a', 'b'\]"),
    ("csv_unknown_target", ["--task", "csv", "--path", "{d}/ok.csv", "--target", "zz"], r"target columns \['zz'\]"),
    ("window_longer_than_series", ["--task", "csv", "--path", "{d}/short.csv", "--seq-len", "10"],
     r"too few for windows of seq_len=10"),
    ("text_empty", ["--task", "text", "--path", "{d}/empty.txt"], r"text task: .*empty\.txt is empty"),
    ("text_one_char", ["--task", "text", "--path", "{d}/one.txt"], r"too (few|short)"),
    ("text_not_utf8", ["--task", "text", "--path", "{d}/binary.txt"], r"not UTF-8 text"),
    ("text_missing", ["--task", "text", "--path", "{d}/nope.txt"], r"text task: file not found"),
    ("hidden_size_0", ["--hidden-size", "0"], r"model\.hidden_size must be >= 1, got 0"),
    ("hidden_size_negative", ["--hidden-size", "-3"], r"model\.hidden_size must be >= 1, got -3"),
    ("num_layers_0", ["--num-layers", "0"], r"model\.num_layers must be >= 1, got 0"),
    ("embed_size_negative", ["--embed-size", "-1"], r"model\.embed_size must be >= 0, got -1"),
    ("batch_size_0", ["--batch-size", "0"], r"batch_size .*must be >= 1, got 0"),
    ("seq_len_negative", ["--seq-len", "-1"], r"seq_len .*must be >= 1, got -1"),
    ("num_samples_0", ["--num-samples", "0"], r"num_samples must be >= 1, got 0"),
    ("horizon_0", ["--task", "csv", "--path", "{d}/ok.csv", "--horizon", "0"], r"horizon must be >= 1, got 0"),
    ("max_steps_negative", ["--max-steps", "-1"], r"max_steps must be >= 0, got -1"),
    ("lr_negative", ["--lr", "-0.1"], r"optim\.lr must be > 0, got -0\.1"),
    ("lr_nan", ["--lr", "nan"], r"optim\.lr must be a finite number, got nan"),
    ("clip_norm_negative", ["--clip-norm", "-1"], r"optim\.clip_norm must be >= 0, got -1"),
    ("dropout_too_big", ["--dropout", "1.5"], r"dropout must be in \[0, 1\), got 1\.5"),
    ("eval_every_negative", ["--eval-every", "-5"], r"train\.eval_every must be >= 0, got -5"),
    ("checkpoint_every_negative", ["--checkpoint-every", "-1"], r"train\.checkpoint_every must be >= 0, got -1"),
    ("log_every_0", ["--log-every", "0"], r"train\.log_every must be >= 1, got 0"),
    ("threads_negative", ["--threads", "-2"], r"train\.threads must be >= 0, got -2"),
    ("val_fraction_1", ["--val-fraction", "1"], r"val_fraction must be in \(0, 1\), got 1"),
    ("unknown_device", ["--device", "quantum"], r"train\.device: unknown device 'quantum'"),
    ("unknown_task", ["--task", "nope"], r"unknown task 'nope'; expected one of"),
    ("unknown_cell", ["--cell", "xlstm"], r"unknown cell 'xlstm'; expected one of"),
    ("unknown_backend", ["--backend", "warp"], r"unknown backend 'warp'; expected one of"),
    ("unknown_flag", ["--frobnicate"], r"unrecognized arguments: --frobnicate"),
    ("flag_not_a_number", ["--hidden-size", "many"], r"argument --hidden-size: invalid int value: 'many'"),
    ("flag_missing_value", ["--max-steps"], r"argument --max-steps: expected one argument"),
    ("config_unknown_key", ["--config", "{d}/unknown_key.toml"], r"config: unknown key 'hiden_size' in \[model\]"),
    ("config_unknown_section", ["--config", "{d}/unknown_section.toml"], r"config: unknown section \[modle\]"),
    ("config_wrong_type", ["--config", "{d}/bad_type.toml"], r"model\.hidden_size should be of type int, got str"),
    ("config_not_toml", ["--config", "{d}/broken.toml"], r"config: cannot parse .*broken\.toml"),
    ("config_missing", ["--config", "{d}/nope.toml"], r"config: file not found"),
]


def assert_one_clear_line(rc: int, lines: list[str], pattern: str) -> None:
    import re

    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert not any("Traceback" in line for line in lines)
    assert lines[0].startswith("rnnlab"), lines[0]
    assert "error:" in lines[0], lines[0]
    assert re.search(pattern, lines[0]), (pattern, lines[0])


@pytest.mark.parametrize("argv,pattern", [pytest.param(a, p, id=i) for i, a, p in TRAIN_CASES])
def test_train_bad_input(argv, pattern, finished_run, files, capsys):
    before = fingerprint(finished_run)
    argv = [a.replace("{d}", str(files)) for a in argv]
    # the case's flags come last, so they override TINY's; the run folder is the finished run's
    rc, lines = run_cli(["train", *TINY, "--out-dir", str(finished_run.parent), "--name", finished_run.name, *argv],
                        capsys)
    assert_one_clear_line(rc, lines, pattern)
    assert fingerprint(finished_run) == before, "a failed command changed the existing run folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(files, capsys):
    rc, lines = run_cli(["train", *TINY, "--task", "csv", "--path", str(files / "locked.csv")], capsys)
    assert_one_clear_line(rc, lines, r"csv task: cannot read .*locked\.csv")


@pytest.mark.parametrize("flags", [("--cell", "gru"), ("--hidden-size", "5"), ("--num-layers", "2")],
                         ids=["gru", "hidden5", "2layers"])
def test_resume_with_a_different_model_is_refused(flags, finished_run, capsys):
    before = fingerprint(finished_run)
    rc, lines = run_cli(["train", "--resume", str(finished_run), *flags], capsys)
    assert_one_clear_line(rc, lines, r"checkpoint: .* does not fit this model")
    assert fingerprint(finished_run) == before


@pytest.mark.parametrize("command", ["eval", "generate", "forecast", "resume"])
def test_checkpoint_tensors_from_another_model_are_refused(command, finished_run, other_run, tmp_path, capsys):
    """A run folder whose checkpoint.safetensors was replaced by another model's: every command refuses it."""
    mixed = tmp_path / "mixed"
    shutil.copytree(finished_run, mixed)
    shutil.copy(other_run / "checkpoint.safetensors", mixed / "checkpoint.safetensors")
    capsys.readouterr()
    before = fingerprint(mixed)
    argv = ["train", "--resume", str(mixed)] if command == "resume" else [command, str(mixed)]
    rc, lines = run_cli(argv, capsys)
    if command == "generate":  # a sine run is not a character model: refused before the checkpoint is read
        assert_one_clear_line(rc, lines, r"not a character model|checkpoint")
    else:
        assert_one_clear_line(rc, lines, r"checkpoint: .*checkpoint\.safetensors")
    assert fingerprint(mixed) == before


def test_eval_and_resume_of_a_folder_without_checkpoint(tmp_path, capsys):
    for argv in (["eval", str(tmp_path)], ["train", "--resume", str(tmp_path)], ["generate", str(tmp_path)]):
        rc, lines = run_cli(argv, capsys)
        assert_one_clear_line(rc, lines, r"(checkpoint|task\.json)")
    assert not any(tmp_path.iterdir())


def test_no_command_and_unknown_command(capsys):
    rc, lines = run_cli(["fly"], capsys)
    assert_one_clear_line(rc, lines, r"invalid choice: 'fly'")


@pytest.fixture(scope="module")
def lm_and_forecast_runs(tmp_path_factory, files) -> tuple[Path, Path]:
    """A finished character model (text task) and a finished forecasting run (csv task)."""
    root = tmp_path_factory.mktemp("more_runs")
    (files / "t.txt").write_text("hello world, this is a tiny text for a char model. " * 40)
    (files / "xy.csv").write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(40)))
    (files / "short_ab.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (files / "inf_ab.csv").write_text("a,b\n" + "".join(f"{i},{'inf' if i == 20 else i}\n" for i in range(40)))
    small = TINY[2:]  # TINY without "--task sine"
    assert main(["train", "--task", "text", "--path", str(files / "t.txt"), *small, "--sample-length", "0",
                 "--out-dir", str(root), "--name", "lm"]) == 0
    assert main(["train", "--task", "csv", "--path", str(files / "ok.csv"), *small, "--out-dir", str(root),
                 "--name", "fc"]) == 0
    return root / "lm", root / "fc"


OTHER_CASES = [
    ("generate_temperature_0", "generate", "lm", ["--temperature", "0"], r"temperature must be a finite number > 0"),
    ("generate_temperature_negative", "generate", "lm", ["--temperature", "-1"], r"temperature must be a finite"),
    ("generate_temperature_nan", "generate", "lm", ["--temperature", "nan", "--prime", "h"],
     r"temperature must be a finite number > 0, got nan"),
    ("generate_top_k_negative", "generate", "lm", ["--top-k", "-2", "--prime", "h"], r"top_k must be >= 0, got -2"),
    ("generate_prime_unknown_chars", "generate", "lm", ["--prime", "ZZZ"], r"not in the model's vocabulary: \['Z'\]"),
    ("generate_prime_empty", "generate", "lm", ["--prime", ""], r"prime text must not be empty"),
    ("generate_length_negative", "generate", "lm", ["--length", "-1"], r"--length must be >= 0, got -1"),
    ("generate_on_forecast_run", "generate", "fc", [], r"not a character model"),
    ("forecast_on_char_model", "forecast", "lm", [], r"not a forecasting task"),
    ("forecast_missing_input", "forecast", "fc", ["--input", "{d}/nope.csv"], r"csv task: file not found"),
    ("forecast_series_shorter_than_window", "forecast", "fc", ["--input", "{d}/short_ab.csv"],
     r"the series has 3 points, fewer than the model's window of 6"),
    ("forecast_input_with_inf", "forecast", "fc", ["--input", "{d}/inf_ab.csv"],
     r"inf_ab\.csv row 22, column 'b': 'inf' is infinite"),
    ("forecast_input_other_columns", "forecast", "fc", ["--input", "{d}/xy.csv"],
     r"columns \['a', 'b'\] not in xy\.csv; available: \['x', 'y'\]"),
    ("forecast_output_folder_missing", "forecast", "fc", ["--output", "{d}/no/such/folder/f.csv"],
     r"--output .*f\.csv: the folder .* does not exist"),
    ("eval_batches_negative", "eval", "fc", ["--batches", "-1"], r"--batches must be >= 0, got -1"),
]


@pytest.mark.parametrize("command,run,argv,pattern", [pytest.param(c, r, a, p, id=i) for i, c, r, a, p in OTHER_CASES])
def test_other_commands_bad_input(command, run, argv, pattern, lm_and_forecast_runs, files, capsys):
    folder = lm_and_forecast_runs[0] if run == "lm" else lm_and_forecast_runs[1]
    before = fingerprint(folder)
    rc, lines = run_cli([command, str(folder), *(a.replace("{d}", str(files)) for a in argv)], capsys)
    assert_one_clear_line(rc, lines, pattern)
    assert fingerprint(folder) == before
