"""A user's own text and CSV (issue 17): the cases that broke, each reproduced and now passing.

CLI cases run the installed ``rnnlab`` console script in a subprocess, as a user would, and never show a
traceback. The README's "Your own data" blocks are parsed and run as written (with a tiny model and budget), so the
README cannot drift from what works.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab.cli import _one_line_warning
from rnnlab.data import build_task
from rnnlab.data.series import forecast_ahead, forecast_errors, predict_windows, read_csv_table
from rnnlab.data.text import CharLMTask, default_prime, fitting_batch_shape, load_text_ids
from rnnlab.errors import UserError
from rnnlab.models import build_model, generate_text
from rnnlab.train.config import TaskConfig, load_config

from _cli import rnnlab_command

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(rnnlab.__file__).resolve().parents[1]  # the rnnlab under test, also for the subprocesses


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("RNNLAB_DEBUG", None)
    return env


def cli(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """Run ``rnnlab ARGS`` in ``cwd``; check the exit status and that no traceback was printed."""
    proc = subprocess.run(rnnlab_command() + args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == expect, f"rnnlab {shlex.join(args)} -> {proc.returncode}\n{proc.stderr[-2000:]}"
    return proc


def _words(n_chars: int, seed: int = 0) -> str:
    """Text of about ``n_chars`` characters, with no newline at all."""
    rng = np.random.default_rng(seed)
    words = np.array(["the", "river", "runs", "past", "old", "stone", "walls", "and", "light", "falls"])
    return " ".join(rng.choice(words, n_chars // 5))[:n_chars]


def _sales_csv(path: Path, days: int = 120) -> None:
    """Daily sales with a weekly season and a trend, and a text column; ``;``-delimited, with a date column."""
    start = np.datetime64("2024-01-01")
    rows = [f"{start + d};{100 + 0.5 * d + 10 * math.sin(2 * math.pi * d / 7):.2f};shop{d % 3}" for d in range(days)]
    path.write_text("date;sales;store\n" + "\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------------- README


def readme_blocks() -> list[list[list[str]]]:
    """The command lines of the bash blocks in README's "Your own data" section, comments removed."""
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[args for line in block.splitlines() if (args := shlex.split(line, comments=True))] for block in blocks]


def _tiny(args: list[str]) -> list[str]:
    """A README command with a tiny budget: 3 steps of an 8-unit model (a resume goes on to step 5)."""
    if args[:2] != ["rnnlab", "train"]:
        return args
    args = list(args)
    if "--max-steps" in args:
        args[args.index("--max-steps") + 1] = "5"
    return args + ([] if "--resume" in args else ["--max-steps", "3", "--hidden-size", "8"])


def test_readme_text_block_runs_as_written(tmp_path):
    """Text end to end: train (the task inferred from --path), eval, generate, resume. The file has no newline
    at all: it used to train, then fail on the sample's prime '\\n' (and generate never worked on the model)."""
    text_block = readme_blocks()[0]
    (tmp_path / "my.txt").write_text(_words(12000))
    outputs = []
    for args in text_block:
        assert args[0] == "rnnlab"
        outputs.append(cli(_tiny(args)[1:], tmp_path))
    assert [a[1] for a in text_block] == ["train", "eval", "generate", "train"]
    assert "my.txt is a file: the text task" in outputs[0].stderr
    assert "bits_per_char" in outputs[1].stdout
    assert len(outputs[2].stdout.strip()) >= 300
    assert "resuming at step 3" in outputs[3].stderr and "done: 5 steps" in outputs[3].stdout


