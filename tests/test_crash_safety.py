"""Crash safety and checkpoint integrity.

* SIGKILL at random points of training (between steps, while a checkpoint file is half written, between the
  renames that publish a checkpoint), resume each time with ``rnnlab train --resume``: the final weights are
  bit-identical to an uninterrupted run, on the reference loop and on the fused (default) backend. The default
  run kills 6 times per backend; the ``slow`` run at least 20.
* A truncated or altered checkpoint (either file) is detected by its SHA-256 checksums with a clear error, and
  the previous good checkpoint (``checkpoint.prev.*``) is used instead.
* A pickle (``torch.save``/``.pt``) offered as a checkpoint is refused without being unpickled: its payload would
  create a file, and the file never appears.

This file is also the driver of the killed processes: ``python test_crash_safety.py RUN_DIR KILL BACKEND`` trains
(or resumes) the run in ``RUN_DIR`` and SIGKILLs itself at the point ``KILL`` names.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

BASE = ["--task", "sine", "--num-samples", "32", "--batch-size", "4", "--seq-len", "8", "--hidden-size", "6",
        "--num-layers", "2", "--dropout", "0.3", "--eval-every", "0", "--final-eval-batches", "1",
        "--checkpoint-every", "1", "--log-every", "1", "--no-progress", "--no-plots", "--no-tensorboard",
        "--threads", "1", "--bptt-stride", "4", "--bptt-horizon", "6"]
# The kill/resume runs train on the reference loop and on the fused kernels (the default backend, what users
# resume; pinned here so that RNNLAB_BACKEND cannot change it); the checkpoint tests on the reference loop.
BACKENDS = {"reference": ["--backend", "reference"], "fused": ["--backend", "fused"]}
CONFIG = [*BASE, *BACKENDS["reference"]]


# -- the driver (runs in the killed subprocesses) --------------------------------------------------------------

def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill: str) -> None:
    """Make this process SIGKILL itself at the point ``kill`` names: ``replace:N`` just before the N-th
    ``os.replace`` (publishing a checkpoint file, or rotating the previous one); ``write:N`` at the N-th
    ``os.fsync`` of a file being written, after cutting it to half its bytes (a crash mid-write); ``step:N`` in
    the middle of the N-th training step (after the backward, before the optimizer step); ``none`` never."""
    what, _, n = kill.partition(":")
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == int(n)

    if what == "replace":
        real = os.replace

        def replace(src, dst, *a, **k):
            if hit():
                _die()
            return real(src, dst, *a, **k)

        os.replace = replace
    elif what == "write":
        real_fsync = os.fsync

        def fsync(fd):
            if hit():  # the file being written is cut to half, as if the process died mid-write
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                _die()
            return real_fsync(fd)

        os.fsync = fsync
    elif what == "step":
        from rnnlab.train import trainer as tr

        real_clip = tr.clip_gradients

        def clip(*a, **k):
            if hit():
                _die()
            return real_clip(*a, **k)

        tr.clip_gradients = clip


def drive(run_dir: str, kill: str, backend: str = "reference") -> int:
    """Train the run in ``run_dir`` (resuming when it has a checkpoint) on ``backend`` (a key of BACKENDS; a
    resume takes it from the run's config) until done or killed."""
    torch.set_num_threads(1)
    _arm(kill)
    from rnnlab.cli import main

    run = Path(run_dir)
    if (run / "checkpoint.json").exists() or (run / "checkpoint.prev.json").exists():
        return main(["train", "--resume", str(run)])
    return main(["train", *BASE, *BACKENDS[backend], "--max-steps", os.environ["CRASH_MAX_STEPS"],
                 "--out-dir", str(run.parent), "--name", run.name])


# -- helpers ---------------------------------------------------------------------------------------------------

def _wait_for_training(run_dir: Path, alive) -> None:
    """Until the process has logged a training step beyond what the folder held (or exited)."""
    import time

    train_csv = run_dir / "train.csv"
    start_rows = len(train_csv.read_text().splitlines()) if train_csv.exists() else 0
    deadline = time.monotonic() + 120
    while alive() and time.monotonic() < deadline:
        if train_csv.exists() and len(train_csv.read_text().splitlines()) > max(start_rows, 1):
            return
        time.sleep(0.005)


def _run_subprocess(run_dir: Path, kill: str, max_steps: int, external_kill_after: float | None,
                    backend: str) -> int:
    """Drive the run in a fresh interpreter (``python this_file.py``); returns its exit status (-9: SIGKILL)."""
    import time

    env = dict(os.environ, CRASH_MAX_STEPS=str(max_steps), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), str(run_dir), kill, backend]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if external_kill_after is not None:
        _wait_for_training(run_dir, lambda: proc.poll() is None)
        time.sleep(external_kill_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


def _run_forked(run_dir: Path, kill: str, max_steps: int, external_kill_after: float | None, backend: str) -> int:
    """Drive the run in a forked child (no interpreter start-up: torch is already imported); same exit codes.

    The child is a separate process killed by a real SIGKILL, so what it leaves on disk is exactly what a
    crash leaves; only the start-up is shared with this process.
    """
    import time

    os.environ["CRASH_MAX_STEPS"] = str(max_steps)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            import warnings

            warnings.simplefilter("ignore")
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = drive(str(run_dir), kill, backend)
        finally:
            os._exit(code)
    if external_kill_after is not None:
        _wait_for_training(run_dir, lambda: os.waitpid(pid, os.WNOHANG) == (0, 0))
        time.sleep(external_kill_after)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by the WNOHANG poll: it had exited
        return 0
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    assert code == 0, f"driver exited with {code}"
    return code


def _final_weights(run_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    from rnnlab.train.checkpoint import load_checkpoint

    state, _ = load_checkpoint(run_dir)
    return state["step"], state["model"]


def _kill_plan(n: int, seed: int) -> list[tuple[str, float | None]]:
    """n kill points: every kind in turn (replace, write, step, external), the position drawn at random."""
    rng = random.Random(seed)
    kinds = ["replace", "write", "step", "external"]
    plan = []
    for k in range(n):
        kind = kinds[k % len(kinds)]
        if kind == "external":
            plan.append(("none", rng.uniform(0.0, 0.3)))
        else:
            plan.append((f"{kind}:{rng.randint(1, 8 if kind != 'step' else 3)}", None))
    return plan


def _kill_resume_until_done(tmp_path: Path, kills: int, max_steps: int, seed: int, runner, backend: str) -> int:
    from rnnlab.cli import main

    assert main(["train", *BASE, *BACKENDS[backend], "--max-steps", str(max_steps), "--out-dir", str(tmp_path),
                 "--name", "straight"]) == 0
    want_step, want = _final_weights(tmp_path / "straight")
    assert want_step == max_steps

    crashed = tmp_path / "crashed"
    killed, attempts, plan = 0, 0, _kill_plan(kills * 3, seed)
    damaged_latest = 0  # kills that left the latest checkpoint damaged, so that the resume had to fall back
    while killed < kills:
        assert attempts < len(plan), f"only {killed} kills landed in {attempts} attempts"
        kill, external = plan[attempts]
        attempts += 1
        if runner(crashed, kill, max_steps, external, backend) == -signal.SIGKILL:
            killed += 1
            damaged_latest += _latest_is_damaged(crashed)
            continue
        # it finished before the kill point: check it, then start over so that the kills keep counting
        got_step, got = _final_weights(crashed)
        _assert_bit_identical(got_step, got, want_step, want)
        shutil.rmtree(crashed)
    assert runner(crashed, "none", max_steps, None, backend) == 0
    got_step, got = _final_weights(crashed)
    _assert_bit_identical(got_step, got, want_step, want)
    return damaged_latest


def _latest_is_damaged(run_dir: Path) -> int:
    """1 if the run has a checkpoint but its latest pair fails verification (the resume must use .prev)."""
    from rnnlab.errors import UserError
    from rnnlab.train.checkpoint import load_checkpoint

    if not (run_dir / "checkpoint.prev.json").exists():
        return 0
    try:
        load_checkpoint(run_dir)
    except UserError:
        return 1
    return 0


def _assert_bit_identical(got_step, got, want_step, want) -> None:
    assert got_step == want_step
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs after kill/resume"


# -- SIGKILL and resume ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (the slow variant spawns interpreters)")
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sigkill_and_resume_is_bit_identical(tmp_path, backend):
    damaged = _kill_resume_until_done(tmp_path, kills=6, max_steps=14, seed=0, runner=_run_forked, backend=backend)
    assert damaged >= 1, "no kill left the latest checkpoint damaged: the fallback path was not exercised"


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sigkill_and_resume_is_bit_identical_20_kills(tmp_path, backend):
    damaged = _kill_resume_until_done(tmp_path, kills=24, max_steps=80, seed=1, runner=_run_subprocess,
                                      backend=backend)
    assert damaged >= 1


# -- checksums and fallback ------------------------------------------------------------------------------------

def _two_checkpoints(tmp_path: Path) -> Path:
    """A folder with checkpoint.* at step 2 and checkpoint.prev.* at step 1."""
    from rnnlab.train.checkpoint import save_checkpoint

    for step in (1, 2):
        save_checkpoint(tmp_path, {"step": step, "w": torch.full((64,), float(step))}, {"cfg": step})
    return tmp_path


def _tamper(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip_last_byte":  # inside the tensor data: the file still parses
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "edit_json":  # valid JSON, a changed value
        doc = json.loads(data)
        doc["config"]["cfg"] = 99
        path.write_text(json.dumps(doc))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("target,how", [("safetensors", "truncate"), ("safetensors", "flip_last_byte"),
                                        ("safetensors", "empty"), ("json", "truncate"), ("json", "edit_json")])
def test_damaged_checkpoint_is_detected_and_previous_used(tmp_path, target, how):
    from rnnlab.errors import UserError
    from rnnlab.train.checkpoint import load_checkpoint

    folder = _two_checkpoints(tmp_path)
    state, cfg = load_checkpoint(folder)
    assert state["step"] == 2 and cfg == {"cfg": 2}
    _tamper(folder / f"checkpoint.{target}", how)
    with pytest.raises(UserError, match=r"checkpoint: .*checkpoint\.(json|safetensors).*(checksum|truncated|"
                                        r"not valid JSON|step)"):
        load_checkpoint(folder)  # strict: a clear error, never the damaged data
    with pytest.warns(UserWarning, match=r"using the previous checkpoint .*checkpoint\.prev\.json \(step 1\)"):
        state, cfg = load_checkpoint(folder, fallback=True)
    assert state["step"] == 1 and cfg == {"cfg": 1}
    assert torch.equal(state["w"], torch.full((64,), 1.0))


def test_both_checkpoints_damaged_is_one_clear_error(tmp_path):
    from rnnlab.errors import UserError
    from rnnlab.train.checkpoint import load_checkpoint

    folder = _two_checkpoints(tmp_path)
    _tamper(folder / "checkpoint.safetensors", "flip_last_byte")
    _tamper(folder / "checkpoint.prev.json", "truncate")
    with pytest.raises(UserError, match=r"no intact checkpoint in .*checkpoint\.json: .*checkpoint\.prev\.json: "):
        load_checkpoint(folder, fallback=True)


def test_cli_resume_falls_back_to_previous_checkpoint_and_finishes_identically(tmp_path, capsys):
    """Resume from a run whose latest checkpoint was altered: it continues from the previous one and ends with
    exactly the weights of an uninterrupted run."""
    from rnnlab.cli import main

    assert main(["train", *CONFIG, "--max-steps", "6", "--out-dir", str(tmp_path), "--name", "straight"]) == 0
    _, want = _final_weights(tmp_path / "straight")
    # the same run, then its final (step 6) checkpoint altered: the resume must use step 5 and redo step 6
    assert main(["train", *CONFIG, "--max-steps", "6", "--out-dir", str(tmp_path), "--name", "cut"]) == 0
    cut = tmp_path / "cut"
    _tamper(cut / "checkpoint.safetensors", "flip_last_byte")
    with pytest.warns(UserWarning, match=r"checksum"):
        assert main(["train", "--resume", str(cut)]) == 0
    step, got = _final_weights(cut)
    _assert_bit_identical(step, got, 6, want)


def _same(a, b) -> bool:
    """Exact equality of two decoded states (tensors with torch.equal, everything else with ==)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_random_damage(target: str, op: str, where: float, byte: int) -> None:
    """One random change to one file: the strict load raises a UserError or returns exactly the saved state (a
    change that leaves the JSON's content equal, e.g. in whitespace, is harmless); the fallback load returns the
    latest or the previous state exactly. Never another exception, never different data."""
    import tempfile

    from rnnlab.errors import UserError
    from rnnlab.train.checkpoint import load_checkpoint, save_checkpoint

    states = [{"step": k, "w": torch.arange(24.0).view(4, 6) * k, "opt": {0: {"m": torch.ones(3) * k}},
               "rng": torch.get_rng_state(), "t": (k, "x")} for k in (1, 2)]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for k, st in enumerate(states):
            save_checkpoint(folder, st, {"k": k})
        path = folder / f"checkpoint.{target}"
        data = bytearray(path.read_bytes())
        i = min(int(where * len(data)), len(data) - 1)
        if op == "truncate":
            data = data[:i]
        elif op == "flip":
            data[i] ^= (byte % 255) + 1  # never a no-op
        elif op == "insert":
            data[i:i] = bytes([byte])
        else:
            del data[i]
        path.write_bytes(bytes(data))
        try:
            state, cfg = load_checkpoint(folder)
        except UserError as err:
            assert str(err).startswith("checkpoint: ") and "\n" not in str(err)
        else:
            assert _same(state, states[1]) and cfg == {"k": 1}, "a damaged checkpoint loaded different data"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, cfg = load_checkpoint(folder, fallback=True)
        assert (_same(state, states[1]) and cfg == {"k": 1}) or (_same(state, states[0]) and cfg == {"k": 0})


_DAMAGE = dict(target=st.sampled_from(["json", "safetensors"]),
               op=st.sampled_from(["truncate", "flip", "insert", "delete"]),
               where=st.floats(0, 1), byte=st.integers(0, 255))


@settings(max_examples=30, derandomize=True, deadline=None, database=None)
@given(**_DAMAGE)
def test_random_damage_is_detected_or_harmless(target, op, where, byte):
    check_random_damage(target, op, where, byte)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, database=None)
@given(**_DAMAGE)
def test_random_damage_is_detected_or_harmless_slow(target, op, where, byte):
    check_random_damage(target, op, where, byte)


# -- pickles are never unpickled -------------------------------------------------------------------------------

class _Payload:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _Payload(marker), "step": 3}))
    return path


def test_the_payload_is_live(tmp_path):
    """The control: unpickling the file does create the marker (so its absence below means it never ran)."""
    marker = tmp_path / "PWNED"
    pickle.loads(_evil(tmp_path / "evil.pt", marker).read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("where", ["pt_file", "safetensors_name", "json_name", "torch_save_zip"])
def test_pickle_offered_as_checkpoint_is_refused_without_unpickling(tmp_path, where, capsys):
    from rnnlab.cli import main
    from rnnlab.errors import UserError
    from rnnlab.train.checkpoint import load_checkpoint

    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    if where == "pt_file":
        offered = _evil(tmp_path / "model.pt", marker)
    elif where == "torch_save_zip":
        offered = tmp_path / "model.pth"
        torch.save({"model": _Payload(marker)}, offered)
    elif where == "safetensors_name":  # a pickle renamed to the checkpoint's tensor file, with a plausible JSON
        _evil(run / "checkpoint.safetensors", marker)
        (run / "checkpoint.json").write_text(json.dumps({"format": "rnnlab-checkpoint-2", "step": "3",
                                                         "config": {}, "state": {"step": 3}}))
        offered = run
    else:
        _evil(run / "checkpoint.json", marker)
        _evil(run / "checkpoint.safetensors", marker)
        offered = run
    with pytest.raises(UserError, match=r"checkpoint: "):
        load_checkpoint(offered, fallback=True)
    for argv in (["eval", str(offered)], ["train", "--resume", str(offered)]):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "error: checkpoint: " in err[0], err
    if where in ("pt_file", "torch_save_zip"):
        assert "never unpickle" in err[0] or "pickle" in err[0], err[0]
    assert not marker.exists(), "the pickle was unpickled"


if __name__ == "__main__":
    sys.exit(drive(*sys.argv[1:4]))
