"""Run folders are safe, data is identified, resources are checked, and user-caused errors are one line (issue 17).

Every CLI case runs the installed ``rnnlab`` console script in a subprocess, as a user would (the rest of the
suite calls ``rnnlab.cli.main`` in-process). A read-only folder is made with ``chattr +i`` (the tests run as root
in CI, where ``chmod`` stops nothing) and a full disk is a small tmpfs of its own; each case skips, saying why,
where that is impossible. Heavy cases are marked ``slow``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _cli import rnnlab_command

TINY = ["--hidden-size", "12", "--embed-size", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "3",
        "--eval-every", "0", "--final-eval-batches", "1", "--checkpoint-every", "1", "--log-every", "1",
        "--no-progress", "--no-plots", "--no-tensorboard", "--threads", "1", "--backend", "reference",
        "--sample-length", "0"]
TEXT = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 40


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RNNLAB_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="default", **extra)
    return env


def rnnlab(*argv: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*rnnlab_command(), *map(str, argv)], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=300)


def start(*argv: str | Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([*rnnlab_command(), *map(str, argv)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_error_line(proc: subprocess.CompletedProcess, pattern: str) -> str:
    """The run exited 2 with exactly one stderr line matching ``pattern`` and no traceback; returns the line."""
    import re

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def the_error_line(proc: subprocess.CompletedProcess, pattern: str) -> str:
    """For a command that failed while it ran: exit 2, no traceback, one error line (the last) matching
    ``pattern``, after the lines it printed while it went well."""
    import re

    errors = [line for line in proc.stderr.splitlines() if ": error:" in line]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0] and re.search(pattern, errors[0]), errors[0]
    return errors[0]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file's name and SHA-256 (the lock file aside: it holds the PID of whoever holds it, or nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def checkpoint_step(run: Path) -> int:
    return int(json.loads((run / "checkpoint.json").read_text())["step"])


def _train_text_run(root: Path) -> Path:
    """A finished 3-step character model on root/data/tiny.txt, trained from root with relative paths."""
    (root / "data").mkdir()
    (root / "data" / "tiny.txt").write_text(TEXT)
    proc = rnnlab("train", "--task", "text", "--path", "data/tiny.txt", *TINY, "--out-dir", "runs", "--name", "t",
                  cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "runs" / "t"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run shared by the cases that must leave it as it was (each checks that it did)."""
    return _train_text_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture
def text_run(tmp_path) -> Path:
    """A finished run of the test's own, for the cases that change it or its data."""
    return _train_text_run(tmp_path)


