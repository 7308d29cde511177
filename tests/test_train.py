"""Trainer: truncated BPTT against hand-written backprop, state detaching, clipping, the non-finite guard,
schedules and early stopping."""

import copy
import math

import pytest
import torch

from rnnlab.data import build_task
from rnnlab.data.base import Batch
from rnnlab.models import build_model
from rnnlab.train import EarlyStopping, LRSchedule, Trainer, clip_gradients, load_config
from rnnlab.train.config import OptimConfig


def _setup(overrides, **extra):
    base = {"model.hidden_size": 8, "model.backend": "reference", "optim.clip_norm": 0.0,
            "optim.schedule": "constant", "task.num_samples": 16, "task.batch_size": 4}
    cfg = load_config(None, {**base, **overrides})
    task = build_task(cfg.task, cfg.train.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    return cfg, task, model, Trainer(model, task, cfg, **extra)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_equal(model, manual):
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, manual[name], msg=name)


def test_tbptt_with_k1_equal_k2_equal_T_is_full_backprop():
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 12})
    ref = copy.deepcopy(model)
    batch = task.train_batch(0)
    out, _ = ref(batch.x)
    task.loss(out, batch.y).backward()
    metrics = trainer.train_step(batch)
    _assert_grads_equal(model, _grads(ref))
    assert metrics["loss"] == pytest.approx(float(task.loss(out, batch.y).detach()), rel=1e-6)


def test_tbptt_k1_2_k2_4_matches_hand_written_windows():
    # T = 6, k1 = 2, k2 = 4: windows end at 2, 4, 6; each window's loss (its k1 steps, weighted k1/T) is
    # back-propagated through at most k2 steps: [0,2) from s0, [0,4) from s0, [2,6) from s_2 detached.
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 6, "train.bptt_stride": 2,
                                        "train.bptt_horizon": 4})
    ref = copy.deepcopy(model)
    batch = task.train_batch(0)
    x, y = batch.x, batch.y
    out, _ = ref(x[0:2])
    (task.loss(out, y[0:2]) * 2 / 6).backward()
    out, _ = ref(x[0:4])
    (task.loss(out[2:4], y[2:4]) * 2 / 6).backward()
    with torch.no_grad():
        _, s2 = ref(x[0:2])
    out, _ = ref(x[2:6], tuple(s.detach() for s in s2))
    (task.loss(out[2:4], y[4:6]) * 2 / 6).backward()
    trainer.train_step(batch)
    _assert_grads_equal(model, _grads(ref))


def test_tbptt_sequence_loss_only_reaches_back_k2_steps():
    # Adding task: one target at the end; with k1 = 4, k2 = 8 and T = 16 the gradient is that of the loss through
    # the last 8 steps, started from the (detached) state at step 8.
    cfg, task, model, trainer = _setup({"task.name": "adding", "task.seq_len": 16, "train.bptt_stride": 4,
                                        "train.bptt_horizon": 8})
    ref = copy.deepcopy(model)
    batch = task.train_batch(0)
    with torch.no_grad():
        _, s8 = ref(batch.x[:8])
    out, _ = ref(batch.x[8:], s8)
    task.loss(out[-1], batch.y).backward()
    trainer.train_step(batch)
    _assert_grads_equal(model, _grads(ref))
    # and it differs from full backprop (the first 8 steps' weights' influence is cut)
    full = copy.deepcopy(ref)
    full.zero_grad()
    out, _ = full(batch.x)
    task.loss(out[-1], batch.y).backward()
    assert not torch.allclose(full.rnn.weight_hh_l0.grad, model.rnn.weight_hh_l0.grad)


def _graph_size(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


@pytest.mark.parametrize("k2", [0, 24])
def test_state_is_detached_across_batches_no_graph_growth(tmp_path, k2):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    cfg, task, model, trainer = _setup({"task.name": "text", "task.path": str(text), "task.seq_len": 16,
                                        "train.bptt_horizon": k2})
    sizes = []
    loss_fn = task.loss
    task.loss = lambda out, y: (lambda l: (sizes.append(_graph_size(l)), l)[1])(loss_fn(out, y))
    for step in range(5):
        trainer.train_step(task.train_batch(step))
        state = trainer._state
        assert all(not s.requires_grad for s in state)
    # A state carried without detaching would chain every batch's graph into the next one.
    assert len(set(sizes[1:])) == 1, sizes  # (the first batch has no carried context to reach into)


def test_clipping_matches_torch_clip_grad_norm():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    norm, clipped = clip_gradients(params, max_norm=0.5)
    expected = torch.nn.utils.clip_grad_norm_(twins, max_norm=0.5)
    assert norm == pytest.approx(float(expected), rel=1e-6) and clipped
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad)
    # below the threshold nothing changes
    before = [p.grad.clone() for p in params]
    assert clip_gradients(params, max_norm=100.0)[1] is False
    assert all(torch.equal(b, p.grad) for b, p in zip(before, params))
    # by value
    clip_gradients(params, max_value=0.01)
    assert all(float(p.grad.abs().max()) <= 0.01 for p in params)


