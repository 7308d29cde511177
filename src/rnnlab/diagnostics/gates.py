r"""Gate telemetry: what the gates of a recorded layer did at every step.

The gates are recomputed from each step's recorded input and previous state with the layer's own weights and
the packing of :mod:`rnnlab.functional` (LSTM ``i, f, g, o``; GRU ``r, z, n``); the tests check that they
reproduce the recorded next state exactly, so a swapped gate would fail.

What is measured, and why:

* **Saturation** (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and understanding recurrent networks"): a
  sigmoid unit is left-saturated below ``0.1`` and right-saturated above ``0.9``; a tanh unit is saturated when
  ``|tanh| > 0.9``. A saturated unit passes almost no gradient through its own non-linearity.
* **Forget gate and the cumulative forget product** ``prod_{s<=t} f_s``: ``dc_t/dc_0`` along the LSTM's additive
  path is exactly ``diag(prod f_s)``, so this product is how much of the initial cell state (and of its gradient)
  survives ``t`` steps.
* **GRU update gate** ``z`` (torch's convention ``h' = (1-z) n + z h``): ``z`` near 1 copies the state forward.
* **Elman pre-activations** ``a = W_ih x + b_ih + W_hh h + b_hh``: ``|a|`` large means ``tanh'(a)`` near 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.reference import State
from .probe import LayerTrace, Recording, state_tensors

__all__ = ["GateStats", "gate_values", "gate_stats", "recording_gate_stats", "SIGMOID_LOW", "SIGMOID_HIGH",
           "TANH_SAT"]

SIGMOID_LOW, SIGMOID_HIGH, TANH_SAT = 0.1, 0.9, 0.9


def gate_values(mode: str, x: Tensor, state: State, weights: tuple[Tensor | None, ...]) -> dict[str, Tensor]:
    """The gate activations of one step (each ``(B, H)``), with the packing of :mod:`rnnlab.functional`.

    Returns:
        LSTM: ``i, f, g, o`` and the new cell ``c``; GRU: ``r, z, n``; Elman: the pre-activation ``a`` and ``h``.

    Raises:
        ValueError: unknown mode.
    """
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    if w_ih is None or w_hh is None:
        raise ValueError(f"gate_values: {mode} weights must include W_ih and W_hh, got None")
    h = state_tensors(state)[0]
    if mode == "LSTM":
        c = state_tensors(state)[1]
        i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        return {"i": i, "f": f, "g": g, "o": o, "c": f * c + i * g}
    if mode == "GRU":
        x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        return {"r": r, "z": z, "n": torch.tanh(x_n + r * h_n)}
    if mode in ("RNN_TANH", "RNN_RELU"):
        a = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
        return {"a": a, "h": torch.tanh(a) if mode == "RNN_TANH" else torch.relu(a)}
    raise ValueError(f"gate_values: unknown mode {mode!r}; expected 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'")


@dataclass
class GateStats:
    """Per-step series, whole-sequence scalars and histograms of one layer-direction's gates.

    Attributes:
        series: name -> ``(T,)`` float64 in time order (e.g. ``"f_mean"``, ``"forget_cumprod"``, ``"sat_sigmoid"``).
        scalars: name -> float over all steps, rows and units (e.g. ``"f_sat_high"``, ``"tanh_sat"``).
        histograms: name -> ``(counts, edges)`` over all steps, rows and units.
    """

    name: str
    mode: str
    series: dict[str, Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "scalars": self.scalars,
                "series": {k: v.tolist() for k, v in self.series.items()}}


def _step_inputs(trace: LayerTrace, rows: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Every step's input and previous state, first ``rows`` rows: ``(T*rows, I)`` and per state ``(T*rows, H)``."""
    n_states = len(state_tensors(trace.initial))
    if trace.input_seq is not None and trace.state_seq is not None:  # a kernel trace: whole tensors, no re-stacking
        start = [s.detach()[:rows].unsqueeze(0) for s in state_tensors(trace.initial)]
        after = [s[:, :rows] for s in trace.state_seq]  # (T, rows, H) each
        # the state before step t is the state after the step walked just before it
        prev = tuple((torch.cat([a[1:], s0]) if trace.reverse else torch.cat([s0, a[:-1]])).flatten(0, 1)
                     for a, s0 in zip(after, start))
        return trace.input_seq[:, :rows].flatten(0, 1), prev
    x = torch.cat([x_t.detach()[:rows] for x_t in trace.inputs])  # (T*rows, I)
    return x, tuple(torch.cat([state_tensors(p)[k].detach()[:rows] for p in trace.prev]) for k in range(n_states))


