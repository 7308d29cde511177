"""Tasks: documented shapes, a fixed seed gives fixed data, splits and scaling as documented, clear errors."""

import math

import numpy as np
import pytest
import torch

from rnnlab.data import available_tasks, build_task
from rnnlab.data.series import Scaler, interpolate_missing, make_windows, read_csv_columns
from rnnlab.data.shakespeare import clean_markdown, load_plays, split_plays
from rnnlab.data.synthetic import adding_problem, copy_memory, sine_windows
from rnnlab.data.text import CharVocab
from rnnlab.errors import UserError
from rnnlab.train.config import TaskConfig


def _task(name, **kw):
    return build_task(TaskConfig(name=name, **kw), seed=kw.pop("seed", 0) if "seed" in kw else 0)


def _same(a, b):
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_registry_lists_the_shipped_tasks():
    assert set(available_tasks()) >= {"shakespeare", "text", "sine", "adding", "copy", "mnist1d", "mnist_rows",
                                      "csv", "sunspots", "co2"}
    with pytest.raises(UserError, match="unknown task 'nope'; expected one of"):
        _task("nope")


def test_sine_matches_its_definition_and_seed():
    x, y = sine_windows(5, 30, torch.Generator().manual_seed(0))
    assert x.shape == (5, 30, 1) and torch.equal(x[:, 1:], y[:, :-1])  # target = next value
    t = _task("sine", num_samples=32, batch_size=8, seq_len=30)
    b = t.train_batch(3)
    assert b.x.shape == (30, 8, 1) and b.y.shape == (30, 8, 1) and t.per_step
    assert _same(b, _task("sine", num_samples=32, batch_size=8, seq_len=30).train_batch(3))
    assert not _same(b, build_task(TaskConfig(name="sine", num_samples=32, batch_size=8, seq_len=30), 1)
                     .train_batch(3))
    # one epoch visits every training sequence once
    seen = torch.cat([t.train_batch(s).x[0, :, 0] for s in range(t.steps_per_epoch)])
    assert torch.equal(seen.sort().values, t.x_train[:, 0, 0].sort().values)


def test_adding_problem_target_is_the_sum_of_the_marked_values():
    x, y = adding_problem(50, 20, torch.Generator().manual_seed(0))
    assert x.shape == (50, 20, 2) and y.shape == (50, 1)
    assert torch.all(x[..., 1].sum(1) == 2)
    assert torch.all(x[:, :10, 1].sum(1) == 1)  # one marker in each half
    torch.testing.assert_close((x[..., 0] * x[..., 1]).sum(1, keepdim=True), y)
    b = _task("adding", num_samples=16, batch_size=4, seq_len=20).train_batch(0)
    assert b.x.shape == (20, 4, 2) and b.y.shape == (4, 1)


def test_copy_memory_layout():
    x, y = copy_memory(3, delay=7, generator=torch.Generator().manual_seed(0))
    ids = x.argmax(-1)
    assert x.shape == (3, 27, 10) and y.shape == (3, 27)
    assert torch.equal(y[:, -10:], ids[:, :10])  # recall the first ten symbols at the end
    assert torch.all(ids[:, 16] == 9) and torch.all(y[:, :-10] == 0)
    assert torch.all((ids[:, :10] >= 1) & (ids[:, :10] <= 8))


def test_char_vocab_and_markdown_cleaning():
    v = CharVocab("hello world")
    assert v.decode(v.encode("low")) == "low" and len(v) == 8
    with pytest.raises(UserError, match="character 'z' is not in the vocabulary"):
        v.encode("lz")
    md = "# Title\n\n## ACT I\n\n**HAMLET**  \nTo be, or _not_ to be\\--  \n\n\n\n*Exit.*\n"
    assert clean_markdown(md) == "HAMLET:\nTo be, or not to be--\n\nExit.\n"


def test_shakespeare_split_and_streams():
    plays = load_plays()
    assert len(plays) == 38
    train, val, held = split_plays(plays, 0.1)
    assert len(held) == 3 and all(name.endswith(".md") for name in held)
    assert "HAMLET:" in train + val and "**" not in train and "#" not in train
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    t = _task("shakespeare", batch_size=4, seq_len=16)
    b0, b1 = t.train_batch(0), t.train_batch(1)
    assert b0.x.shape == (16, 4) and b0.x.dtype == torch.long and b0.reset and not b1.reset
    assert torch.equal(b0.y[:-1], b0.x[1:]) and torch.equal(b0.y[-1], b1.x[0])  # streams continue
    assert _same(t.train_batch(t.steps_per_epoch + 2), t.train_batch(t.steps_per_epoch + 2))
    assert t.vocab == sorted(set(t.vocab)) and t.input_size == len(t.vocab)