def test_trainer_logs_pre_clip_norm_and_clips():
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 10, "optim.clip_norm": 1e-4})
    ref = copy.deepcopy(model)
    batch = task.train_batch(0)
    out, _ = ref(batch.x)
    task.loss(out, batch.y).backward()
    raw = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ref.parameters()))
    metrics = trainer.train_step(batch)
    assert metrics["grad_norm"] == pytest.approx(raw, rel=1e-5) and metrics["clipped"] == 1.0
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert after == pytest.approx(1e-4, rel=1e-3)


class _Poisoned:
    """Wraps a task so that the batch of one step carries a NaN input."""

    def __init__(self, task, bad_step):
        self.task, self.bad_step = task, bad_step

    def __getattr__(self, name):
        return getattr(self.task, name)

    def train_batch(self, step):
        b = self.task.train_batch(step)
        if step == self.bad_step:
            x = b.x.clone()
            x[3, 1, 0] = float("nan")
            return Batch(x, b.y, b.reset)
        return b


def test_nan_in_one_step_is_skipped_and_reported():
    cfg, task, model, _ = _setup({"task.name": "sine", "task.seq_len": 10, "train.max_steps": 5,
                                  "train.eval_every": 0})
    trainer = Trainer(model, _Poisoned(task, bad_step=2), cfg)
    seen = []

    class Watch:
        key = "watch"

        def __getattr__(self, name):
            return lambda *a: None

        def on_step_end(self, tr, step, metrics):
            seen.append((step, metrics["skipped"], {n: p.detach().clone() for n, p in tr.model.named_parameters()}))

    trainer.callbacks.append(Watch())
    trainer.fit()
    assert [s[1] for s in seen] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert trainer.skipped[0][0] == 3 and "input batch" in trainer.skipped[0][1]
    assert "loss is nan" in trainer.skipped[0][1]
    # the skipped step changed no weight, and training went on with finite weights
    assert all(torch.equal(seen[1][2][n], seen[2][2][n]) for n in seen[1][2])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(seen[2][2][n], seen[4][2][n]) for n in seen[2][2])


def test_nonfinite_gradient_is_skipped_and_names_the_parameter():
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 10})
    handle = model.rnn.weight_hh_l0.register_hook(lambda g: torch.full_like(g, float("inf")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = trainer.train_step(task.train_batch(0))
    handle.remove()
    assert metrics["skipped"] == 1.0
    assert "parameter rnn.weight_hh_l0" in trainer.skipped[0][1]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_nonfinite_module_output_is_located():
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 10})
    handle = model.rnn.register_forward_hook(lambda m, i, o: (o[0] * float("nan"), o[1]))
    metrics = trainer.train_step(task.train_batch(0))
    handle.remove()
    assert metrics["skipped"] == 1.0 and "output of module rnn (LSTM)" in trainer.skipped[0][1]


def test_schedules():
    cos = LRSchedule(OptimConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=10), max_steps=110)
    assert cos.lr_at(0) == pytest.approx(0.1) and cos.lr_at(9) == pytest.approx(1.0)
    assert cos.lr_at(10) == pytest.approx(1.0) and cos.lr_at(60) == pytest.approx(0.55)
    assert cos.lr_at(110) == pytest.approx(0.1)
    step = LRSchedule(OptimConfig(lr=1.0, schedule="step", step_size=5, gamma=0.5), max_steps=100)
    assert [step.lr_at(s) for s in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]
    plat = LRSchedule(OptimConfig(lr=1.0, schedule="plateau", plateau_patience=2, gamma=0.1, min_lr=0.005), 100)
    for v in (1.0, 0.9, 0.95, 0.95):  # two evaluations without improvement -> one decay
        plat.on_eval(v)
    assert plat.lr_at(50) == pytest.approx(0.1)
    for v in (0.95,) * 4:
        plat.on_eval(v)
    assert plat.lr_at(50) == pytest.approx(0.005)  # floored at min_lr
    with pytest.raises(Exception, match="unknown schedule 'linear'"):
        LRSchedule(OptimConfig(schedule="linear"), 10)


def test_early_stopping_stops_after_patience():
    cfg, task, model, trainer = _setup({"task.name": "sine", "task.seq_len": 5})
    stopper = EarlyStopping(patience=2)
    trainer.callbacks.append(stopper)
    for v, stop in ((1.0, False), (0.8, False), (0.85, False), (0.8, True)):
        trainer.emit_eval({"val_loss": v})
        assert trainer.should_stop is stop


def test_bad_bptt_settings_are_errors():
    with pytest.raises(Exception, match=r"bptt_horizon \(k2=2\) must be >= bptt_stride \(k1=4\)"):
        _setup({"task.name": "sine", "train.bptt_stride": 4, "train.bptt_horizon": 2})


def test_init_presets_are_applied_and_unknown_ones_rejected():
    from rnnlab.errors import UserError

    cfg, task, model, _ = _setup({"task.name": "sine", "model.init": "forget_bias"})
    H = cfg.model.hidden_size
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.allclose(b[H:2 * H], torch.ones(H))  # forget gate bias 1 (Jozefowicz et al. 2015)
    with pytest.raises(UserError, match="nonsense"):
        _setup({"task.name": "sine", "model.init": "nonsense"})
