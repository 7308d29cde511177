"""Gradient clipping and the non-finite guard: find where a NaN/Inf first appeared, so a skipped step says why.

Clipping by global norm follows Pascanu et al. (2013), "On the difficulty of training recurrent neural networks":
if ``||g|| > c`` rescale ``g <- g c / ||g||``; the pre-clip norm is returned so the trainer can log it and the
clip rate (how often the threshold bites), which is the signal that ``c`` is too low or the run is unstable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["clip_gradients", "first_nonfinite_parameter", "first_nonfinite_grad", "first_nonfinite_output"]


@torch.no_grad()
def clip_gradients(params: Iterable[nn.Parameter], max_norm: float = 0.0, max_value: float = 0.0
                   ) -> tuple[float, bool]:
    """Clip gradients in place; returns ``(pre-clip global L2 norm, whether anything was clipped)``.

    ``max_norm > 0``: scale all gradients by ``min(1, max_norm / (||g|| + 1e-6))`` (exactly
    ``torch.nn.utils.clip_grad_norm_``). ``max_value > 0``: then clamp each element to ``[-max_value, max_value]``.
    A non-finite norm leaves the gradients untouched (the guard skips that step).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0, False
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    total = float(norm)
    if not torch.isfinite(norm):
        return total, False
    clipped = False
    if max_norm > 0:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        clipped = bool(coef < 1.0)
        for g in grads:
            g.mul_(coef)
    if max_value > 0:
        clipped = clipped or any(bool((g.abs() > max_value).any()) for g in grads)
        for g in grads:
            g.clamp_(-max_value, max_value)
    return total, clipped


def first_nonfinite_parameter(model: nn.Module) -> str | None:
    """Name of the first parameter (registration order) holding a NaN or Inf, or None."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return name
    return None


def first_nonfinite_grad(model: nn.Module) -> str | None:
    """Name of the first parameter, in the order backward reaches them (output side first), with a non-finite
    gradient, or None. Backward visits the head before the recurrent layer, so reversed registration order is the
    order in which a NaN flowing back from the loss appears."""
    for name, p in reversed(list(model.named_parameters())):
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def _nonfinite(t) -> bool:
    if isinstance(t, Tensor):
        return t.is_floating_point() and not bool(torch.isfinite(t).all())
    if isinstance(t, (tuple, list)):
        return any(_nonfinite(u) for u in t)
    return False


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, run: Callable[[], object]) -> str | None:
    """Re-run ``run()`` (a forward pass of ``model``) with hooks; the first module, in execution order, whose
    output is non-finite, as ``"name (Type)"``; None if every module output is finite."""
    found: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if module is model:
            continue

        def hook(mod, inputs, output, name=name):
            if not found and _nonfinite(output):
                found.append(f"{name} ({type(mod).__name__})")

        handles.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