@contextlib.contextmanager
def immutable(*paths: Path):
    """``chattr -R +i`` (no write, create, delete or rename, also for root); undone on exit."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: cannot make a folder read-only for root")
    done = []
    try:
        for path in paths:
            result = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"chattr +i is not possible here ({result.stderr.strip()}): no read-only folder")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """A tmpfs of ``size`` mounted at ``where`` (a disk that fills up); unmounted on exit."""
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}): no full disk to test")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# -- 1. nothing overwrites a run; one writer at a time; a crashed writer's lock is taken over ---------------------

def test_training_again_under_a_run_name_is_refused(finished):
    before = fingerprint(finished)
    again = rnnlab("train", "--task", "text", "--path", "data/tiny.txt", *TINY, "--out-dir", "runs", "--name", "t",
                   cwd=finished.parent.parent)
    line = one_error_line(again, r"already holds a run")
    assert "--resume" in line and "--overwrite" in line and "--name" in line
    assert fingerprint(finished) == before, "a refused run changed the existing one"


def test_overwrite_replaces_the_whole_run(text_run, tmp_path):
    (text_run / "model.onnx").write_bytes(b"an export of the old run")
    (text_run / "forecast.csv").write_text("index\n")
    over = rnnlab("train", "--task", "text", "--path", "data/tiny.txt", *TINY, "--max-steps", "2", "--out-dir",
                  "runs", "--name", "t", "--overwrite", cwd=tmp_path)
    assert over.returncode == 0, over.stderr[-2000:]
    assert not (text_run / "model.onnx").exists(), "--overwrite left the old run's ONNX file"
    assert not (text_run / "forecast.csv").exists()
    assert checkpoint_step(text_run) == 2
    steps = [line.split(",")[0] for line in (text_run / "train.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2"]  # the new run's rows only


def test_two_trainings_into_one_run_at_once_one_trains_the_other_exits_2(tmp_path):
    (tmp_path / "tiny.txt").write_text(TEXT)
    common = ["train", "--task", "text", "--path", "tiny.txt", *TINY, "--max-steps", "300", "--checkpoint-every",
              "50", "--log-every", "50", "--out-dir", "runs", "--name", "both"]
    # Two different models (size, seed), so that a mixed folder would show: config of one, weights of the other.
    procs = [start(*common, "--hidden-size", "12", "--seed", "1", cwd=tmp_path),
             start(*common, "--hidden-size", "20", "--seed", "2", cwd=tmp_path)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-800:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2)
    lines = [line for line in loser_err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser_err, loser_err
    # The loser met the lock (the usual case), or came after the winner had finished and met its run.
    if "in use" in lines[0]:
        assert f"(PID {winner.pid})" in lines[0], lines[0]
    else:
        assert "already holds a run" in lines[0], lines[0]

    run = tmp_path / "runs" / "both"
    saved = json.loads((run / "checkpoint.json").read_text())["config"]
    assert json.loads((run / "config.json").read_text()) == saved  # one run's config and weights
    assert saved["train"]["max_steps"] == 300 and checkpoint_step(run) == 300
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if r["split"] == "train"] == [50, 100, 150, 200, 250, 300]
    gen = rnnlab("generate", run, "--prime", "Thou", "--length", "30", "--seed", "3")
    assert gen.returncode == 0 and gen.stdout.startswith("Thou") and len(gen.stdout.rstrip("\n")) >= 34, gen.stderr


def test_a_run_killed_with_sigkill_is_resumed_and_its_stale_lock_taken_over(tmp_path):
    (tmp_path / "tiny.txt").write_text(TEXT)
    proc = start("train", "--task", "text", "--path", "tiny.txt", *TINY, "--max-steps", "100000", "--out-dir",
                 "runs", "--name", "k", cwd=tmp_path)
    run = tmp_path / "runs" / "k"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / "checkpoint.json").is_file() and checkpoint_step(run) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".lock").read_text().split()[0] == str(proc.pid)  # the dead holder's PID is still recorded
    resumed = rnnlab("train", "--resume", run, "--max-steps", str(checkpoint_step(run) + 2))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    notices = [line for line in resumed.stderr.splitlines() if "taking over the lock" in line]
    assert len(notices) == 1 and f"PID {proc.pid}" in notices[0], resumed.stderr
    assert (run / ".lock").read_text() == ""  # released at the end


@pytest.mark.slow  # tests/test_crash_safety.py covers the cut at the checkpoint in-process
def test_logs_are_cut_back_to_the_checkpoint_and_a_half_written_line_dropped_on_resume(text_run):
    for name, junk in (("train.csv", "9,0.5,1.0,0"), ("val.csv", "4"), ("metrics.jsonl", '{"split": "tr')):
        with (text_run / name).open("a") as f:  # a crash (or a full disk) in the middle of a line
            f.write(junk)
    with (text_run / "train.csv").open("a") as f:
        f.write("\n7,0.1,0.1,0,0.001,1,0\n")  # a whole row past the checkpoint's step 3
    resumed = rnnlab("train", "--resume", text_run, "--max-steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [line.split(",")[0] for line in (text_run / "train.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
    records = [json.loads(line) for line in (text_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]


def test_atomic_write_keeps_the_old_file_when_the_rename_or_the_write_fails(tmp_path, monkeypatch):
    from rnnlab.errors import UserError
    from rnnlab.train.runfolder import atomic_write

    target = tmp_path / "config.json"
    atomic_write(target, "old")

    def no_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(UserError, match=r"cannot write .*config\.json: No space left on device"):
        atomic_write(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


# -- 3. data is identified: changed data refused, moved data found, the saved vocabulary used --------------------

@pytest.fixture
def changed_data(finished):
    """The finished run's text, changed: the same characters and size in another order (the case that was
    silently remapped); restored afterwards."""
    data = finished.parent.parent / "data" / "tiny.txt"
    data.write_text(TEXT[::-1])
    yield data
    data.write_text(TEXT)


@pytest.mark.parametrize("argv", [["train", "--resume", "{run}", "--max-steps", "5"], ["eval", "{run}"],
                                  pytest.param(["generate", "{run}", "--length", "5"], marks=pytest.mark.slow)],
                         ids=["resume", "eval", "generate"])
def test_changed_text_is_refused(argv, finished, changed_data):
    before = fingerprint(finished)
    line = one_error_line(rnnlab(*[a.replace("{run}", str(finished)) for a in argv]),
                          r"data changed since this run was trained")
    assert str(changed_data) in line and "SHA-256" in line and "--accept-changed-data" in line
    assert fingerprint(finished) == before


def test_changed_text_is_accepted_by_a_flag(finished, changed_data):
    accepted = rnnlab("eval", finished, "--accept-changed-data", "--json")
    assert accepted.returncode == 0, accepted.stderr
    warnings = [line for line in accepted.stderr.splitlines() if "data changed" in line]
    assert len(warnings) == 1 and str(changed_data) in warnings[0]


def test_eval_works_from_another_folder(finished, tmp_path):
    here = rnnlab("eval", finished, "--json", cwd=tmp_path)  # trained with data/tiny.txt relative to its root
    assert here.returncode == 0, here.stderr
    assert json.loads(here.stdout)["step"] == 3


@pytest.mark.slow
def test_eval_works_after_the_project_moved(text_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = rnnlab("eval", text_run, "--json", cwd=elsewhere)
    assert here.returncode == 0, here.stderr
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "data", moved / "data")
    shutil.move(tmp_path / "runs", moved / "runs")
    there = rnnlab("eval", moved / "runs" / "t", "--json", cwd=elsewhere)
    assert there.returncode == 0, there.stderr
    assert json.loads(there.stdout)["val_loss"] == json.loads(here.stdout)["val_loss"]
    (moved / "data" / "tiny.txt").unlink()
    one_error_line(rnnlab("eval", moved / "runs" / "t"), r"data file not found: .*tiny\.txt")


def test_resume_and_eval_use_the_runs_saved_vocabulary(tmp_path):
    """Changed text with fewer characters, accepted: the task is encoded with the run's vocabulary (ids keep
    their meaning), not a new one rebuilt from the text (which would shift every id after the missing one)."""
    import torch

    from rnnlab.data.text import CharVocab
    from rnnlab.train.config import load_config
    from rnnlab.train.run import build_model_and_task

    saved_vocab = CharVocab(TEXT).chars  # what the run trained on wrote to task.json
    changed = TEXT.replace("?", "")
    (tmp_path / "tiny.txt").write_text(changed)
    cfg = load_config(None, {"task.name": "text", "task.path": str(tmp_path / "tiny.txt"), "task.batch_size": 4,
                             "task.seq_len": 16, "model.hidden_size": 8})
    _, rebuilt = build_model_and_task(cfg)
    assert rebuilt.vocab != saved_vocab  # what resume and eval used to do
    model, task = build_model_and_task(cfg, vocab=saved_vocab)  # what they do now
    assert task.vocab == saved_vocab and task.input_size == len(saved_vocab) == model.embed.num_embeddings
    val = torch.cat([b.x for b in task.val_batches()]).t().reshape(-1)  # the model's ids, stream after stream
    cut = int(len(changed) * (1 - cfg.task.val_fraction))
    assert "".join(saved_vocab[i] for i in val.tolist()) == changed[cut:cut + val.numel()]


@pytest.mark.slow
def test_forecast_finds_the_csv_from_any_folder_and_refuses_it_changed(tmp_path):
    series = "".join(f"{i % 7},{(i * 3) % 11}\n" for i in range(80))
    (tmp_path / "series.csv").write_text("a,b\n" + series)
    trained = rnnlab("train", "--task", "csv", "--path", "series.csv", "--hidden-size", "8", "--batch-size", "4",
                     "--seq-len", "6", "--max-steps", "2", "--eval-every", "0", "--final-eval-batches", "1",
                     "--no-progress", "--no-plots", "--no-tensorboard", "--threads", "1", "--out-dir", "runs",
                     "--name", "c", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = rnnlab("forecast", tmp_path / "runs" / "c", cwd=elsewhere)  # trained with series.csv relative to tmp_path
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "runs" / "c" / "forecast.csv").is_file()
    (tmp_path / "series.csv").write_text("a,b\n" + series.replace("3,", "4,"))
    one_error_line(rnnlab("forecast", tmp_path / "runs" / "c", cwd=elsewhere),
                   r"data changed since this run was trained: .*series\.csv")


# -- 5. errors a user can cause: one line, exit 2, the run as it was -----------------------------------------------

def test_resume_with_another_batch_size_is_refused_and_config_kept(finished):
    before = fingerprint(finished)
    line = one_error_line(rnnlab("train", "--resume", finished, "--batch-size", "8"),
                          r"--resume cannot change task\.batch_size \(4 -> 8\)")
    assert "another --name" in line
    assert fingerprint(finished) == before  # config.json still matches the checkpoint


def test_a_model_too_big_for_memory_is_refused_before_it_is_allocated(tmp_path):
    t0 = time.monotonic()
    proc = rnnlab("train", "--task", "sine", "--hidden-size", "100000", "--out-dir", tmp_path, "--name", "big")
    one_error_line(proc, r"needs about [\d.]+ GB of memory \(model [\d.]+ GB: 40,00\d,\d{3},\d{3} parameters.* "
                         r"but [\d.]+ (GB|MB) is available")
    assert time.monotonic() - t0 < 120  # an attempt at 160 GB would swap or be killed, not exit at once
    assert not (tmp_path / "big").exists()


def test_read_only_run_folder_resume_is_one_line_and_leaves_it(finished):
    before = fingerprint(finished)
    with immutable(finished):
        one_error_line(rnnlab("train", "--resume", finished, "--max-steps", "5"), r"not writable")
    assert fingerprint(finished) == before


@pytest.mark.slow
def test_read_only_folders_for_a_new_run_forecast_and_export(tmp_path):
    csv = tmp_path / "series.csv"
    csv.write_text("a,b\n" + "".join(f"{i % 7},{(i * 3) % 11}\n" for i in range(80)))
    trained = rnnlab("train", "--task", "csv", "--path", csv, "--hidden-size", "8", "--batch-size", "4",
                     "--seq-len", "6", "--max-steps", "2", "--eval-every", "0", "--final-eval-batches", "1",
                     "--no-progress", "--no-plots", "--no-tensorboard", "--threads", "1", "--out-dir",
                     tmp_path / "runs", "--name", "c")
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = tmp_path / "runs" / "c"
    before = fingerprint(run)
    with immutable(tmp_path / "runs"):
        one_error_line(rnnlab("train", "--task", "sine", "--num-samples", "16", "--hidden-size", "4",
                              "--max-steps", "1", "--out-dir", tmp_path / "runs", "--name", "new"),
                       r"run folder .*new: cannot create it")
        one_error_line(rnnlab("forecast", run), r"not writable")
        one_error_line(rnnlab("export", run, "--no-verify"), r"not writable|onnx")
    assert fingerprint(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("room", [0, 16384], ids=["full", "almost-full"])
def test_a_full_disk_during_training_is_one_line_and_the_last_checkpoint_survives(room, tmp_path):
    """A resumed run on a disk with no room (its config fails) or a little (a log line or a checkpoint fails)."""
    (tmp_path / "tiny.txt").write_text(TEXT)
    with small_filesystem(tmp_path / "disk", "3m") as disk:
        trained = rnnlab("train", "--task", "text", "--path", tmp_path / "tiny.txt", *TINY, "--out-dir", disk,
                         "--name", "f")
        assert trained.returncode == 0, trained.stderr[-2000:]
        run = disk / "f"
        config_before = (run / "config.json").read_bytes()
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as f:
            while True:  # fill the disk, to the last block
                f.write(b"\0" * 4096)
        os.truncate(disk / "filler", max(0, (disk / "filler").stat().st_size - room))
        resumed = rnnlab("train", "--resume", run, "--max-steps", "40")
        the_error_line(resumed, r"(cannot (write|access) .*: |not writable \()No space left on device")
        if room == 0:
            assert (run / "config.json").read_bytes() == config_before
        (disk / "filler").unlink()
        ok = rnnlab("eval", run, "--json")  # the last checkpoint survived, intact
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["step"] >= 3
        resumed = rnnlab("train", "--resume", run, "--max-steps", "40")  # and the run goes on
        assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_an_internal_error_is_one_line_unless_rnnlab_debug(monkeypatch, capsys):
    """A bug (not the user's doing) is one line, exit 1, naming RNNLAB_DEBUG; with RNNLAB_DEBUG=1 it raises."""
    from rnnlab import cli
    from rnnlab.commands import eval as eval_command

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(eval_command, "run", broken)
    monkeypatch.delenv("RNNLAB_DEBUG", raising=False)
    assert cli.main(["eval", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: something inside broke" in err and "RNNLAB_DEBUG=1" in err
    monkeypatch.setenv("RNNLAB_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something inside broke"):
        cli.main(["eval", "x"])
