"""The layer options' random masks, drawn once per layer-direction and forward, the same way for every kernel
and the reference loop (so one seed gives the same result on both).

* recurrent dropout (Gal & Ghahramani 2016): one mask ``(B, H_out)`` per sequence, shared by every time step,
  multiplied into ``h_{t-1}`` where it enters ``W_hh`` (:attr:`rnnlab.sequence.SequenceRun.h_mask`);
* zoneout (Krueger et al. 2017): per state, a keep tensor ``(T, B, size)``, fresh per step and unit in training
  (0/1) and the rate itself in eval mode, the expectation of the update (:attr:`SequenceRun.keep`);
* DropConnect on ``W_hh`` (Wan et al. 2013): one mask per forward shared by every step and sequence, as in
  AWD-LSTM (Merity et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sequence import State, hidden_of
from .common import compiled_available, ops

__all__ = ["bernoulli_mask", "drop_connect", "sequence_masks"]


def bernoulli_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of 1s (probability ``p``) and 0s, i.i.d., as ``dtype``.

    On the CPU, torch's generator costs ~3-8 ns per value, which made drawing zoneout's ``(T, B, H)`` masks 15-20%
    of a small layer's forward + backward. With the compiled kernels the mask comes from eight xoshiro256** streams
    in vector lanes (``csrc/masks.cpp``, ~0.35 ns per element) seeded by one 64-bit draw from torch's generator, so
    ``torch.manual_seed`` still fixes it;
    without them, from 16-bit lanes of torch's 64-bit integer draws (4 elements per draw). Either way ``p`` is
    rounded to a multiple of ``2^-16`` (``torch.rand < p`` rounds it to ``2^-24``). Other devices use
    ``torch.rand < p``.
    """
    if torch.device(device).type != "cpu":
        return torch.rand(shape, device=device).lt_(p).to(dtype)
    n = math.prod(shape)
    exact = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    seed = torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64) if compiled_available() else None
    # Under vmap(randomness="different") the draw is one seed per sample, which the C++ op cannot take: the plain
    # path below then draws each sample's own mask (its ops are batched).
    if seed is not None and not torch._C._functorch.is_batchedtensor(seed):
        mask = ops().bernoulli_mask(n, p, int(seed), torch.empty(0, dtype=exact)).view(shape)
    else:
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
        # The comparison in float, in place (the int16 values are exact in float32/64): one pass instead of a
        # compare into bool and a cast. P(uniform int16 < threshold) = round(p * 2^16) / 2^16.
        mask = bits.to(exact).lt_(float(round(p * 65536) - 32768)).view(shape)
    return mask if exact == dtype else mask.to(dtype)


def drop_connect(w: Tensor, p: float) -> Tensor:
    """``F.dropout(w, p)`` (zeros with probability ``p``, the rest scaled by ``1/(1-p)``) with the mask from
    :func:`bernoulli_mask` (cheaper on the CPU; ``p`` rounded to a multiple of ``2^-16``)."""
    if p >= 1:
        return w * 0
    return w * bernoulli_mask(tuple(w.shape), 1 - p, w.dtype, w.device).div_(1 - p)


def sequence_masks(state: State, steps: int, recurrent_dropout: float, zoneout: Sequence[float],
                   training: bool) -> tuple[Tensor | None, tuple[Tensor | None, ...]]:
    """One layer-direction's recurrent-dropout mask ``(B, H_out)`` (or ``None``) and, per state, its zoneout keep
    tensor ``(T, B, size)`` (or ``None``), for a sequence of ``steps`` steps starting from ``state``."""
    h = hidden_of(state)
    h_mask = None
    if recurrent_dropout > 0 and training:
        h_mask = F.dropout(torch.ones_like(h), recurrent_dropout, training=True)
    keep: list[Tensor | None] = []
    for s, z in zip(state if isinstance(state, tuple) else (state,), zoneout):
        if z == 0:
            keep.append(None)
        elif training:
            keep.append(bernoulli_mask((steps, *s.shape), z, s.dtype, s.device))
        else:
            keep.append(torch.full((steps, *s.shape), z, dtype=s.dtype, device=s.device))
    return h_mask, tuple(keep)
