"""Everything :mod:`rnnlab.diagnostics` measures, from one recorded forward pass of a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .gates import GateStats, gate_stats
from .gradflow import GradientProfile, profile_from_recording
from .jacobian import JacobianSpectrum, WeightSpectrum, product_spectrum, recurrent_spectra, trace_jacobians
from .probe import record, state_tensors

__all__ = ["Diagnosis", "analyse"]


@dataclass
class Diagnosis:
    """Gradient profile, Jacobian spectra (one per layer-direction), ``W_hh`` spectra and gate statistics."""

    profile: GradientProfile
    jacobians: list[JacobianSpectrum]
    weights: list[WeightSpectrum]
    gates: list[GateStats]

    def to_dict(self) -> dict:
        return {"profile": self.profile.to_dict(), "jacobians": [j.to_dict() for j in self.jacobians],
                "weights": [w.to_dict() for w in self.weights], "gates": [g.to_dict() for g in self.gates]}


def analyse(model: nn.Module, loss_fn: Callable[[], Tensor], *, windows: Sequence[int] | None = None,
            rows: int = 4) -> Diagnosis:
    """Run ``loss_fn()`` once on the recording loop and measure everything.

    Args:
        model: an rnnlab layer or a module containing rnnlab layers.
        loss_fn: computes a scalar loss by calling ``model``.
        windows: Jacobian product lengths ``k`` (default: 1, 2, 5, 10, 20, 50, ... below ``T``, and ``T``).
        rows: batch rows used for the Jacobians (their cost grows with ``rows * T * S^2``).

    Example:
        >>> model = LastStepRegressor("lstm", 2, 32)
        >>> x, y = adding_batch(50, 16)
        >>> diag = analyse(model, lambda: ((model(x) - y) ** 2).mean())
    """
    with record(model) as rec:
        loss = loss_fn()
    profile = profile_from_recording(rec, loss)
    jacobians = []
    for tr in rec.traces:
        T = tr.steps
        # default: 1, 2, 5, 10, 20, 50, ... below T, and T itself (the whole sequence, ds_{T-1}/ds_initial)
        ks = [k for k in windows if k <= T] if windows else [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k < T]
        ks = ks or [T]
        if not windows:
            ks.append(T)
        sizes = [s.size(-1) for s in state_tensors(tr.initial)]
        jacobians.append(product_spectrum(trace_jacobians(tr, rows), ks, hidden_size=sizes[0]))
    return Diagnosis(profile, jacobians, recurrent_spectra(model), [gate_stats(tr) for tr in rec.traces])