def test_readme_csv_block_runs_as_written(tmp_path):
    """CSV end to end: a ';' file with a date column and a text column; eval reports MAE/RMSE next to the
    baselines; forecast --horizon 30 (the model forecasts 7) is indexed by the dates."""
    csv_block = readme_blocks()[1]
    _sales_csv(tmp_path / "sales.csv")
    outputs = [cli(_tiny(args)[1:], tmp_path) for args in csv_block]
    assert [a[1] for a in csv_block] == ["train", "eval", "forecast", "train"]
    assert "delimiter ';', a header row, dates from 2024-01-01 to 2024-04-29 ('date')" in outputs[0].stderr
    assert "text columns left out: ['store']" in outputs[0].stderr
    assert re.search(r"sales: model MAE \S+ RMSE \S+; naive \(last value\) MAE \S+ RMSE \S+; seasonal naive "
                     r"\(period 7\) MAE \S+ RMSE \S+", outputs[1].stdout)
    rows = (tmp_path / "runs" / "sales" / "forecast.csv").read_text().splitlines()
    assert rows[0] == "date,sales_actual,sales_predicted" and rows[1].startswith("2024-01-01,")
    future = rows[-30:]
    assert [r.split(",")[0] for r in (future[0], future[-1])] == ["2024-04-30", "2024-05-29"]
    assert all(r.split(",")[1] == "" and math.isfinite(float(r.split(",")[2])) for r in future)
    assert "done: 5 steps" in outputs[3].stdout


# ------------------------------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("text, names, first", [
    ("t,a,b\n1,2.5,3\n2,3.5,4\n", ["t", "a", "b"], [1, 2.5, 3]),
    ("a;b\n1,5;2\n2,5;3\n", ["a", "b"], [1.5, 2]),  # decimal commas, as a spreadsheet writes them
    ("a,b\n1.5,x2\n2.5,3\n", None, None),  # a cell that is not a number: an error, below
    ("a\tb\n1\t2\n3\t4\n", ["a", "b"], [1, 2]),
    ("x|y\n1|2\n3|4\n", ["x", "y"], [1, 2]),
    ("1.5,30\n2.5,31\n3.0,29\n", ["column1", "column2"], [1.5, 30]),  # no header: the first row is data
    ('"YEAR","SUN"\n1700,5\n1701,11\n', ["YEAR", "SUN"], [1700, 5]),
    ("temp\n1\n2\n3\n", ["temp"], [1]),  # one column: no delimiter to sniff
    ("1\n2\n3\n", ["column1"], [1]),
    ("\ufeffdate,v\n2024-01-01,1\n2024-01-02,2\n", ["v"], [1]),  # Excel's byte-order mark; a date column
])
def test_csv_delimiter_and_header_are_detected(tmp_path, text, names, first):
    path = tmp_path / "d.csv"
    path.write_text(text)
    if names is None:
        with pytest.raises(UserError, match=r"column 'b' of d.csv has non-numeric values: row 2 has 'x2'"):
            read_csv_table(path)
        return
    table = read_csv_table(path)
    assert table.names == names and table.values[0].tolist() == first
    assert table.header == (not names[0].startswith("column")) and table.date_column in (None, "date")
    assert table.values.shape[0] == text.count("\n") - table.header


def test_csv_delimiter_flag_overrides_detection(tmp_path):
    path = tmp_path / "colon.csv"
    path.write_text("a:b\n1:2\n3:4\n5:6\n")
    with pytest.raises(UserError, match=r"no numeric column; columns: \['column1'\] \(delimiter ','; give another "
                                        r"with --delimiter\)"):
        read_csv_table(path)
    table = read_csv_table(path, delimiter=":")
    assert table.names == ["a", "b"] and table.values[:, 1].tolist() == [2, 4, 6]
    assert read_csv_table(tmp_path / "colon.csv", delimiter=":").delimiter == ":"
    (tmp_path / "t.tsv").write_text("a\tb\n1\t2\n")
    assert read_csv_table(tmp_path / "t.tsv", delimiter="tab").names == ["a", "b"]


