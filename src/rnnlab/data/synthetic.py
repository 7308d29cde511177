"""Synthetic sequence tasks with known difficulty: sine (the seed's), the adding problem, copy memory.

Every generator takes a :class:`torch.Generator`, so a seed fixes the data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["sine_windows", "adding_problem", "copy_memory", "COPY_SYMBOLS"]

COPY_SYMBOLS = 8  # alphabet of the copy task: ids 1..8; 0 is the blank, 9 the "recall now" cue


def sine_windows(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Windows of sine waves with a random period in [20, 40) steps and a random phase; target = the next value
    (the seed program's task, ``examples/seed_simple_rnn.py``).

    Shape: returns ``x`` ``(n, length, 1)`` and ``y`` ``(n, length, 1)`` with ``y[:, t] = x[:, t + 1]``.
    """
    period = 20 + 20 * torch.rand(n, 1, generator=generator)  # (n, 1)
    phase = 2 * math.pi * torch.rand(n, 1, generator=generator)  # (n, 1)
    t = torch.arange(length + 1, dtype=torch.float32).unsqueeze(0)  # (1, L+1)
    wave = torch.sin(2 * math.pi * t / period + phase)  # (n, L+1)
    return wave[:, :-1].unsqueeze(-1), wave[:, 1:].unsqueeze(-1)


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015's version).

    Each step has two features: a value ``U(0, 1)`` and a marker; exactly two markers are 1, one in each half of
    the sequence; the target is the sum of the two marked values. Predicting 1 always gives MSE 1/6 ~ 0.167, the
    baseline a model must beat.

    Shape: ``x`` ``(n, length, 2)``, ``y`` ``(n, 1)``.
    """
    if length < 2:
        raise UserError(f"adding task: seq_len must be >= 2, got {length}")
    values = torch.rand(n, length, generator=generator)  # (n, T)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (n, 1)
    return torch.stack([values, markers], dim=-1), y


def copy_memory(n: int, delay: int, generator: torch.Generator, symbols: int = 10) -> tuple[Tensor, Tensor]:
    """Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016's setting).

    Input: ``symbols`` random ids from 1..8, then ``delay - 1`` blanks (0), the cue 9, then ``symbols`` blanks.
    Target: blanks everywhere except the last ``symbols`` steps, which must repeat the first ones. Always
    predicting blanks and then a uniform guess scores ``symbols * ln(8) / (delay + 2 * symbols)`` nats, the
    memoryless baseline.

    Shape: ``x`` ``(n, delay + 2 * symbols, 10)`` one-hot float, ``y`` ``(n, delay + 2 * symbols)`` int64.
    """
    if delay < 1:
        raise UserError(f"copy task: delay must be >= 1, got {delay}")
    seq = torch.randint(1, COPY_SYMBOLS + 1, (n, symbols), generator=generator)
    length = delay + 2 * symbols
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, :symbols] = seq
    ids[:, symbols + delay - 1] = COPY_SYMBOLS + 1
    y = torch.zeros(n, length, dtype=torch.long)
    y[:, -symbols:] = seq
    x = torch.nn.functional.one_hot(ids, COPY_SYMBOLS + 2).float()  # (n, T, 10)
    return x, y
