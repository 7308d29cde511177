r"""Gradient flow through time: the norm of the *total* gradient ``dL/dh_t`` at every step and layer.

Backpropagation through time writes the gradient that reaches a state as a sum over the paths through later
steps (Werbos 1990; Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013):

.. math::
    \frac{\partial L}{\partial h_t} = \frac{\partial L}{\partial h_t}\Big|_\text{direct}
        + \left(\frac{\partial h_{t+1}}{\partial h_t}\right)^{\!\top} \frac{\partial L}{\partial h_{t+1}}

so with the loss at the last step only, ``dL/dh_t = (J_T \cdots J_{t+1})^T dL/dh_T``: its norm shrinks or grows
geometrically with the distance to the loss when the step Jacobians ``J_s`` are contractive or expansive. This
module measures those norms on the model's own graph (see :mod:`.probe`), for any rnnlab model and any loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..kernels.fused import compiled_available
from .probe import LayerTrace, Recording, record, state_tensors

__all__ = ["GradientProfile", "gradient_profile", "profile_from_recording", "profile_from_grads", "half_life"]


@dataclass
class GradientProfile:
    """Norms of ``dL/dh_t`` (and ``dL/dc_t`` for an LSTM) for every layer-direction and time step.

    Norms are Frobenius norms over the whole ``(B, H)`` batch tensor, i.e. exactly ``torch.linalg.norm`` of the
    gradient autograd gives for that state.

    Attributes:
        names: one per layer-direction, as in :class:`.probe.LayerTrace`.
        modes: their cell types. reverse: whether each walked backwards in time.
        hidden: ``(N, T)`` float64, ``hidden[n, t] = ||dL/dh_t||`` for the state after step ``t`` (NaN past the
            end of a shorter trace).
        cell: ``(N, T)`` like ``hidden`` for ``c_t``; NaN rows for non-LSTM layers; ``None`` if no layer is an LSTM.
        hidden_initial / cell_initial: ``(N,)`` norms for the initial state (the gradient that reaches the start).
        loss: the loss value.
    """

    names: list[str]
    modes: list[str]
    reverse: list[bool]
    hidden: Tensor
    cell: Tensor | None
    hidden_initial: Tensor
    cell_initial: Tensor | None
    loss: float

    def by_distance(self, n: int, which: str = "hidden") -> Tensor:
        """Row ``n`` ordered by distance from the end of its walk: ``[state T-1, ..., state 0, initial]``.

        For a loss on the last step this is the distance from the loss (reversed layers walk from ``T-1`` to 0,
        so their order is ``[state 0, ..., state T-1, initial]``).
        """
        rows = self.hidden if which == "hidden" else self.cell
        init = self.hidden_initial if which == "hidden" else self.cell_initial
        if rows is None or init is None:
            raise ValueError(f"GradientProfile: no {which!r} norms (only LSTM layers have a cell state)")
        row = rows[n][~torch.isnan(rows[n])]
        row = row if self.reverse[n] else row.flip(0)
        return torch.cat([row, init[n:n + 1]])

    def half_lives(self, which: str = "hidden", window: int | None = None) -> list[float]:
        """:func:`half_life` of every layer-direction, measured from the end of its walk."""
        return [half_life(self.by_distance(n, which), window=window) for n in range(len(self.names))]

    def to_dict(self) -> dict:
        """Plain lists and floats (JSON-ready)."""
        as_list = lambda t: None if t is None else [[None if math.isnan(v) else v for v in row]  # noqa: E731
                                                    for row in t.tolist()]
        return {
            "names": self.names, "modes": self.modes, "reverse": self.reverse, "loss": self.loss,
            "hidden": as_list(self.hidden), "cell": as_list(self.cell),
            "hidden_initial": self.hidden_initial.tolist(),
            "cell_initial": None if self.cell_initial is None else self.cell_initial.tolist(),
            "half_life_hidden": self.half_lives("hidden"),
        }


def half_life(norms: Tensor | Sequence[float], *, window: int | None = None) -> float:
    r"""Steps for a gradient norm to fall by half, from a log-linear least-squares fit.

    Fits ``log g_k = a - \lambda k`` over ``k = 0 .. window-1`` (all of ``norms`` by default; zero, NaN and
    infinite entries are skipped) and returns ``ln 2 / \lambda``; ``inf`` when the norms do not decay
    (``\lambda <= 0``). For an exact geometric profile ``g_k = \rho^k`` it is ``ln 2 / ln(1/\rho)``.

    Args:
        norms: gradient norms ordered by distance from where the gradient enters (``k = 0`` first).
        window: how many leading distances to fit.

    Raises:
        ValueError: fewer than two usable points.

    Example:
        >>> half_life([1.0, 0.5, 0.25, 0.125])
        1.0
    """
    # In Python floats: a profile is a few hundred numbers, and two dozen small tensor ops cost more than the fit
    # (the tracker fits one per layer at every record).
    values = torch.as_tensor(norms, dtype=torch.float64).flatten().tolist()
    if window is not None:
        values = values[:window]
    points = [(k, math.log(v)) for k, v in enumerate(values) if math.isfinite(v) and v > 0]
    if len(points) < 2:
        raise ValueError(f"half_life: expected at least 2 positive finite norms, got {len(points)} of {len(values)}")
    k_mean = math.fsum(k for k, _ in points) / len(points)
    y_mean = math.fsum(y for _, y in points) / len(points)
    slope = (math.fsum((k - k_mean) * (y - y_mean) for k, y in points)
             / math.fsum((k - k_mean) ** 2 for k, _ in points))
    return math.log(2) / -slope if slope < 0 else math.inf


def step_norms(g: Tensor) -> Tensor:
    """``||g[t]||`` over all but the first dimension, ``(T,)`` float64, squared and summed in float64.

    Not ``g.flatten(1).norm(dim=1)``: float32 squares of vanishing gradients (a tanh RNN's reach 1e-20 within ~100
    steps) are subnormal (slow) below 1e-19 and 0 below 4e-23, so such steps read as norm 0. The compiled
    ``step_norms`` op widens each element before squaring (one pass); elsewhere ``vector_norm`` in float64.
    """
    if g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64) and compiled_available():
        return torch.ops.rnnlab_fused.step_norms(g)
    return torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float64)


def _norm_rows(traces: Sequence[LayerTrace], grads: dict[int, Tensor | None], part: int) -> tuple[Tensor, Tensor]:
    T = max(tr.steps for tr in traces)
    rows = torch.full((len(traces), T), math.nan, dtype=torch.float64)
    init = torch.full((len(traces),), math.nan, dtype=torch.float64)

    def norms(tensors: list[Tensor]) -> Tensor:
        found = [grads.get(id(t)) for t in tensors]
        gs = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, found)]  # no path to the loss: 0
        return torch.stack(gs).flatten(1).double().norm(dim=1)  # one reduction for all steps

    for n, tr in enumerate(traces):
        if part >= len(state_tensors(tr.initial)):
            continue
        if tr.step_grads is not None:  # a kernel trace: every step's gradient in one (T, B, size) tensor
            g = tr.step_grads[part]  # None: no backward reached this layer (the loss does not depend on it): 0
            rows[n, :tr.steps] = 0.0 if g is None else step_norms(g)
            init[n] = norms([state_tensors(tr.initial)[part]])[0]
            continue
        out = norms([state_tensors(s)[part] for s in tr.states] + [state_tensors(tr.initial)[part]])
        rows[n, :tr.steps], init[n] = out[:-1], out[-1]
    return rows, init


def profile_from_recording(rec: Recording, loss: Tensor, *, retain_graph: bool = False) -> GradientProfile:
    """The gradient profile of ``loss`` over the states kept in ``rec`` (one ``torch.autograd.grad`` call).

    Parameters' ``.grad`` are left untouched. A state the loss does not depend on has gradient 0. Kernel traces
    (``record(..., kernel=True)``) get theirs from the fused backward that this call runs.

    Raises:
        ValueError: the recording is empty, or the loss is not a scalar that requires grad.
    """
    _check_complete(rec)
    if loss.dim() != 0 or not loss.requires_grad:
        raise ValueError(f"rnnlab.diagnostics: expected a scalar loss that requires grad, got shape "
                         f"{tuple(loss.shape)} with requires_grad={loss.requires_grad}")
    tensors: list[Tensor] = []
    for tr in rec.traces:
        tensors.extend(state_tensors(tr.initial))
        for s in tr.states:
            tensors.extend(state_tensors(s))
    wanted = [t for t in tensors if t.requires_grad]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True, retain_graph=retain_graph)
    return _profile(rec, {id(t): g for t, g in zip(wanted, grads)}, float(loss.detach()))


def _check_complete(rec: Recording) -> None:
    if not rec.traces:
        raise ValueError("rnnlab.diagnostics: the recording holds no layer trace (did the model run inside "
                         "`with record(model)`, with gradients enabled?)")


def _profile(rec: Recording, by_id: dict[int, Tensor | None], loss: float) -> GradientProfile:
    hidden, hidden_init = _norm_rows(rec.traces, by_id, 0)
    has_cell = any(tr.mode == "LSTM" for tr in rec.traces)
    cell, cell_init = _norm_rows(rec.traces, by_id, 1) if has_cell else (None, None)
    return GradientProfile(
        names=[tr.name for tr in rec.traces], modes=[tr.mode for tr in rec.traces],
        reverse=[tr.reverse for tr in rec.traces], hidden=hidden, cell=cell, hidden_initial=hidden_init,
        cell_initial=cell_init, loss=loss)


def profile_from_grads(rec: Recording, loss: float = math.nan) -> GradientProfile:
    """The gradient profile from the ``.grad`` of the states of a ``retain_grad=True`` recording, after the
    caller's own ``backward()`` (a state without ``.grad`` got none: 0). ``loss`` is only stored.

    Raises:
        ValueError: the recording is empty or was made without ``retain_grad``.
    """
    _check_complete(rec)
    if not rec.retain_grad:
        raise ValueError("rnnlab.diagnostics: profile_from_grads needs a recording made with retain_grad=True")
    by_id: dict[int, Tensor | None] = {}
    for tr in rec.traces:
        for s in (tr.initial, *tr.states):
            for t in state_tensors(s):
                by_id[id(t)] = t.grad
    return _profile(rec, by_id, loss)


def gradient_profile(model: nn.Module, loss_fn: Callable[[], Tensor]) -> GradientProfile:
    """Run ``loss_fn()`` (which calls ``model``) on the recording loop and measure ``||dL/dh_t||`` everywhere.

    Args:
        model: an rnnlab layer or a module containing rnnlab layers.
        loss_fn: computes a scalar loss by calling ``model``; it runs once.

    Example:
        >>> rnn = rnnlab.RNN(2, 16)
        >>> x = torch.randn(50, 4, 2)
        >>> prof = gradient_profile(rnn, lambda: rnn(x)[0][-1].pow(2).sum())
        >>> prof.hidden.shape          # (layers*directions, T)
        torch.Size([1, 50])
    """
    with record(model) as rec:
        loss = loss_fn()
    return profile_from_recording(rec, loss)