def test_unparsable_cell_stops_with_row_column_and_value(tmp_path):
    """`12.3.4` in `temp` used to drop the whole column and train on `humidity` alone, exit 0."""
    path = tmp_path / "w.csv"
    rows = [f"{d},{20 + d % 5},{50 + d % 7}" for d in range(60)]
    rows[2] = "2,12.3.4,51"
    path.write_text("day,temp,humidity\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"column 'temp' of w.csv has non-numeric values: row 4 has '12.3.4' \(only "
                                        r"empty and NaN cells count as missing values, see --missing\)"):
        read_csv_table(path)
    proc = cli(["train", "--path", str(path), "--out-dir", str(tmp_path), "--max-steps", "1"], tmp_path, expect=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("rnnlab train: error: csv task: column 'temp' of w.csv "
                                                           "has non-numeric values: row 4 has '12.3.4'")
    assert not (tmp_path / "csv-lstm" / "checkpoint.json").exists()


def test_date_column_is_the_index(tmp_path):
    path = tmp_path / "h.csv"
    start = np.datetime64("2024-03-01T00:00")
    path.write_text("when,v\n" + "".join(f"{start + np.timedelta64(6 * k, 'h')},{k}\n" for k in range(10)))
    table = read_csv_table(path)
    assert table.names == ["v"] and table.date_column == "when"
    assert (np.diff(table.dates) == np.timedelta64(6, "h")).all() and str(table.dates[1]) == "2024-03-01T06:00:00"
    path.write_text(path.read_text().replace("2024-03-01T18:00,3", "yesterday,3"))
    with pytest.raises(UserError, match=r"row 5, column 'when': 'yesterday' is not a date"):
        read_csv_table(path)


def test_missing_values_are_worded_the_same_everywhere(tmp_path):
    """The summary said "0 missing values interpolated" with --missing error; the example config said empty cells
    are interpolated although the default is an error."""
    path = tmp_path / "m.csv"
    path.write_text("a\n" + "".join(f"{k % 9}\n" for k in range(80)))
    cfg = TaskConfig(name="csv", path=str(path), seq_len=8, batch_size=4)
    assert "no missing values" in build_task(cfg, 0).describe()
    path.write_text("a,b\n" + "".join(f"{k % 9},{'' if k == 5 else 'NaN' if k == 9 else k % 4}\n" for k in range(80)))
    with pytest.raises(UserError, match=r"2 empty or NaN value\(s\), the first in row 7 .*column 'b'; pass "
                                        r"--missing interpolate"):
        build_task(cfg, 0)
    cfg.missing = "interpolate"
    assert "2 missing values interpolated" in build_task(cfg, 0).describe()
    example = (ROOT / "configs" / "csv-example.toml").read_text()
    help_text = TaskConfig.__dataclass_fields__["missing"].metadata["help"]
    for words in ("empty or NaN", "interpolate", "not a number"):
        assert words in help_text and words in example
    assert load_config(ROOT / "configs" / "csv-example.toml").task.missing == "error"


def _series_task(tmp_path: Path, values: np.ndarray, **kw) -> tuple:
    path = tmp_path / "s.csv"
    path.write_text("v\n" + "".join(f"{float(v)!r}\n" for v in values))
    cfg = load_config(None, {"task.name": "csv", "task.path": str(path), "task.batch_size": 4,
                             "model.hidden_size": 8, **{f"task.{k}": v for k, v in kw.items()}})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    return task, build_model(cfg.model, task)


def test_eval_errors_against_analytic_baselines(tmp_path):
    """Naive on a line of slope b misses step k (0-based) by b (k + 1); seasonal naive with period P by
    b P ceil((k + 1) / P); on a series of period P it is exact. The model's errors equal the ones computed from
    the validation targets, unscaled."""
    b, h = 0.5, 3
    task, model = _series_task(tmp_path, 3 + b * np.arange(100.0), seq_len=10, horizon=h)
    err = forecast_errors(task, model, period=2)
    k = np.arange(h)
    assert err["naive_mae_v"] == pytest.approx(b * (k + 1).mean(), rel=1e-12)
    assert err["naive_rmse_v"] == pytest.approx(b * np.sqrt(((k + 1) ** 2).mean()), rel=1e-12)
    assert err["seasonal_mae_v"] == pytest.approx(b * 2 * np.ceil((k + 1) / 2).mean(), rel=1e-12)
    pred = predict_windows(model, task.x_val) * task.scaler.scale[0] + task.scaler.shift[0]
    actual = task.y_val.double().numpy() * task.scaler.scale[0] + task.scaler.shift[0]
    assert err["mae_v"] == pytest.approx(np.abs(pred - actual).mean(), rel=1e-5)
    assert err["rmse_v"] == pytest.approx(np.sqrt(((pred - actual) ** 2).mean()), rel=1e-5)
    periodic = np.tile([1.0, 4.0, 2.0, 8.0, 5.0], 20)
    task, model = _series_task(tmp_path, periodic, seq_len=10, horizon=h)
    assert forecast_errors(task, model, period=5)["seasonal_mae_v"] == 0.0
    with pytest.raises(UserError, match="--period 500 is longer than the 90 points"):
        forecast_errors(task, model, period=500)


def test_forecast_horizon_iterates_the_model(tmp_path):
    """Beyond the trained horizon, the forecast is fed back as input and the model run again."""
    task, model = _series_task(tmp_path, np.sin(np.arange(100.0) / 3), seq_len=10, horizon=2)
    history = task.x_val[-1].double().numpy()  # (10, 1) scaled
    got = forecast_ahead(model, history, ["v"], ["v"], horizon=2, steps=5)
    window, want = history, []
    while len(want) < 5:
        with torch.no_grad():
            out, _ = model(torch.tensor(window[:, None, :], dtype=torch.float32))  # (10, 1, 2)
        step = out[-1, 0].double().numpy().reshape(2, 1)
        want.extend(step)
        window = np.concatenate([window, step])[-10:]
    np.testing.assert_allclose(got, np.array(want[:5]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(forecast_ahead(model, history, ["v"], ["v"], 2, 1), got[:1], rtol=1e-6)
    with pytest.raises(UserError, match=r"does not forecast its input column\(s\) \['w'\]"):
        forecast_ahead(model, np.zeros((10, 2)), ["v", "w"], ["v"], horizon=2, steps=3)


# ------------------------------------------------------------------------------------------------- text


def test_nul_bytes_and_text_without_newline_have_a_prime_the_model_knows(tmp_path):
    """A file of NUL bytes trained, then failed on the prime '\\n'; so did any text without a newline."""
    (tmp_path / "nul.txt").write_bytes(b"\0" * 3000)
    task = build_task(TaskConfig(name="text", path=str(tmp_path / "nul.txt"), batch_size=4, seq_len=16), 0)
    assert task.vocab == ["\0"] and default_prime(task.vocab) == "\0"
    model = build_model(load_config(None, {"model.hidden_size": 4}).model, task)
    assert generate_text(model, task.vocab, length=5) == "\0" * 5
    assert default_prime(["a", "b", " "]) == " " and default_prime(["\n", "a"]) == "\n"
    vocab, ids = load_text_ids(_write(tmp_path / "u.txt", "\ufeffnaïve café\r\nüber\rrocks"))
    assert vocab.decode(ids) == "naïve café\nüber\nrocks"  # newlines as open() reads them; no byte-order mark


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("n_chars", [40, 300, 3000, 9000])
def test_short_text_suggestion_fits(n_chars):
    """The suggested --batch-size and --seq-len build a task on the same text."""
    text = _words(n_chars)
    cut = int(n_chars * 0.9)
    from rnnlab.data.text import CharVocab

    with pytest.raises(UserError, match=r"too short for batch_size=32 x seq_len=128 .*; try --batch-size (\d+) "
                                        r"--seq-len (\d+)") as info:
        CharLMTask("text", text[:cut], text[cut:], CharVocab(text), 32, 128, 0)
    b, s = (int(v) for v in re.search(r"--batch-size (\d+) --seq-len (\d+)", str(info.value)).groups())
    assert (b, s) == fitting_batch_shape(cut, 32, 128)
    task = CharLMTask("text", text[:cut], text[cut:], CharVocab(text), b, s, 0)
    assert task.steps_per_epoch >= 1 and task.train_batch(task.steps_per_epoch - 1).x.shape == (s, b)


def test_short_text_cli_message_then_the_suggestion_trains(tmp_path):
    (tmp_path / "poem.txt").write_text(_words(3000))
    err = cli(["train", "--path", "poem.txt", "--name", "p"], tmp_path, expect=2).stderr.strip().splitlines()[-1]
    flags = re.search(r"try (--batch-size \d+ --seq-len \d+)$", err).group(1).split()
    cli(["train", "--path", "poem.txt", "--name", "p2", *flags, "--max-steps", "2", "--hidden-size", "8"], tmp_path)


# ------------------------------------------------------------------------------------------------- large inputs


_MEASURE = """
import resource, sys
from rnnlab.data import build_task
from rnnlab.train.config import TaskConfig
kind, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = (TaskConfig(name="text", path=path, batch_size=32, seq_len=128) if kind == "text" else
       TaskConfig(name="csv", path=path, batch_size=32, seq_len=48, horizon=2))
task = build_task(cfg, 0)
task.train_batch(0), task.train_batch(task.steps_per_epoch - 1), next(iter(task.val_batches()))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _peak_growth(kind: str, path: Path) -> int:
    """Bytes by which building the task and three batches raise the peak RSS of a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, kind, str(path)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_large_text_memory_does_not_grow_with_the_file(tmp_path):
    """A 48 MB text used to need ~22x its size (a str, its UTF-32 copy, int64 tensors: measured 1.26 GB for 57 MB);
    read in 1 MiB chunks into memory-mapped ids, it costs the chunks and the pages batches touch."""
    path = tmp_path / "big.txt"
    line = (_words(1 << 20) + "\n").encode()
    with path.open("wb") as f:
        for _ in range(48):
            f.write(line)
    size = path.stat().st_size
    growth = _peak_growth("text", path)
    assert growth < 32e6 + 0.1 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB text"


def test_large_csv_memory_is_a_few_bytes_per_number(tmp_path):
    """A CSV used to be held as Python lists of strings, then as windows of seq_len copies (measured 118x the
    file); streamed into one float64 array with windows as views, the peak is a small multiple of the file."""
    path = tmp_path / "big.csv"
    start = np.datetime64("2000-01-01T00:00")
    with path.open("w") as f:
        f.write("time,a,b,c\n")
        for k in range(0, 120_000, 1000):
            f.write("".join(f"{start + np.timedelta64(i, 'h')},{i % 97 / 7:.4f},{i * 7 % 13},{i % 5}\n"
                            for i in range(k, k + 1000)))
    size = path.stat().st_size
    growth = _peak_growth("csv", path)
    assert growth < 10 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.1f} MB CSV"


# ------------------------------------------------------------------------------------------------- friction


def test_warning_prefix_is_not_doubled():
    assert _one_line_warning("rnnlab: no C++ compiler found", UserWarning, "x.py", 1) == \
        "rnnlab: warning: no C++ compiler found\n"
    assert _one_line_warning("checkpoint: damaged", UserWarning, "x.py", 1) == "rnnlab: warning: checkpoint: damaged\n"


def test_subcommand_errors_point_to_the_subcommand_help(tmp_path):
    proc = cli(["train", "--bogus"], tmp_path, expect=2)
    assert proc.stderr == "rnnlab train: error: unrecognized arguments: --bogus (see `rnnlab train --help`)\n"
    proc = cli(["forecast", "run", "--horizon", "x"], tmp_path, expect=2)
    assert proc.stderr.endswith("(see `rnnlab forecast --help`)\n") and proc.stderr.count("\n") == 1


def test_interrupted_says_the_saved_step_and_how_to_resume(tmp_path):
    (tmp_path / "t.txt").write_text(_words(20000))
    args = ["train", "--path", "t.txt", "--name", "t", "--hidden-size", "8", "--max-steps", "100000",
            "--checkpoint-every", "1", "--eval-every", "0", "--no-progress"]
    proc = subprocess.Popen(rnnlab_command() + args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "runs" / "t" / "checkpoint.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and proc.returncode == 130, err
    m = re.search(r"rnnlab train: interrupted at step \d+; the checkpoint of step (\d+) is in (\S+); continue "
                  r"with `(rnnlab train --resume \S+)`$", err.strip())
    assert m, err
    step = int(m.group(1))
    assert (tmp_path / "runs" / "t" / ".lock").read_text() == ""  # the run's lock was released
    resumed = cli(shlex.split(m.group(3))[1:] + ["--max-steps", str(step + 1)], tmp_path)
    assert f"resuming at step {step}" in resumed.stderr and f"done: {step + 1} steps" in resumed.stdout
