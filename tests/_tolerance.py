"""The one way the tests bound a float32 result: against float64, relative to an independent float32 computation.

A float32 result (a compiled kernel's, a layer's) is never compared with a bound tuned on one machine: MKL, the
vector ISA and the summation order differ between CPUs and code paths, and the LayerNorm cells amplify rounding
(a row with a small spread is divided by it). Instead, for each quantity (an output, a state, a gradient):

* the truth is the float64 result of the same computation on the same float32 inputs and weights;
* the float32 result's error against it must stay within ``factor`` times the larger of
  - the float32 *reference*'s own error (the reference loop, hand-written equations or torch.nn in float32), and
  - the problem's *sensitivity* to float32 rounding: how far the float64 result moves when every input and weight
    is moved by one float32 rounding unit (relative 2^-24, up or down at random; the largest of three draws),
    where the caller can compute it. A float32 computation rounds its intermediates by as much, so this is the
    error any float32 implementation can have; a reference that happens to round luckily on one case then does
    not make the bound a coin toss (measured, with moves of up to 2^-24 drawn uniformly, on a LayerNormLSTM
    case: the reference loop's d/dh0 18x below the sensitivity, the kernel's at 1.6x it, and a kernel with every
    activation and layer-norm step in double at 0.5x it);
* plus a floor for rounding that no reference shows: ``eps32 * max(1, max|value|) * sqrt(terms)``, with
  ``terms`` the length of the longest sum behind the quantity (steps x rows for a summed weight gradient). The
  magnitude counts from 1 because the tests' inputs, weights and loss weights are of order 1: a gradient much
  smaller than 1 is a cancellation of terms of order 1 (a layer norm's gradient sums to zero over its features),
  and its rounding error is that of those terms (measured: 4.5e-10 on a LayerNormGRU weight gradient of 6.5e-5
  with H = 1, against the unrolled cell's 3.4e-11).

A wrong gate, sign, mask or offset moves results by far more than any of these (1e-3 to 1 against 1e-7 to 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

EPS32 = torch.finfo(torch.float32).eps
FACTOR = 4.0  # "a small multiple": rounding errors of two float32 orders differ by a few times, not by 10


def rounding_perturbed(t: Tensor, g: torch.Generator) -> Tensor:
    """``t`` in float64 with each entry moved by one float32 rounding unit (relative 2^-24, the largest rounding
    error of a float32 operation), up or down at random."""
    t = t.detach().double()
    sign = torch.randint(0, 2, t.shape, generator=g, dtype=torch.float64) * 2 - 1
    return t * (1 + sign * 2.0**-24)


def ulp_moved(t: Tensor, g: torch.Generator) -> Tensor:
    """``t`` (float32) with each entry moved to its float32 neighbour, up or down at random: a neighbouring float32
    problem, on which a float32 computation rounds its intermediates differently."""
    t = t.detach()
    up = torch.randint(0, 2, t.shape, generator=g).bool()
    return torch.nextafter(t, torch.where(up, torch.inf, -torch.inf).to(t.dtype))


def perturb_parameters_(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Every (float64) parameter of ``module`` moved by up to one float32 rounding, in place; returns ``module``."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(rounding_perturbed(p, g))
    return module


def max_error(a: Tensor, truth: Tensor) -> float:
    return float((a.detach().double() - truth.detach().double()).abs().max()) if truth.numel() else 0.0


def float32_bound(ref32: Tensor, truth: Tensor, *, sensitivity: float = 0.0, terms: int = 1,
                  factor: float = FACTOR) -> tuple[float, str]:
    """The bound on a float32 result's max abs error against ``truth`` (float64), and how it was made."""
    ref_err = max_error(ref32, truth)
    scale = max(1.0, float(truth.detach().abs().max())) if truth.numel() else 1.0
    floor = EPS32 * scale * math.sqrt(max(terms, 1))
    bound = factor * (max(ref_err, sensitivity) + floor)
    how = (f"{factor:g} x (max(float32 reference's error {ref_err:.3g}, rounding sensitivity {sensitivity:.3g}) "
           f"+ eps32 x max(1, |value|) {scale:.3g} x sqrt({terms}) = {floor:.3g})")
    return bound, how


def assert_float32_close(got: Tensor, ref32: Tensor, truth: Tensor, what: str, *, terms: int = 1,
                         sensitivity: Callable[[], float] | float = 0.0, factor: float = FACTOR) -> None:
    """``got`` (float32) is as close to ``truth`` (float64) as the float32 reference ``ref32`` is, see the module.

    ``sensitivity``: the max abs change of this quantity's float64 result under rounding-perturbed inputs
    (:func:`rounding_perturbed`), or a callable giving it; a callable is only called when the bound without it
    is exceeded (it usually costs another float64 run). ``what`` names the quantity and the case (with its seed,
    so that a failing example can be rerun)."""
    assert got.shape == truth.shape == ref32.shape, f"{what}: shapes {got.shape}, {ref32.shape}, {truth.shape}"
    assert torch.isfinite(got).all(), f"{what}: not finite"
    err = max_error(got, truth)
    bound, how = float32_bound(ref32, truth, terms=terms, factor=factor,
                               sensitivity=0.0 if callable(sensitivity) else sensitivity)
    if err > bound and callable(sensitivity):
        bound, how = float32_bound(ref32, truth, terms=terms, factor=factor, sensitivity=sensitivity())
    assert err <= bound, f"{what}: float32 error {err:.3g} against float64 > {bound:.3g} = {how}"


def assert_float32_runs_close(got: Mapping[str, Tensor], ref32: Mapping[str, Tensor], truth: Mapping[str, Tensor],
                              where: str, *, terms: int,
                              perturbed_run: Callable[[torch.Generator], Mapping[str, Tensor]
                                                      | tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]
                              | None = None,
                              factor: float = FACTOR) -> None:
    """:func:`assert_float32_close` for every quantity of a run (outputs, states, gradients by name).

    ``perturbed_run(g)``: the float64 run again on inputs and weights moved by :func:`rounding_perturbed` with
    generator ``g``; run (three draws) only if some quantity exceeds the bound without it. It may instead return a
    pair ``(float32 reference run, float64 run)`` on the same neighbouring float32 inputs (:func:`ulp_moved`): the
    sensitivity then also counts the float32 reference's own error there. Where a layer norm over a few units
    amplifies intermediate roundings, the reference's error on one quantity of the case itself can be 10-100x below
    its error on the same quantity of a neighbouring problem (measured: 3e-7 against 2e-5 on a LayerNormLSTM bias
    gradient with H = 2), which moving the inputs of a float64 run does not show."""
    assert got.keys() == ref32.keys() == truth.keys(), where
    moved: list[Mapping[str, Tensor] | tuple[Mapping[str, Tensor], Mapping[str, Tensor]]] = []

    def sensitivity(key: str) -> float:
        if perturbed_run is None:
            return 0.0
        if not moved:
            moved.extend(perturbed_run(torch.Generator().manual_seed(seed)) for seed in (1, 2, 3))
        worst = 0.0
        for m in moved:
            if isinstance(m, tuple):  # (float32 reference, float64) on the same neighbouring inputs
                ref_moved, m = m
                worst = max(worst, max_error(ref_moved[key], m[key]))
            worst = max(worst, max_error(m[key], truth[key]))
        return worst

    for key in truth:
        assert_float32_close(got[key], ref32[key], truth[key], f"{where}: {key}", terms=terms, factor=factor,
                             sensitivity=lambda key=key: sensitivity(key))