@pytest.mark.slow  # generating MNIST-1D takes 20-60 s on a busy 2-core machine (cached afterwards)
def test_mnist1d(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    t = _task("mnist1d", batch_size=8)
    b = t.train_batch(0)
    assert b.x.shape == (40, 8, 1) and b.y.shape == (8,) and t.output_size == 10 and not t.per_step
    assert set(t.y_train.tolist()) == set(range(10))
    assert _same(b, _task("mnist1d", batch_size=8).train_batch(0))  # the second build reads the cache
    assert list(tmp_path.glob("mnist1d-*.npz"))


def test_mnist_rows():
    r = _task("mnist_rows", batch_size=8, val_fraction=0.1)
    b = r.train_batch(0)
    assert b.x.shape == (28, 8, 28) and b.y.shape == (8,)
    assert r.x_train.size(0) == 4500 and r.x_val.size(0) == 500
    assert 0.0 <= float(r.x_train.min()) and float(r.x_train.max()) <= 1.0
    # the file is sorted by label: after the seeded shuffle the validation split holds every digit
    assert set(r.y_val.tolist()) == set(range(10))


def test_series_windows_scaling_and_missing_values(tmp_path):
    s = np.arange(10, dtype=float)[:, None] * np.array([[1.0, 10.0]])  # (10, 2)
    x, y = make_windows(s, [0, 1], [1], length=3, horizon=2)
    assert x.shape == (6, 3, 2) and y.shape == (6, 2)
    assert torch.equal(y[0], torch.tensor([30.0, 40.0]))  # the two steps after the first window, column 1
    filled, n = interpolate_missing(np.array([[1.0], [math.nan], [3.0], [math.nan]]))
    assert n == 2 and filled[:, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    sc = Scaler("standard", s[:5])
    np.testing.assert_allclose(sc.transform(s[:5]).mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(sc.inverse(sc.transform(s)), s)
    path = tmp_path / "d.csv"
    path.write_text("day,temp,name,rain\n1,10.5,a,0\n2,,b,1\n3,12,c,0\n" + "".join(
        f"{d},{10 + d % 7},x,{d % 3}\n" for d in range(4, 60)))
    names, values = read_csv_columns(path)
    assert names == ["day", "temp", "rain"] and np.isnan(values[1, 1])
    with pytest.raises(UserError, match=r"d.csv has 1 empty or NaN value\(s\), the first in row 3 .*column 'temp'; "
                                        r"pass --missing interpolate"):
        _task("csv", path=str(path), columns=["temp", "rain"], target=["temp"], seq_len=8, horizon=3, batch_size=4)
    t = _task("csv", path=str(path), columns=["temp", "rain"], target=["temp"], seq_len=8, horizon=3,
              batch_size=4, missing="interpolate")
    b = t.train_batch(0)
    assert b.x.shape == (8, 4, 2) and b.y.shape == (4, 3) and t.output_size == 3
    assert t.missing == 1
    # scaling is fitted on the training points only
    n_train = int(59 * 0.9)
    raw = interpolate_missing(values[:, 1:2])[0][:n_train]
    assert t.scaler.shift[t.names.index("temp")] == pytest.approx(raw.mean())
    with pytest.raises(UserError, match=r"columns \['wind'\] not in d.csv; available: \['day', 'temp', 'name'"):
        _task("csv", path=str(path), columns=["wind"])
    with pytest.raises(UserError, match="column 'name' of d.csv has non-numeric values"):
        _task("csv", path=str(path), columns=["name"])
    with pytest.raises(UserError, match="too few for windows of seq_len=100"):
        _task("csv", path=str(path), missing="interpolate", seq_len=100)


def test_bundled_series():
    co2 = _task("co2", seq_len=52, horizon=4, batch_size=16)
    assert co2.missing == 59 and co2.train_batch(0).x.shape == (52, 16, 1) and co2.output_size == 4
    assert torch.isfinite(co2.x_train).all() and torch.isfinite(co2.y_val).all()
    sun = _task("sunspots", seq_len=20, batch_size=8)
    assert sun.n_points == 309 and sun.missing == 0 and sun.train_batch(0).y.shape == (8, 1)
    # validation forecasts start after the training points: no window's target lies in the training part
    assert sun.x_val.size(0) == 309 - sun.n_train


@pytest.mark.parametrize("name, x_shape, y_shape", [
    ("sine", (24, 4, 1), (24, 4, 1)), ("adding", (24, 4, 2), (4, 1)), ("copy", (25, 4, 10), (25, 4))])
def test_synthetic_tasks_shapes_and_seeds(name, x_shape, y_shape):
    cfg = TaskConfig(name=name, num_samples=20, batch_size=4, seq_len=24, delay=5)
    a, b, c = build_task(cfg, 0), build_task(cfg, 0), build_task(cfg, 1)
    batch = a.train_batch(7)
    assert tuple(batch.x.shape) == x_shape and tuple(batch.y.shape) == y_shape
    assert _same(batch, b.train_batch(7)) and not _same(batch, c.train_batch(7))
    assert all(_same(u, v) for u, v in zip(a.val_batches(), b.val_batches()))
    assert sum(v.x.size(1) for v in a.val_batches()) == 2  # a tenth of num_samples
