"""Gradient-flow diagnostics on the reference loop: data only, never printed (see :mod:`rnnlab.report`).

* :mod:`.probe`: record every step of every rnnlab layer of a model (``with record(model) as rec``).
* :mod:`.gradflow`: ``||dL/dh_t||`` and ``||dL/dc_t||`` per step and layer; gradient half-life.
* :mod:`.jacobian`: singular values of ``ds_t/ds_{t-k}``; spectral radius and singular values of each ``W_hh``.
* :mod:`.gates`: saturation, forget gate and its cumulative product, GRU update gate, Elman pre-activations.
* :func:`analyse`: all of the above from one forward pass.
"""

from .analysis import Diagnosis, analyse
from .gates import GateStats, gate_stats, gate_values, recording_gate_stats
from .gradflow import GradientProfile, gradient_profile, half_life, profile_from_grads, profile_from_recording
from .jacobian import (JacobianSpectrum, WeightSpectrum, jacobian_spectrum, product_spectrum, recurrent_spectra,
                       step_jacobians, trace_jacobians)
from .probe import LayerTrace, Recorder, Recording, record

__all__ = [
    "record", "Recorder", "Recording", "LayerTrace",
    "GradientProfile", "gradient_profile", "profile_from_recording", "profile_from_grads", "half_life",
    "JacobianSpectrum", "WeightSpectrum", "jacobian_spectrum", "product_spectrum", "recurrent_spectra",
    "step_jacobians", "trace_jacobians",
    "GateStats", "gate_stats", "gate_values", "recording_gate_stats",
    "Diagnosis", "analyse",
]
