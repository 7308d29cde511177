"""The blog's ``SimpleRNN``, fixed and trained on a real sequence regression: predict the next value of a sine wave.

The model is the blog's: ``i2h`` is a Linear layer on ``cat(x, h)``, tanh, and ``h2o`` reads the output off the
hidden state. Input 1 feature, output 1 feature, mini-batches of 32 windows.

What was wrong with the original loop, and why the fix is right
---------------------------------------------------------------
1. ``init_hidden()`` built a state of batch size 1, ``torch.zeros(1, hidden_size)``. ``torch.cat((input, hidden), 1)``
   then fails for any batch larger than 1 ("Sizes of tensors must match"). Fix: ``init_hidden(batch_size)``.
2. The hidden state was created once, before the epoch loop, and carried from batch to batch. After the first
   ``loss.backward()`` PyTorch frees the graph that produced that state, so the second batch's backward walks into a
   freed graph: "Trying to backward through the graph a second time". Even with ``retain_graph=True`` it would be
   wrong: every batch would back-propagate through all earlier batches (ever-growing cost and memory).
   Fix: each batch here holds independent windows cut at random places, so each starts from a fresh zero state.
   If instead consecutive batches continued the same stream (stateful training), the right fix is truncated
   backpropagation through time: keep the state's *value* but cut its history with ``hidden = hidden.detach()``
   at every batch boundary (see ``examples/seed_custom_lstm.py`` and ``rnnlab.train``).
3. The original also started the loop with a stray indent (an IndentationError before anything ran).

Run: ``python examples/seed_simple_rnn.py`` (about 10 s on a laptop CPU).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rnnlab
from rnnlab.convert import concat_linear_to_rnn


class SimpleRNN(nn.Module):
    """The blog's Elman RNN: ``h' = tanh(i2h(cat(x, h)))``, ``y = h2o(h')``."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)
        self.tanh = nn.Tanh()

    def forward(self, input: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        combined = torch.cat((input, hidden), 1)  # (B, I + H)
        hidden = self.tanh(self.i2h(combined))  # (B, H)
        return self.h2o(hidden), hidden

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        # FIX 1: one zero row per sequence in the batch (the blog made a single row: batch size 1).
        return torch.zeros(batch_size, self.hidden_size)


def sine_windows(n_windows: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of a sine wave with random phase and a period of 20-40 steps; target = the next value.

    Returns ``(X, Y)``, each ``(N, length, 1)``, with ``Y[:, t] = X[:, t + 1]`` along the underlying wave.
    """
    phase = torch.rand(n_windows, 1, generator=generator) * 2 * math.pi
    period = 20 + 20 * torch.rand(n_windows, 1, generator=generator)
    t = torch.arange(length + 1, dtype=torch.float32).unsqueeze(0)  # (1, L+1)
    wave = torch.sin(2 * math.pi * t / period + phase)  # (N, L+1)
    return wave[:, :-1].unsqueeze(-1), wave[:, 1:].unsqueeze(-1)


def main(epochs: int = 30, seed: int = 0, hidden_size: int = 50, verbose: bool = True) -> list[float]:
    """Train the blog's SimpleRNN on next-value prediction; returns the mean training loss of each epoch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X, Y = sine_windows(512, 40, g)
    loader = DataLoader(TensorDataset(X, Y), batch_size=32, shuffle=True, generator=g)

    model = SimpleRNN(1, hidden_size, 1)
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    history = []
    for epoch in range(epochs):
        total = 0.0
        for batch_X, batch_y in loader:
            optimizer.zero_grad()
            # FIX 2: a fresh state per batch of independent windows, created inside the loop, so no batch's
            # backward reaches into the (already freed) graph of the previous batch.
            hidden = model.init_hidden(batch_X.size(0))
            loss = torch.zeros(())
            for t in range(batch_X.size(1)):
                output, hidden = model(batch_X[:, t], hidden)
                loss = loss + criterion(output, batch_y[:, t])
            loss = loss / batch_X.size(1)  # mean over time, so the learning rate does not depend on the length
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total / len(loader))
        if verbose and ((epoch + 1) % 5 == 0 or epoch == 0):
            print(f"Epoch [{epoch + 1}/{epochs}], Loss: {history[-1]:.5f}")

    if verbose:
        # The same network is an rnnlab.RNNCell once i2h is split into its x and h columns.
        cell = rnnlab.RNNCell(1, hidden_size)
        cell.load_state_dict(concat_linear_to_rnn(model.i2h.weight.data, model.i2h.bias.data, input_size=1))
        x, h = X[:4, 0], torch.randn(4, hidden_size)
        with torch.no_grad():
            diff = (cell(x, h) - model(x, h)[1]).abs().max().item()
        print(f"SimpleRNN step vs rnnlab.RNNCell with the same weights: max abs diff {diff:.2e}")
        print(f"loss: first epoch {history[0]:.5f} -> last epoch {history[-1]:.5f}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="passes over the 512 training windows")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data, init and shuffling)")
    args = parser.parse_args()
    main(args.epochs, args.seed)
