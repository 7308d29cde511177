"""Whole-sequence kernels behind one dispatch.

A *backend* runs one layer in one direction over a whole sequence, with the signature of
:func:`rnnlab.kernels.reference.run_layer`::

    run_layer(mode, x, state, weights, *, reverse=False, lengths=None) -> (outputs, final_state)

``mode`` is torch's name for the cell type (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``), ``x`` is
``(T, B, I)``, ``weights`` are ``(w_ih, w_hh, b_ih, b_hh[, w_hr])``. Layers, directions and inter-layer dropout
are composed above this in :mod:`rnnlab.layers`, the same way for every backend.

The backend used by a layer is, in order of precedence: the layer's ``backend=`` argument, the process-wide
default set with :func:`set_backend`, the environment variable ``RNNLAB_BACKEND``, and finally the best
registered backend (see :data:`DEFAULT_ORDER`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import reference

__all__ = ["register_backend", "set_backend", "get_backend", "resolve_backend", "available_backends"]

RunLayer = Callable[..., tuple]

_BACKENDS: dict[str, RunLayer] = {"reference": reference.run_layer}
# Preference order when nothing is chosen explicitly: the first registered name wins.
DEFAULT_ORDER: list[str] = ["reference"]
_default: str | None = None


def register_backend(name: str, run_layer: RunLayer, *, preferred: bool = False) -> None:
    """Make ``run_layer`` selectable as ``backend=name``; ``preferred`` puts it first in the default order."""
    _BACKENDS[name] = run_layer
    if name not in DEFAULT_ORDER:
        if preferred:
            DEFAULT_ORDER.insert(0, name)
        else:
            DEFAULT_ORDER.append(name)


def available_backends() -> list[str]:
    """Names accepted by ``backend=`` and :func:`set_backend`."""
    return sorted(_BACKENDS)


def _check(name: str, where: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {available_backends()}")
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` restores the automatic choice)."""
    global _default
    _default = None if name is None else _check(name, "rnnlab.set_backend")


def get_backend() -> str:
    """The backend a layer with ``backend=None`` uses now."""
    if _default is not None:
        return _default
    env = os.environ.get("RNNLAB_BACKEND")
    if env:
        return _check(env, "RNNLAB_BACKEND")
    return next(name for name in DEFAULT_ORDER if name in _BACKENDS)


def resolve_backend(name: str | None) -> RunLayer:
    """The ``run_layer`` function for ``name`` (or for the current default when ``name`` is None)."""
    return _BACKENDS[_check(name, "rnnlab backend") if name is not None else get_backend()]


# The fused path (compiled step loops, hand-written backward) is the default; "reference" stays selectable.
from . import fused  # noqa: E402  (registered after the registry exists)

register_backend("fused", fused._run_layer, preferred=True)  # until rnnlab.kernels.run
