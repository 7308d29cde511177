"""Character-level language modelling: a vocabulary and a task that streams text through a stateful model.

The text is cut into ``B`` contiguous streams, one per batch row; consecutive batches continue each stream, so
the trainer carries the recurrent state across them (detached at each boundary, i.e. truncated BPTT over an
unbounded sequence, as in Zaremba et al. 2014 and pytorch/examples' word_language_model). Each epoch starts the
streams at a new random offset in ``[0, seq_len)`` so the chunk boundaries move between epochs.

A text file is read in chunks (:func:`load_text_ids`) into a file of character ids that is memory-mapped, one or
two bytes per character, and a batch turns only its own ids into an int64 tensor: the memory a file costs is
that of its chunks, not of its size (a 2 GB file would otherwise need ~26 GB as a Python string, its UTF-32 copy
and int64 tensors).
"""

from __future__ import annotations

import codecs
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .base import Batch, Task, seeded_generator

__all__ = ["CharVocab", "CharLMTask", "stream_layout", "load_text_file", "load_text_ids", "default_prime",
           "fitting_batch_shape"]

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
        return torch.from_numpy(self.encode_array(text))

    def encode_array(self, text: str) -> np.ndarray:
        """:meth:`encode` as a NumPy int64 array."""
        # Vectorised through code points (a Python loop over millions of characters takes seconds).
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(self._max_code, int(codes.max(initial=0))) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = table[codes]
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise UserError(f"CharVocab: character {bad!r} is not in the vocabulary of {len(self.chars)} characters")
        return ids

    def decode(self, ids: Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def stream_layout(tokens: Tensor | np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character targets as ``batch_size`` contiguous streams, time-major.

    Stream ``b`` is ``tokens[b*L : (b+1)*L]`` with ``L = (N - 1) // batch_size``; the target of each position is
    the following character. Both are strided views of ``tokens`` (e.g. memory-mapped ids): nothing is copied.

    Shape:
        tokens: ``(N,)``. Returns ``X, Y``: ``(L, batch_size)`` each.
    """
    ids = tokens.numpy() if isinstance(tokens, Tensor) else tokens
    length = (len(ids) - 1) // batch_size
    if length < 2:
        raise UserError(f"char LM: {len(ids)} characters are too few for batch_size={batch_size}")
    return (ids[: batch_size * length].reshape(batch_size, length).T,  # (L, B)
            ids[1: batch_size * length + 1].reshape(batch_size, length).T)


def fitting_batch_shape(n_chars: int, batch_size: int, seq_len: int) -> tuple[int, int] | None:
    """The ``(batch_size, seq_len)``, each at most the one asked for, that a training text of ``n_chars``
    characters can fill (one epoch needs ``2 * seq_len`` characters per stream, one chunk being the room for the
    random offset); the longest ``seq_len`` that keeps ``min(batch_size, 8)`` streams, else the longest with one.
    None when not even ``1 x 1`` fits."""
    lengths = sorted({seq_len} | {seq_len >> k for k in range(seq_len.bit_length())} - {0}, reverse=True)
    fits = [(min(batch_size, (n_chars - 1) // (2 * s)), s) for s in lengths if (n_chars - 1) // (2 * s) >= 1]
    for b, s in fits:
        if b >= min(batch_size, 8):
            return b, s
    return fits[0] if fits else None


class CharLMTask(Task):
    """Next-character prediction on a training and a validation text.

    Batches: ``x`` ``(seq_len, B)`` int64 ids, ``y`` ``(seq_len, B)`` the next ids; the metric is the validation
    cross-entropy in nats per character (``loss``; divide by ln 2 for bits per character).

    Args:
        name: registry name. train_text, val_text: the two splits, as text or as arrays of ids in ``vocab``
            (e.g. the memory-mapped ids of :func:`load_text_ids`). vocab: shared vocabulary.
        batch_size, seq_len: batch shape. seed: fixes the per-epoch offsets.

    Raises:
        UserError: a split too short for the batch shape; the message suggests a ``--batch-size`` and
            ``--seq-len`` that fit.
    """

    kind = "lm"
    per_step = True
    stateful = True

    def __init__(self, name: str, train_text: str | np.ndarray, val_text: str | np.ndarray, vocab: CharVocab,
                 batch_size: int, seq_len: int, seed: int) -> None:
        self.name = name
        self.vocab = vocab.chars
        self.char_vocab = vocab
        self.input_size = self.output_size = len(vocab)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        n_train, n_val = len(train_text), len(val_text)
        if (n_train - 1) // batch_size < 2 * seq_len:  # fewer than one step per epoch (see fitting_batch_shape)
            fit = fitting_batch_shape(n_train, batch_size, seq_len)
            hint = (f"; try --batch-size {fit[0]} --seq-len {fit[1]}" if fit else
                    "; give a longer text")
            raise UserError(f"{name}: training text of {n_train:,} characters is too short for batch_size="
                            f"{batch_size} x seq_len={seq_len} (it needs batch_size x 2 x seq_len + 1 = "
                            f"{batch_size * 2 * seq_len + 1:,}){hint}")
        if n_val < 3:
            raise UserError(f"{name}: validation text of {n_val} characters is too short (at least 3); raise "
                            f"--val-fraction or give a longer text")
        train_ids = vocab.encode_array(train_text) if isinstance(train_text, str) else train_text
        val_ids = vocab.encode_array(val_text) if isinstance(val_text, str) else val_text
        self.train_x, self.train_y = stream_layout(train_ids, batch_size)
        val_batch = max(1, min(batch_size, (n_val - 1) // (seq_len + 1)))
        self.val_x, self.val_y = stream_layout(val_ids, val_batch)
        # Leave one chunk of room for the random per-epoch offset.
        self.steps_per_epoch = (self.train_x.shape[0] - seq_len) // seq_len
        self.train_chars, self.val_chars = n_train, n_val
        self.id_map: np.ndarray | None = None  # stored id -> model id, when the model's vocabulary is another one

    def _ids(self, a: np.ndarray) -> Tensor:
        """A batch's ids as an int64 tensor (through ``id_map`` when set): the only copy of the data a batch makes."""
        ids = np.ascontiguousarray(a, dtype=np.int64)
        return torch.from_numpy(ids if self.id_map is None else self.id_map[ids])

    def train_batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.steps_per_epoch)
        offset = int(torch.randint(0, self.seq_len, (1,), generator=seeded_generator(self.seed, epoch)))
        start = offset + i * self.seq_len
        sl = slice(start, start + self.seq_len)
        return Batch(self._ids(self.train_x[sl]), self._ids(self.train_y[sl]), reset=i == 0)

    def val_batches(self) -> Iterator[Batch]:
        for k, start in enumerate(range(0, self.val_x.shape[0], self.seq_len)):
            sl = slice(start, start + self.seq_len)
            yield Batch(self._ids(self.val_x[sl]), self._ids(self.val_y[sl]), reset=k == 0)

    def use_vocab(self, chars: list[str]) -> None:
        """Use another vocabulary (a trained run's own, so that ids mean what they meant in training): every batch's
        ids are mapped to it. Raises UserError naming the characters of the text that it lacks."""
        vocab = CharVocab(chars)
        missing = [c for c in self.vocab or [] if c not in vocab.index]
        if missing:
            raise UserError(f"{self.name}: the text has {len(missing)} character(s) that the run's vocabulary of "
                            f"{len(vocab)} lacks, e.g. {missing[:5]}")
        # The streams stay as stored (memory-mapped ids); every batch goes through id_map, so remap that.
        remap = np.array([vocab.index[c] for c in self.vocab or []], dtype=np.int64)
        self.id_map = remap if self.id_map is None else remap[self.id_map]
        self.vocab, self.char_vocab = vocab.chars, vocab
        self.input_size = self.output_size = len(vocab)

    def describe(self) -> str:
        return (f"{self.name}: {self.train_chars:,} training / {self.val_chars:,} validation characters, "
                f"vocabulary {len(self.char_vocab)}, {self.steps_per_epoch} steps per epoch")


def default_prime(vocab: list[str]) -> str:
    """The character sampling starts from when none is given: a newline, else a space, else the first character
    of the vocabulary (a text without newlines, or of NUL bytes, still has a prime the model knows)."""
    if not vocab:
        raise UserError("generate: the model has no vocabulary (not a character model)")
    return next((c for c in ("\n", " ") if c in vocab), vocab[0])


_CHUNK_BYTES = 1 << 20  # 1 MiB of the file at a time: its decoded, UTF-32 and id copies stay under ~12 MB


def _text_chunks(path: str | Path) -> Iterator[str]:
    """The text of a UTF-8 file in pieces, newlines translated as ``open()`` does in text mode (CR LF and CR
    to LF).

    Raises:
        UserError: missing file, a folder, unreadable, not UTF-8 (with the byte offset), or empty.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"text task: {p} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"text task: file not found: {p}")
    # utf-8-sig: the byte-order mark some editors (Notepad) put first is not text.
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8-sig")(), translate=True)
    done = 0  # bytes handed to the decoder before the current chunk
    empty = True
    try:
        with p.open("rb") as f:
            while True:
                raw = f.read(_CHUNK_BYTES)
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as err:
                    raise UserError(f"text task: {p} is not UTF-8 text ({err.reason} near byte "
                                    f"{done + err.start})") from None
                done += len(raw)
                if text:
                    empty = False
                    yield text
                if not raw:
                    break
    except OSError as err:
        raise UserError(f"text task: cannot read {p}: {err.strerror or err}") from None
    if empty:
        raise UserError(f"text task: {p} is empty")


def load_text_file(path: str | Path) -> str:
    """Read a whole UTF-8 text file as one string, with a one-line error if it is missing or not text (for
    small files; :func:`load_text_ids` reads a file of any size)."""
    return "".join(_text_chunks(path))


def load_text_ids(path: str | Path) -> tuple[CharVocab, np.ndarray]:
    """A UTF-8 text file as its vocabulary and its character ids, read in two passes of bounded memory.

    The first pass collects the characters, the second writes their ids (uint8 up to 256 characters, else
    uint16 or uint32) to an unlinked temporary file that is returned memory-mapped, so the ids of a file larger
    than memory page in and out as batches need them.

    Shape: returns ids ``(number of characters,)``.
    """
    chars: set[str] = set()
    for text in _text_chunks(path):
        chars.update(text)
    vocab = CharVocab(sorted(chars))
    codes = [ord(c) for c in vocab.chars]
    dtype = np.uint8 if len(vocab) <= 1 << 8 else np.uint16 if len(vocab) <= 1 << 16 else np.uint32
    table = np.zeros(max(codes) + 1, dtype=dtype)
    table[codes] = np.arange(len(vocab), dtype=dtype)
    store = tempfile.TemporaryFile(prefix="rnnlab-ids-")
    n = 0
    for text in _text_chunks(path):
        if not set(text) <= chars:
            raise UserError(f"text task: {path} changed while it was read (characters the first pass did not see)")
        store.write(table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)].tobytes())
        n += len(text)
    store.flush()
    # The mapping keeps the (already unlinked) file alive after `store` is closed.
    ids_map = np.memmap(store, dtype=dtype, mode="r", shape=(n,))
    store.close()
    return vocab, ids_map
