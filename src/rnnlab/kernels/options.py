"""Deprecated path: the option kernels of torch's cells are the cells' own kernels in :mod:`rnnlab.kernels.fused`.

``rnnlab.kernels.options.lstm_kernel`` / ``gru_kernel`` / ``rnn_kernel(run, relu=...)`` still work for one release
(the same kernels, with a :class:`DeprecationWarning` on first use).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["lstm_kernel", "gru_kernel", "rnn_kernel"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"rnnlab.kernels.options.{name} moved to rnnlab.kernels.fused; the old path goes in the next "
                  "release", DeprecationWarning, stacklevel=2)
    from . import fused

    if name == "rnn_kernel":
        return lambda run, *, relu=False: (fused.rnn_relu_kernel if relu else fused.rnn_tanh_kernel)(run)
    return getattr(fused, name)