def _histograms(v: Tensor, top: float, bins: int = 20) -> tuple[Tensor, Tensor]:
    """Counts of each ``v[k]`` in ``bins`` equal bins over ``[0, top]`` (the top edge in the last bin): ``(K, bins)``
    float64, and the edges.

    ``torch.histc``'s binning, for all ``K`` groups through one integer ``bincount`` (group k's bins are
    ``k*bins .. k*bins + bins-1``; histc is a scalar loop, ~10x slower). The values binned here (sigmoid outputs
    in [0, 1], |a| up to its max) are in range by construction; NaN (a diverged run) is left out, as histc does.
    """
    K = v.size(0)
    idx = (torch.nan_to_num(v, nan=0.0) * (bins / top)).to(torch.int64).clamp_(0, bins - 1)
    idx += torch.arange(K).mul_(bins).view(K, *([1] * (v.dim() - 1)))
    nan = torch.isnan(v)
    counts = torch.bincount(idx[~nan] if bool(nan.any()) else idx.flatten(), minlength=K * bins)
    return counts.double().view(K, bins), torch.linspace(0, top, bins + 1)


def _frac(mask: Tensor) -> float:
    return int(mask.count_nonzero()) / max(mask.numel(), 1)


def _frac_per_step(mask: Tensor) -> Tensor:
    return mask.count_nonzero(dim=(1, 2)).double() / max(mask[0].numel(), 1)  # (T,)


def _sigmoid_stats(out: GateStats, names: str, gates: dict[str, Tensor], full: bool) -> Tensor | None:
    """Means and saturation fractions of the sigmoid gates ``names`` (and, when ``full``, their per-step means
    and histograms), all gates in one stacked tensor: a few large reductions instead of many small ones.

    Returns the ``(T, B, G*H)`` saturation mask in gate order when ``full``, else ``None`` (the overall fraction
    is stored: low and high saturation are disjoint, so it is their sum)."""
    # Statistics in the tensors' own dtype: converting (T, B, H) tensors to float64 costs more than the rest.
    v = torch.stack([gates[g] for g in names])  # (G, T, B, H)
    G, n = len(names), max(v[0].numel(), 1)
    low, high = v < SIGMOID_LOW, v > SIGMOID_HIGH
    means = v.mean(dim=(1, 2, 3)).tolist()
    lows = low.flatten(1).count_nonzero(dim=1).tolist()
    highs = high.flatten(1).count_nonzero(dim=1).tolist()
    for k, name in enumerate(names):
        out.scalars[f"{name}_mean"] = means[k]
        out.scalars[f"{name}_sat_low"] = lows[k] / n
        out.scalars[f"{name}_sat_high"] = highs[k] / n
    out.scalars["sigmoid_sat"] = (sum(lows) + sum(highs)) / (G * n)
    if not full:
        return None
    series = v.mean(dim=(2, 3)).double()  # (G, T)
    counts, edges = _histograms(v, 1.0)
    for k, name in enumerate(names):
        out.series[f"{name}_mean"] = series[k]
        out.histograms[name] = (counts[k], edges)
    return (low | high).permute(1, 2, 0, 3).flatten(2)  # (T, B, G*H)


