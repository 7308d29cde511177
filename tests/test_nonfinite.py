"""Non-finite training: NaN/Inf injected in the data, the loss, the gradients or the weights is caught, the step is
skipped (no weight or optimizer change) and reported with where it appeared (input batch, loss, layer parameter);
after ``train.max_bad_steps`` consecutive bad steps the run stops with a clear message, and the last checkpoint
holds finite weights that evaluate and resume."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import rnnlab
from rnnlab.data import TASKS, build_task
from rnnlab.data.base import Batch
from rnnlab.models import build_model
from rnnlab.train import Callback, Trainer, load_config
from rnnlab.train.checkpoint import load_checkpoint
from rnnlab.train.run import setup_run

BASE = {"task.name": "sine", "task.num_samples": 16, "task.batch_size": 4, "task.seq_len": 8,
        "model.hidden_size": 6, "model.num_layers": 2, "optim.schedule": "constant", "train.eval_every": 0,
        "train.final_eval_batches": 1, "run.progress": False, "run.plots": False, "run.tensorboard": False}


class Poisoned:
    """The task, with a non-finite value written into the batch of the given steps (or its loss)."""

    def __init__(self, task, steps, where: str = "x", value: float = math.nan) -> None:
        self.task, self.steps, self.where, self.value = task, set(steps), where, value
        self.current = -1

    def __getattr__(self, name):
        return getattr(self.task, name)

    def train_batch(self, step: int) -> Batch:
        self.current = step
        b = self.task.train_batch(step)
        if step in self.steps and self.where == "x":
            x = b.x.clone()
            x[-1, 0, 0] = self.value
            return Batch(x, b.y, b.reset)
        return b

    def loss(self, out, y):
        loss = self.task.loss(out, y)
        if self.current in self.steps and self.where == "loss":
            return loss * self.value if math.isnan(self.value) else loss + self.value
        return loss


class Watch(Callback):
    def __init__(self) -> None:
        self.rows = []

    def on_step_end(self, trainer, step, metrics) -> None:
        self.rows.append((step, metrics["skipped"], copy.deepcopy(trainer.model.state_dict()),
                          copy.deepcopy(trainer.optimizer.state_dict()["state"])))


def _trainer(overrides=None, backend="reference", task_wrap=None):
    cfg = load_config(None, {**BASE, "model.backend": backend, **(overrides or {})})
    task = build_task(cfg.task, cfg.train.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    watch = Watch()
    return Trainer(model, task_wrap(task) if task_wrap else task, cfg, callbacks=[watch]), watch


def _assert_step_skipped_without_change(watch: Watch, step: int) -> None:
    """Step ``step`` (1-based) was skipped and changed neither weights nor optimizer state."""
    rows = {r[0]: r for r in watch.rows}
    assert rows[step][1] == 1.0
    before, after = rows[step - 1], rows[step]
    for name in before[2]:
        assert torch.equal(before[2][name], after[2][name]), name
    for k in before[3]:
        for key, v in before[3][k].items():
            assert torch.equal(v, after[3][k][key]), (k, key)


@pytest.mark.parametrize("backend", rnnlab.available_backends())
@pytest.mark.parametrize("where,value,expect", [
    ("x", math.nan, r"loss is nan; first non-finite value at the input batch"),
    ("x", math.inf, r"first non-finite value at the input batch"),
    ("x", -math.inf, r"first non-finite value at the input batch"),
    ("loss", math.nan, r"loss is nan; first non-finite value at the loss function"),
    ("loss", math.inf, r"loss is inf; first non-finite value at the loss function"),
])
def test_nonfinite_data_and_loss_skip_the_step(backend, where, value, expect):
    trainer, watch = _trainer({"train.max_steps": 5}, backend, lambda t: Poisoned(t, {2}, where, value))
    trainer.fit()
    assert [r[1] for r in watch.rows] == [0.0, 0.0, 1.0, 0.0, 0.0]
    _assert_step_skipped_without_change(watch, 3)
    assert len(trainer.skipped) == 1 and trainer.skipped[0][0] == 3
    assert re.search(expect, trainer.skipped[0][1]), trainer.skipped
    assert trainer.stop_reason is None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("backend", rnnlab.available_backends())
@pytest.mark.parametrize("param", ["rnn.weight_ih_l1", "rnn.bias_hh_l0", "head.weight"])
def test_nonfinite_gradient_names_layer_and_parameter(backend, param):
    trainer, watch = _trainer({"train.max_steps": 4}, backend)
    p = dict(trainer.model.named_parameters())[param]
    calls = {"n": 0}

    def poison(g):
        calls["n"] += 1
        return torch.full_like(g, math.nan) if trainer.step == 1 else g

    p.register_hook(poison)
    trainer.fit()
    assert [r[1] for r in watch.rows] == [0.0, 1.0, 0.0, 0.0]
    _assert_step_skipped_without_change(watch, 2)
    reason = trainer.skipped[0][1]
    assert f"parameter {param}" in reason, reason
    assert "gradient norm is nan" in reason


def test_nonfinite_weight_is_located_in_forward():
    trainer, watch = _trainer({"train.max_steps": 3, "train.max_bad_steps": 0})

    class Corrupt(Callback):
        def on_step_end(self, tr, step, metrics):
            if step == 1:
                with torch.no_grad():
                    tr.model.rnn.weight_hh_l1[0, 0] = math.inf

    trainer.callbacks.insert(0, Corrupt())
    trainer.fit()
    assert [s for s, _ in trainer.skipped] == [2, 3]
    assert "parameter rnn.weight_hh_l1" in trainer.skipped[0][1], trainer.skipped


def test_isolated_bad_steps_do_not_stop_the_run():
    trainer, watch = _trainer({"train.max_steps": 8, "train.max_bad_steps": 2},
                              task_wrap=lambda t: Poisoned(t, {1, 3, 5, 7}))
    trainer.fit()
    assert trainer.step == 8 and trainer.stop_reason is None
    assert [s for s, _ in trainer.skipped] == [2, 4, 6, 8]


def test_consecutive_bad_steps_stop_the_run_with_a_usable_checkpoint(tmp_path):
    """Bad data from step 4 on; max_bad_steps=3: steps 4, 5, 6 are skipped and the run stops after step 6, with a
    checkpoint whose weights are those after step 3 (finite), that evaluates and resumes."""
    cfg = load_config(None, {**BASE, "train.max_steps": 20, "train.max_bad_steps": 3,
                             "train.checkpoint_every": 1, "run.out_dir": str(tmp_path), "run.name": "r"})
    watch = Watch()
    trainer = setup_run(cfg, callbacks=[watch])
    trainer.task = Poisoned(trainer.task, set(range(3, 100)))
    result = trainer.fit()
    assert trainer.step == 6 and [s for s, _ in trainer.skipped] == [4, 5, 6]
    assert trainer.stop_reason and "3 consecutive" in trainer.stop_reason
    assert "input batch" in trainer.stop_reason
    assert result["stopped"] == trainer.stop_reason
    state, _ = load_checkpoint(tmp_path / "r")
    after_step_3 = watch.rows[2][2]
    for name, t in state["model"].items():
        assert torch.isfinite(t).all(), name
        assert torch.equal(t, after_step_3[name]), name


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    """A weight turned Inf after step 2: every later step is skipped, the run stops, and the checkpoint on disk
    is still step 2's (finite) instead of being overwritten with the broken weights."""
    cfg = load_config(None, {**BASE, "train.max_steps": 20, "train.max_bad_steps": 2,
                             "train.checkpoint_every": 1, "run.out_dir": str(tmp_path), "run.name": "r"})

    class Corrupt(Callback):
        def on_step_end(self, tr, step, metrics):
            if step == 2:
                with torch.no_grad():
                    tr.model.rnn.weight_ih_l0[1, 0] = math.nan

    watch = Watch()
    trainer = setup_run(cfg, callbacks=[watch, Corrupt()])
    with pytest.warns(UserWarning, match=r"checkpoint: not written at step \d+: parameter rnn\.weight_ih_l0"):
        trainer.fit()
    assert trainer.stop_reason and "parameter rnn.weight_ih_l0" in trainer.stop_reason
    state, _ = load_checkpoint(tmp_path / "r")
    assert state["step"] == 2
    for name, t in state["model"].items():
        assert torch.equal(t, watch.rows[1][2][name]), name


