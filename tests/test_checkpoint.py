"""Checkpoints: safetensors + JSON round trip, atomic pair check, and resume that is bit-identical on CPU."""

import json

import pytest
import torch

from rnnlab.errors import UserError
from rnnlab.train import Callback, load_config
from rnnlab.train.checkpoint import decode_state, encode_state, load_checkpoint, save_checkpoint
from rnnlab.train.run import setup_run


def test_encode_decode_round_trip(tmp_path):
    state = {"a": torch.arange(6.0).view(2, 3), "opt": {0: {"step": torch.tensor(3.0)}, 1: {}},
             "betas": (0.9, 0.999), "nested": [None, 1, "x", (torch.ones(2), torch.zeros(1))],
             "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, state, {"cfg": 1})
    loaded, cfg = load_checkpoint(tmp_path)
    assert cfg == {"cfg": 1}
    assert torch.equal(loaded["a"], state["a"]) and loaded["betas"] == (0.9, 0.999)
    assert list(loaded["opt"]) == [0, 1] and torch.equal(loaded["opt"][0]["step"], torch.tensor(3.0))
    assert loaded["nested"][:3] == [None, 1, "x"] and isinstance(loaded["nested"][3], tuple)
    assert loaded["rng"].dtype == torch.uint8 and torch.equal(loaded["rng"], state["rng"])
    # no pickle anywhere: the JSON is plain, the tensors are in safetensors
    doc = json.loads((tmp_path / "checkpoint.json").read_text())
    assert doc["state"]["a"] == {"__tensor__": "a"}
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files were renamed away


def test_mismatched_pair_and_missing_files_are_errors(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "w": torch.ones(1)}, {})
    tensors = (tmp_path / "checkpoint.safetensors").read_bytes()
    save_checkpoint(tmp_path, {"step": 2, "w": torch.ones(1)}, {})
    (tmp_path / "checkpoint.safetensors").write_bytes(tensors)  # as if the JSON write of step 1 had been lost
    with pytest.raises(UserError, match="from step 1 but checkpoint.json from step 2"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="expected checkpoint.json and checkpoint.safetensors"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(TypeError, match="cannot store a value of type object"):
        encode_state({"x": object()}, {})


class _Record(Callback):
    def __init__(self, crash_at=None):
        self.losses, self.crash_at = {}, crash_at

    def on_step_end(self, trainer, step, metrics):
        self.losses[step] = metrics["loss"]
        if step == self.crash_at:
            raise KeyboardInterrupt  # a crash: no on_fit_end, so the last periodic checkpoint is what remains


def _cfg(tmp_path, text, name):
    return load_config(None, {
        "task.name": "text", "task.path": str(text), "task.batch_size": 4, "task.seq_len": 12,
        "model.hidden_size": 16, "model.num_layers": 2, "model.dropout": 0.2, "model.embed_size": 8,
        "model.backend": "reference",
        "train.max_steps": 10, "train.bptt_stride": 6, "train.bptt_horizon": 9, "train.eval_every": 3,
        "train.eval_batches": 2, "train.checkpoint_every": 4, "train.log_every": 2, "train.early_stop_patience": 50,
        "optim.schedule": "cosine", "optim.warmup_steps": 2, "optim.clip_norm": 0.5,
        "run.out_dir": str(tmp_path), "run.name": name, "run.progress": False, "run.plots": False,
        "run.tensorboard": False})


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    text = tmp_path / "t.txt"
    g = torch.Generator().manual_seed(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    text.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (3000,), generator=g).tolist()))

    full = _Record()
    straight = setup_run(_cfg(tmp_path, text, "a"), callbacks=[full])
    straight.fit()

    crash = _Record(crash_at=6)
    run_b = setup_run(_cfg(tmp_path, text, "b"), callbacks=[crash])
    with pytest.raises(KeyboardInterrupt):
        run_b.fit()
    resumed_log = _Record()
    resumed = setup_run(_cfg(tmp_path, text, "b"), resume_dir=tmp_path / "b", callbacks=[resumed_log])
    assert resumed.step == 4  # the checkpoint written at step 4
    resumed.fit()

    assert list(resumed_log.losses) == [5, 6, 7, 8, 9, 10]
    for step, loss in resumed_log.losses.items():
        assert loss == full.losses[step], step  # exact, not approximate
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    # the metric files hold each step once: rows written after the checkpoint by the crashed run were dropped
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "train.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10]
    assert (tmp_path / "a" / "train.csv").read_text() .splitlines()[0] == \
        (tmp_path / "b" / "train.csv").read_text().splitlines()[0]
