"""Deprecated path: the gradient tracker is a training callback and moved to :mod:`rnnlab.train.tracking`.

``from rnnlab.diagnostics.tracking import GradientTracker`` (or ``layer_grad_norms``) still works for one release
and gives the same object, with a :class:`DeprecationWarning`. Diagnostics sit below training and only return
data, so this module imports nothing from :mod:`rnnlab.train` when it is imported: the import happens in the
module's ``__getattr__`` (PEP 562), on first use of an old name, when every module is loaded. tests/test_imports.py
exempts the imports inside such a deprecation ``__getattr__`` from its cycle and layer checks.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["GradientTracker", "layer_grad_norms"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"rnnlab.diagnostics.tracking.{name} moved to rnnlab.train.tracking.{name}; the old path goes in "
                  "the next release", DeprecationWarning, stacklevel=2)
    from ..train import tracking

    return getattr(tracking, name)
