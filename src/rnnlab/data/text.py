"""Character-level language modelling: a vocabulary and a task that streams text through a stateful model.

The text is cut into ``B`` contiguous streams, one per batch row; consecutive batches continue each stream, so
the trainer carries the recurrent state across them (detached at each boundary, i.e. truncated BPTT over an
unbounded sequence, as in Zaremba et al. 2014 and pytorch/examples' word_language_model). Each epoch starts the
streams at a new random offset in ``[0, seq_len)`` so the chunk boundaries move between epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .base import Batch, Task, seeded_generator

__all__ = ["CharVocab", "CharLMTask", "stream_layout", "load_text_file"]


class CharVocab:
    """Characters to ids and back; the id of a character is its index in the sorted character set.

    Example:
        >>> v = CharVocab("hello")
        >>> v.decode(v.encode("hole"))
        'hole'
    """

    def __init__(self, text_or_chars: str | list[str]) -> None:
        self.chars: list[str] = sorted(set(text_or_chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._max_code = max((ord(c) for c in self.chars), default=0)

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """int64 ids ``(len(text),)``. Raises UserError naming the first character not in the vocabulary."""
        # Vectorised through code points (a Python loop over millions of characters takes seconds).
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(self._max_code, int(codes.max(initial=0))) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = table[codes]
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise UserError(f"CharVocab: character {bad!r} is not in the vocabulary of {len(self.chars)} characters")
        return torch.from_numpy(ids)

    def decode(self, ids: Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def stream_layout(tokens: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-character targets as ``batch_size`` contiguous streams, time-major.

    Stream ``b`` is ``tokens[b*L : (b+1)*L]`` with ``L = (N - 1) // batch_size``; the target of each position is
    the following character.

    Shape:
        tokens: ``(N,)``. Returns ``X, Y``: ``(L, batch_size)`` each.
    """
    length = (tokens.numel() - 1) // batch_size
    if length < 2:
        raise UserError(f"char LM: {tokens.numel()} characters are too few for batch_size={batch_size}")
    x = tokens[: batch_size * length].view(batch_size, length).t().contiguous()  # (L, B)
    y = tokens[1: batch_size * length + 1].view(batch_size, length).t().contiguous()  # (L, B)
    return x, y


class CharLMTask(Task):
    """Next-character prediction on a training and a validation text.

    Batches: ``x`` ``(seq_len, B)`` int64 ids, ``y`` ``(seq_len, B)`` the next ids; the metric is the validation
    cross-entropy in nats per character (``loss``; divide by ln 2 for bits per character).

    Args:
        name: registry name. train_text, val_text: the two splits. vocab: shared vocabulary.
        batch_size, seq_len: batch shape. seed: fixes the per-epoch offsets.
    """

    kind = "lm"
    per_step = True
    stateful = True

    def __init__(self, name: str, train_text: str, val_text: str, vocab: CharVocab, batch_size: int,
                 seq_len: int, seed: int) -> None:
        self.name = name
        self.vocab = vocab.chars
        self.char_vocab = vocab
        self.input_size = self.output_size = len(vocab)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.train_x, self.train_y = stream_layout(vocab.encode(train_text), batch_size)
        val_batch = max(1, min(batch_size, (len(val_text) - 1) // (seq_len + 1)))
        self.val_x, self.val_y = stream_layout(vocab.encode(val_text), val_batch)
        # Leave one chunk of room for the random per-epoch offset.
        self.steps_per_epoch = (self.train_x.size(0) - seq_len) // seq_len
        if self.steps_per_epoch < 1:
            raise UserError(f"{name}: training text of {len(train_text)} characters is too short for "
                            f"batch_size={batch_size} x seq_len={seq_len}")
        self.train_chars, self.val_chars = len(train_text), len(val_text)

    def train_batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.steps_per_epoch)
        offset = int(torch.randint(0, self.seq_len, (1,), generator=seeded_generator(self.seed, epoch)))
        start = offset + i * self.seq_len
        sl = slice(start, start + self.seq_len)
        return Batch(self.train_x[sl], self.train_y[sl], reset=i == 0)

    def val_batches(self) -> Iterator[Batch]:
        for k, start in enumerate(range(0, self.val_x.size(0), self.seq_len)):
            sl = slice(start, start + self.seq_len)
            yield Batch(self.val_x[sl], self.val_y[sl], reset=k == 0)

    def use_vocab(self, chars: list[str]) -> None:
        """Use another vocabulary (a trained run's own, so that ids mean what they meant in training): the streams
        are re-encoded. Raises UserError naming the characters of the text that it lacks."""
        vocab = CharVocab(chars)
        missing = [c for c in self.vocab or [] if c not in vocab.index]
        if missing:
            raise UserError(f"{self.name}: the text has {len(missing)} character(s) that the run's vocabulary of "
                            f"{len(vocab)} lacks, e.g. {missing[:5]}")
        remap = torch.tensor([vocab.index[c] for c in self.vocab or []], dtype=torch.int64)
        self.train_x, self.train_y, self.val_x, self.val_y = (remap[t] for t in (self.train_x, self.train_y,
                                                                                 self.val_x, self.val_y))
        self.vocab, self.char_vocab = vocab.chars, vocab
        self.input_size = self.output_size = len(vocab)

    def describe(self) -> str:
        return (f"{self.name}: {self.train_chars:,} training / {self.val_chars:,} validation characters, "
                f"vocabulary {len(self.char_vocab)}, {self.steps_per_epoch} steps per epoch")


def load_text_file(path: str) -> str:
    """Read a UTF-8 text file, with a one-line error if it is missing or not text."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"text task: {p} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"text task: file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"text task: {p} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"text task: cannot read {p}: {err.strerror or err}") from None
    if not text:
        raise UserError(f"text task: {p} is empty")
    return text
