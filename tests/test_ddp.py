"""Data-parallel training with torchrun: ``rnnlab train`` in 2 processes on loopback equals 1 process.

Two CPU processes (gloo, ``torchrun --standalone``: loopback only) run the ``rnnlab train`` command
(``rnnlab.train.run.setup_run`` distributes it) on halves of each global batch; the
weights they end with, the validation loss and the logged steps must equal a single process trained on the
whole batch, and a 2-process run resumed from its own checkpoint must end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rnnlab.errors import UserError
from rnnlab.train.checkpoint import load_checkpoint
from rnnlab.train.config import load_config
from rnnlab.train.distributed import DistributedInfo, ShardedTask, distribute, env_info
from rnnlab.train.run import setup_run

# Tiny sine regression with two TBPTT windows per batch (k1 = 5 of T = 10): two backward passes per step, so
# the per-backward gradient averaging is exercised, not just a single all-reduce.
OVERRIDES = {
    "task.name": "sine", "task.batch_size": 8, "task.seq_len": 10, "task.num_samples": 64,
    "model.hidden_size": 8, "optim.schedule": "constant", "train.bptt_stride": 5, "train.eval_every": 2, "train.eval_batches": 0,
    "train.checkpoint_every": 2, "train.log_every": 1, "train.threads": 1,
    "run.progress": False, "run.plots": False, "run.tensorboard": False, "run.sample_length": 0,
}

# Runs inside each torchrun process: the real `rnnlab train` command, three times (setup_run distributes it).
WORKER = textwrap.dedent('''
    import os, sys
    import torch.distributed as dist
    from rnnlab.cli import main

    base, config = sys.argv[1], sys.argv[2]

    def train(*args):
        assert main(["train", *args]) == 0
        dist.barrier()  # rank 0's checkpoint is complete before anyone reads it

    train("--config", config, "--max-steps", "4", "--out-dir", base, "--name", "ddp")      # 4 steps straight
    train("--config", config, "--max-steps", "2", "--out-dir", base, "--name", "resumed")  # 2 steps, checkpoint,
    train("--resume", os.path.join(base, "resumed"), "--max-steps", "4")                 # then resumed to step 4
''')


def _config(tmp_path: Path) -> Path:
    sections: dict[str, dict] = {}
    for dotted, value in OVERRIDES.items():
        section, key = dotted.split(".")
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON scalars are valid TOML here
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _torchrun(tmp_path: Path, config: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path), str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _final_val_loss(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "val"][-1]["val_loss"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(run_dir)
    return state["model"]


def test_two_processes_equal_one_with_the_same_global_batch_and_resume(tmp_path: Path) -> None:
    from rnnlab.cli import main

    config = _config(tmp_path)
    assert main(["train", "--config", str(config), "--max-steps", "4", "--out-dir", str(tmp_path),
                 "--name", "single"]) == 0
    _torchrun(tmp_path, config)

    w1, w2 = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6, msg=f"weight {key}")
    assert _final_val_loss(tmp_path / "ddp") == pytest.approx(_final_val_loss(tmp_path / "single"), rel=1e-5)
    # Training moved the weights: equal results are not two untouched models.
    start = _initial_weights()
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-3

    # One process wrote the logs: each (split, step, final) record once, and the same records as one process.
    def records(run: str) -> list[tuple]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["split"], r["step"], r.get("final")) for r in map(json.loads, lines)]

    assert len(records("ddp")) == len(set(records("ddp"))) > 0
    assert records("ddp") == records("single")

    # Resumed at step 2 from its own checkpoint, the 2-process run ends where the uninterrupted one does.
    w3 = _weights(tmp_path / "resumed")
    for key in w1:
        torch.testing.assert_close(w3[key], w1[key], rtol=1e-5, atol=1e-6, msg=f"resumed weight {key}")


def _initial_weights() -> dict[str, torch.Tensor]:
    cfg = load_config(None, {**OVERRIDES, "train.max_steps": 0})
    return setup_run(cfg, run_dir=None).model.state_dict()


def test_sharded_task_slices_and_checks() -> None:
    cfg = load_config(None, {**OVERRIDES, "train.max_steps": 0})
    trainer = setup_run(cfg, run_dir=None)
    task = trainer.task
    full = task.train_batch(3)
    halves = [ShardedTask(task, r, 2).train_batch(3) for r in range(2)]
    torch.testing.assert_close(torch.cat([h.x for h in halves], dim=1), full.x)
    torch.testing.assert_close(torch.cat([h.y for h in halves], dim=1 if task.per_step else 0), full.y)
    assert ShardedTask(task, 0, 2).per_step == task.per_step and ShardedTask(task, 0, 2).kind == task.kind
    with pytest.raises(UserError, match=r"batch size \(8\) must be divisible by the number of processes \(3\)"):
        ShardedTask(task, 0, 3).train_batch(0)


def test_env_info(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_info() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert env_info() is None  # one process: nothing to distribute
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = env_info()
    assert info is not None and (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="expected 0 <= RANK < WORLD_SIZE, got RANK=2 WORLD_SIZE=2"):
        env_info()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="must be integers"):
        env_info()
    # Without a launch, distribute() leaves the trainer alone.
    monkeypatch.delenv("WORLD_SIZE")
    cfg = load_config(None, {**OVERRIDES, "train.max_steps": 0})
    trainer = setup_run(cfg, run_dir=None)
    task = trainer.task
    assert distribute(trainer) is trainer and trainer.task is task and trainer.world_size == 1
    assert isinstance(DistributedInfo(0, 2, 0).__repr__(), str)
