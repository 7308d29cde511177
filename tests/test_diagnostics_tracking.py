"""GradientTracker inside the real Trainer: its numbers agree with the trainer's and with an independent profile."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rnnlab.data import build_task
from rnnlab.diagnostics import gradient_profile
from rnnlab.models import build_model
from rnnlab.train.config import load_config
from rnnlab.train.tracking import GradientTracker, layer_grad_norms
from rnnlab.train.trainer import Callback, Trainer


class _Metrics(Callback):
    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}

    def on_step_end(self, trainer, step, metrics):
        self.rows[step] = dict(metrics)


def _setup(clip_norm: float, cell: str = "gru"):
    cfg = load_config(None, {"task.name": "adding", "task.seq_len": 12, "task.num_samples": 64,
                             "task.batch_size": 16, "model.cell": cell, "model.hidden_size": 8,
                             "model.num_layers": 2, "optim.clip_norm": clip_norm, "train.max_steps": 4,
                             "train.eval_every": 0, "run.progress": False})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    return cfg, task, build_model(cfg.model, task)


def test_tracker_norms_agree_with_the_trainer_and_clipping(tmp_path):
    cfg, task, model = _setup(clip_norm=1e-3)  # tiny: every step is clipped
    seen, tracker = _Metrics(), GradientTracker(every=2)
    Trainer(model, task, cfg, callbacks=[seen, tracker], run_dir=tmp_path).fit()
    assert [h["step"] for h in tracker.history] == [0, 2, 4]
    for rec in tracker.history[1:]:
        m = seen.rows[rec["step"]]
        assert rec["clipped"] and rec["grad_norm_pre"] == m["grad_norm"]
        assert abs(rec["grad_norm_post"] - 1e-3) < 1e-6  # clip_grad_norm_ semantics: scaled to max_norm
        pre = rec["layer_grad_norm_pre"]
        assert set(pre) == {"rnn.l0", "rnn.l1", "head"}
        # per-layer pre-clip norms put back together give the trainer's pre-clip global norm
        assert abs(math.sqrt(sum(v * v for v in pre.values())) - m["grad_norm"]) < 1e-4 * m["grad_norm"]
    lines = (tmp_path / "diagnostics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 4]


def test_tracker_step0_profile_equals_an_independent_profile():
    cfg, task, model = _setup(clip_norm=1.0, cell="lstm")
    probe = next(iter(task.val_batches()))
    expected = gradient_profile(model, lambda: task.loss(model(probe.x, None)[0][-1], probe.y))
    tracker = GradientTracker(every=10)
    Trainer(model, task, cfg, callbacks=[tracker]).fit()
    got = tracker.profiles[0]
    torch.testing.assert_close(got.hidden, expected.hidden, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.cell, expected.cell, rtol=1e-6, atol=0)
    assert sorted(tracker.profiles) == [0, 4]  # at_end adds the final weights
    assert not torch.equal(tracker.profiles[4].hidden, got.hidden)  # training changed the weights


def test_layer_grad_norms_groups_by_layer_and_direction():
    import rnnlab

    lstm = rnnlab.LSTM(2, 3, num_layers=2, bidirectional=True)
    lstm(torch.randn(4, 2, 2))[0].sum().backward()
    norms = layer_grad_norms(lstm)
    assert set(norms) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for n, p in lstm.named_parameters() if n.endswith("l1")))
    assert abs(norms["l1"] - expected) < 1e-6


def test_tracker_rejects_bad_interval():
    with pytest.raises(ValueError, match="GradientTracker: every must be an int >= 1, got 0"):
        GradientTracker(every=0)


class _Snapshot(Callback):
    """Weights before each step (state_dict copies), keyed by the number of steps done."""

    def __init__(self) -> None:
        self.before: dict[int, dict] = {}

    def on_fit_start(self, trainer):
        self.before[0] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def on_step_end(self, trainer, step, metrics):
        self.before[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_step_source_profile_is_the_training_steps_own_gradient():
    import rnnlab

    cfg, task, model = _setup(clip_norm=1.0, cell="lstm")
    snap, tracker = _Snapshot(), GradientTracker(every=2, source="step")
    Trainer(model, task, cfg, callbacks=[snap, tracker]).fit()
    assert [h["profile_source"] for h in tracker.history] == ["probe", "step", "step"]
    assert "_diagnostics_probe" not in rnnlab.available_backends() and model.rnn.backend is None
    for step in (2, 4):
        # independent: the weights before that step, its training batch, a fresh recording
        _, _, fresh = _setup(clip_norm=1.0, cell="lstm")
        fresh.load_state_dict(snap.before[step - 1])
        batch = task.train_batch(step - 1)
        expected = gradient_profile(fresh, lambda: task.loss(fresh(batch.x, None)[0][-1], batch.y))
        torch.testing.assert_close(tracker.profiles[step].hidden, expected.hidden, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(tracker.profiles[step].cell, expected.cell, rtol=1e-5, atol=1e-9)
        assert abs(tracker.profiles[step].loss - expected.loss) < 1e-5


def test_profile_from_grads_needs_retain_grad():
    import rnnlab
    from rnnlab.diagnostics import profile_from_grads, record

    gru = rnnlab.GRU(2, 3)
    x = torch.randn(5, 2, 2)
    with record(gru) as rec:
        gru(x)[0][-1].sum().backward()
    with pytest.raises(ValueError, match="profile_from_grads needs a recording made with retain_grad=True"):
        profile_from_grads(rec)
    with record(gru, retain_grad=True) as rec:
        loss = gru(x)[0][-1].sum()
    loss.backward()
    expected = gradient_profile(gru, lambda: gru(x)[0][-1].sum())
    torch.testing.assert_close(profile_from_grads(rec).hidden, expected.hidden, rtol=1e-6, atol=0)


def test_tbptt_windows_get_their_own_profile_rows():
    cfg = load_config(None, {"task.name": "sine", "task.seq_len": 12, "task.num_samples": 32, "task.batch_size": 4,
                             "model.cell": "gru", "model.hidden_size": 6, "train.max_steps": 2,
                             "train.bptt_stride": 4, "train.eval_every": 0, "run.progress": False})
    task = build_task(cfg.task, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, task)
    tracker = GradientTracker(every=2)
    Trainer(model, task, cfg, callbacks=[tracker]).fit()
    rec = tracker.history[-1]
    assert rec["profile_source"] == "step"
    assert list(rec["profile"]) == ["rnn.l0", "rnn.l0#1", "rnn.l0#2"]  # three windows of 4 steps
    assert all(len(v) == 4 and all(g > 0 for g in v) for v in rec["profile"].values())


@pytest.mark.parametrize("mode, kwargs", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                          ("RNN_TANH", {}), ("RNN_RELU", {})])
def test_kernel_traces_equal_the_reference_recording(mode, kwargs):
    """Recorder(kernel=True) keeps the fused kernel and reads its per-step gradients: the recorded states and gate
    activations, the per-step gradients dL/dh_t (dL/dc_t) themselves, the profile and the gate statistics equal
    those of the recording reference loop (an independent autograd computation: ``.grad`` of every state)."""
    import rnnlab
    from rnnlab.diagnostics import Recorder, gate_stats, gate_values, profile_from_grads
    from rnnlab.diagnostics.probe import state_tensors
    from rnnlab.kernels.fused import uses_compiled

    torch.manual_seed(0)
    layer = rnnlab.RNNBase(mode, 3, 6, num_layers=2, bidirectional=True, **kwargs)
    x = torch.randn(9, 4, 3)
    if not uses_compiled(x):
        pytest.skip("the compiled fused kernels are not available")
    target = torch.randn(9, 4, layer(x)[0].size(-1))

    def profile(kernel: bool):
        layer.zero_grad()
        recorder = Recorder(layer, retain_grad=True, kernel=kernel)
        recorder.start()
        try:
            loss = (layer(x)[0] * target).sum()
        finally:
            rec = recorder.stop()
        loss.backward()
        return rec, profile_from_grads(rec, float(loss.detach())), [p.grad.clone() for p in layer.parameters()]

    rec_k, prof_k, grads_k = profile(True)
    rec_r, prof_r, grads_r = profile(False)
    assert all(tr.step_grads is not None for tr in rec_k.traces)  # the kernel ran, not the reference loop
    assert all(tr.step_grads is None for tr in rec_r.traces)
    assert prof_k.names == prof_r.names and prof_k.reverse == prof_r.reverse
    torch.testing.assert_close(prof_k.hidden, prof_r.hidden, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(prof_k.hidden_initial, prof_r.hidden_initial, rtol=1e-5, atol=1e-7)
    if mode == "LSTM":
        torch.testing.assert_close(prof_k.cell, prof_r.cell, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(prof_k.cell_initial, prof_r.cell_initial, rtol=1e-5, atol=1e-7)
    for gk, gr in zip(grads_k, grads_r):  # the training gradients are untouched by the recording
        torch.testing.assert_close(gk, gr, rtol=1e-5, atol=1e-6)
    assert len(rec_k.traces) == len(rec_r.traces) == 4
    for tk, tr in zip(rec_k.traces, rec_r.traces):
        assert (tk.name, tk.steps) == (tr.name, tr.steps)
        n_states = len(state_tensors(tr.states[0]))
        assert tk.step_grads is not None and len(tk.step_grads) == n_states
        for k in range(n_states):  # time order: index t is step t, in either direction
            states = torch.stack([state_tensors(s)[k].detach() for s in tr.states])  # (T, B, size)
            torch.testing.assert_close(torch.stack([state_tensors(s)[k] for s in tk.states]), states,
                                       rtol=1e-5, atol=1e-6)
            grads = torch.stack([state_tensors(s)[k].grad for s in tr.states])  # dL/ds_t, total
            torch.testing.assert_close(tk.step_grads[k], grads, rtol=1e-5, atol=1e-6)
        assert tk.gate_seq is not None and tk.gate_seq
        with torch.no_grad():
            steps = [gate_values(tr.mode, tr.inputs[t], tr.prev[t], tr.weights) for t in range(tr.steps)]
        for name, seq in tk.gate_seq.items():  # what the kernel computed vs the gates of the reference's states
            torch.testing.assert_close(seq, torch.stack([g[name] for g in steps]), rtol=1e-5, atol=1e-6)
        sk, sr = gate_stats(tk), gate_stats(tr)
        assert sk.scalars.keys() == sr.scalars.keys() and sk.scalars
        for key in sk.scalars:
            assert sk.scalars[key] == pytest.approx(sr.scalars[key], rel=1e-4, abs=1e-6), key
        for key in sk.series:
            torch.testing.assert_close(sk.series[key], sr.series[key], rtol=1e-4, atol=1e-6)
        brief = gate_stats(tk, full=False)  # the tracker's scalars-only statistics: the same scalars
        assert brief.scalars.keys() == sr.scalars.keys() and not brief.series and not brief.histograms
        for key in brief.scalars:
            assert brief.scalars[key] == pytest.approx(sr.scalars[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_kernel_traces_give_the_autograd_profile_without_touching_grads(mode):
    """profile_from_recording (one torch.autograd.grad) on kernel traces equals the reference recording's."""
    import rnnlab
    from rnnlab.diagnostics import profile_from_recording, record

    torch.manual_seed(1)
    layer = rnnlab.RNNBase(mode, 3, 5, num_layers=2)
    x = torch.randn(7, 2, 3)
    profiles, kernel_ran = [], []
    for kernel in (True, False):
        with record(layer, kernel=kernel) as rec:
            loss = layer(x)[0][-1].pow(2).sum()
        profiles.append(profile_from_recording(rec, loss))
        kernel_ran.append(all(tr.step_grads is not None for tr in rec.traces))
    assert all(p.grad is None for p in layer.parameters())
    assert not kernel_ran[1]  # kernel=False: the reference loop
    if not kernel_ran[0]:
        pytest.skip("the compiled fused kernels are not available")
    torch.testing.assert_close(profiles[0].hidden, profiles[1].hidden, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(profiles[0].hidden_initial, profiles[1].hidden_initial, rtol=1e-5, atol=1e-7)
    if mode == "LSTM":
        torch.testing.assert_close(profiles[0].cell, profiles[1].cell, rtol=1e-5, atol=1e-7)


def test_spectra_every_thins_out_rho_but_keeps_step0_and_the_end():
    cfg, task, model = _setup(clip_norm=1.0, cell="lstm")  # 4 steps
    tracker = GradientTracker(every=1, spectra_every=3)
    Trainer(model, task, cfg, callbacks=[tracker]).fit()
    assert [h["step"] for h in tracker.history] == [0, 1, 2, 3, 4]
    assert [h["step"] for h in tracker.history if "rho" in h] == [0, 3, 4]
    with pytest.raises(ValueError, match=r"spectra_every must be an int >= 1, got 0"):
        GradientTracker(spectra_every=0)


def test_tracked_rho_is_the_spectral_radius_of_the_weights_at_that_step():
    from rnnlab.diagnostics import recurrent_spectra

    cfg, task, model = _setup(clip_norm=1.0, cell="gru")
    tracker = GradientTracker(every=2)
    Trainer(model, task, cfg, callbacks=[tracker]).fit()
    last = tracker.history[-1]
    assert last["step"] == 4
    for ws in recurrent_spectra(model):  # independent: float64 eigenvalues of the final weights' gate blocks
        for gate, rho in ws.spectral_radius.items():
            block = dict(zip("rzn", model.rnn.layer_weights(int(ws.name[-1]))[1].detach().double().chunk(3)))[gate]
            assert rho == pytest.approx(float(torch.linalg.eigvals(block).abs().max()), rel=1e-9)
            assert last["rho"][ws.name][gate] == pytest.approx(rho, rel=1e-5)


def test_kernel_profile_keeps_vanishing_gradients():
    """The kernel trace's step norms are summed in float64: a tanh RNN whose gradient falls to ~1e-30 (float32
    squares of it underflow to 0) still gets every step's norm, equal in relative terms to the reference
    recording's (float64 norms of the autograd gradients)."""
    import rnnlab
    from rnnlab.diagnostics import Recorder, profile_from_grads
    from rnnlab.kernels.fused import uses_compiled

    torch.manual_seed(0)
    layer = rnnlab.RNN(3, 8)
    with torch.no_grad():
        layer.weight_hh_l0.mul_(0.25)
    x = torch.randn(40, 4, 3)
    if not uses_compiled(x):
        pytest.skip("the compiled fused kernels are not available")

    def profile(kernel: bool):
        recorder = Recorder(layer, retain_grad=True, kernel=kernel)
        recorder.start()
        try:
            loss = layer(x)[0][-1].sum()  # the gradient enters at the last step only
        finally:
            rec = recorder.stop()
        loss.backward()
        return profile_from_grads(rec)

    kernel, reference = profile(True), profile(False)
    smallest = float(reference.hidden.min())
    assert 1e-36 < smallest < 1e-22, smallest  # the regime this is about (float32 squares below 1e-45)
    torch.testing.assert_close(kernel.hidden, reference.hidden, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_norms_are_exact_for_tiny_and_subnormal_values(dtype, monkeypatch):
    from rnnlab.diagnostics import gradflow

    torch.manual_seed(0)
    g = torch.randn(5, 3, 7, dtype=dtype)
    g[1] *= 1e-25  # squares below float32's range
    g[2] *= 1e-40  # float32 subnormal elements
    g[3] = 0.0
    g[4, 0, :3] = torch.tensor([3.0, 4.0, 12.0], dtype=dtype)
    g[4, 1:] = 0.0
    g[4, 0, 3:] = 0.0
    want = g.double().flatten(1).pow(2).sum(1).sqrt()  # float64 squares: exact enough for every row here
    assert float(want[4]) == 13.0
    torch.testing.assert_close(gradflow.step_norms(g), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(gradflow.step_norms(g.transpose(1, 2)), want, rtol=1e-14, atol=0)  # any layout
    monkeypatch.setattr(gradflow, "compiled_available", lambda: False)  # the fallback without the extension
    torch.testing.assert_close(gradflow.step_norms(g), want, rtol=1e-14, atol=0)