def test_cli_stops_with_one_clear_line_and_the_run_still_evaluates(tmp_path, monkeypatch, capsys):
    from rnnlab.cli import main

    real = TASKS["sine"]
    monkeypatch.setitem(TASKS, "sine", lambda cfg, seed: Poisoned(real(cfg, seed), set(range(2, 100)),
                                                                  "x", math.inf))
    argv = ["train", "--task", "sine", "--num-samples", "16", "--batch-size", "4", "--seq-len", "8",
            "--hidden-size", "4", "--max-steps", "50", "--max-bad-steps", "4", "--eval-every", "0",
            "--checkpoint-every", "1", "--no-progress", "--no-plots", "--no-tensorboard",
            "--out-dir", str(tmp_path), "--name", "r"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    stop = [line for line in err.splitlines() if "consecutive" in line]
    assert len(stop) == 1, err
    assert stop[0].startswith("rnnlab train: error: stopped after 4 consecutive non-finite steps"), stop[0]
    assert "last checkpoint" in stop[0] and str(tmp_path / "r") in stop[0]
    monkeypatch.setitem(TASKS, "sine", real)
    assert main(["eval", str(tmp_path / "r")]) == 0
    state, _ = load_checkpoint(tmp_path / "r")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_bad_step_streak_survives_a_resume(tmp_path):
    """2 bad steps, a crash, a resume, 1 more bad step: with max_bad_steps=3 the run stops there."""
    cfg = load_config(None, {**BASE, "train.max_steps": 20, "train.max_bad_steps": 3,
                             "train.checkpoint_every": 1, "run.out_dir": str(tmp_path), "run.name": "r"})

    class Crash(Callback):
        def on_step_end(self, tr, step, metrics):
            if step == 4:
                raise KeyboardInterrupt  # after the step-4 checkpoint (default callbacks run first)

    first = setup_run(cfg, callbacks=[Crash()])
    first.task = Poisoned(first.task, {2, 3, 4})
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = setup_run(cfg, resume_dir=tmp_path / "r")
    resumed.task = Poisoned(resumed.task, {2, 3, 4})
    assert resumed.step == 4
    resumed.fit()
    assert resumed.step == 5 and [s for s, _ in resumed.skipped] == [3, 4, 5]
    assert resumed.stop_reason and "3 consecutive" in resumed.stop_reason