def gate_stats(trace: LayerTrace, rows: int | None = None, *, full: bool = True) -> GateStats:
    """:class:`GateStats` of a recorded layer-direction (no gradients are taken).

    ``rows`` limits the statistics to the first ``rows`` batch rows (cheaper, for tracking during training);
    ``full=False`` computes the scalars only (no per-step series, no histograms: what training-time tracking
    stores).

    Gates are recomputed from the layer's parameters: cells without torch's weight layout get empty statistics,
    and under DropConnect in training mode the statistics use the un-dropped ``W_hh``. Kernel traces
    (:class:`.probe.Recorder` with ``kernel=True``) use the activations the fused kernel computed instead.

    Example:
        >>> with record(lstm) as rec:
        ...     lstm(x)
        >>> stats = gate_stats(rec.traces[0]); stats.scalars["f_mean"]
    """
    if trace.weights is None or trace.mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        return GateStats(trace.name, trace.mode)  # a cell without torch's layout: no telemetry (documented)
    T, B = trace.steps, min(trace.inputs[0].size(0), rows or trace.inputs[0].size(0))
    if trace.gate_seq is not None:  # a kernel trace: the activations the fused kernel computed
        gates = {k: v[:, :B] for k, v in trace.gate_seq.items()}  # each (T, B, H)
        if "a" in gates:  # Elman: the kernel kept the pre-activation; the activation of those rows from it
            gates["h"] = torch.tanh(gates["a"]) if trace.mode == "RNN_TANH" else torch.relu(gates["a"])
    else:
        weights = tuple(None if w is None else w.detach() for w in trace.weights)
        with torch.no_grad():
            # All steps at once: the gates of step t depend only on (x_t, state_{t-1}), both recorded, so one
            # (T*B)-row evaluation replaces T small ones.
            x, prev = _step_inputs(trace, B)
            flat = gate_values(trace.mode, x, prev, weights)
        gates = {k: v.view(T, B, -1) for k, v in flat.items()}  # each (T, B, H)
    out = GateStats(trace.name, trace.mode)
    sat: Tensor | None = None
    tanh_sat: Tensor | None = None
    if trace.mode == "LSTM":
        sat = _sigmoid_stats(out, "ifo", gates, full)
        tanh_sat = torch.cat([gates["g"], torch.tanh(gates["c"])], dim=2).abs() > TANH_SAT
        f = gates["f"]
        if full:
            # prod_{s<=t} f_s in walking order (dc_t/dc_0 along the additive path), mean over rows and units.
            walk = f.flip(0) if trace.reverse else f
            cum = torch.cumprod(walk, dim=0).mean(dim=(1, 2)).double()
            out.series["forget_cumprod"] = cum.flip(0) if trace.reverse else cum
            out.scalars["forget_cumprod_end"] = float(cum[-1])
        else:  # the end of the walk only: the product over all steps (the order does not matter)
            out.scalars["forget_cumprod_end"] = float(f.prod(dim=0).mean())
    elif trace.mode == "GRU":
        sat = _sigmoid_stats(out, "rz", gates, full)
        tanh_sat = gates["n"].abs() > TANH_SAT
    else:
        a = gates["a"].abs()
        out.scalars["preact_abs_mean"] = float(a.mean())
        if full:
            out.series["preact_abs_mean"] = a.mean(dim=(1, 2)).double()
            flat_a = a.flatten(1)  # (T, B*H)
            k = max(1, math.ceil(0.9 * flat_a.size(1)))
            out.series["preact_abs_p90"] = flat_a.kthvalue(k, dim=1).values.double()
            top = float(a.max()) or 1.0
            counts, edges = _histograms(a.unsqueeze(0), top)
            out.histograms["preact_abs"] = (counts[0], edges)
        if trace.mode == "RNN_TANH":
            tanh_sat = gates["h"].abs() > TANH_SAT
        else:
            dead = gates["a"] <= 0
            if full:
                out.series["relu_dead"] = _frac_per_step(dead)
            out.scalars["relu_dead"] = _frac(dead)
    if sat is not None:
        out.series["sat_sigmoid"] = _frac_per_step(sat)
    if tanh_sat is not None:
        if full:
            out.series["sat_tanh"] = _frac_per_step(tanh_sat)
        out.scalars["tanh_sat"] = _frac(tanh_sat)
    return out


def recording_gate_stats(rec: Recording) -> list[GateStats]:
    """:func:`gate_stats` of every trace in a recording."""
    return [gate_stats(tr) for tr in rec.traces]
