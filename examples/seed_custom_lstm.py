"""The blog's ``CustomLSTM`` (one matrix per gate on ``cat(h, x)``), fixed, and shown equal to ``rnnlab.LSTMCell``.

Setup as in the blog: input 10, hidden 20, sequence 15, batch 5, uniform ±0.08 init, MSE between the last hidden
state and a random target, Adam 1e-3, 100 epochs on one fixed random batch.

What was wrong with the original loop, and why the fix is right
---------------------------------------------------------------
``hidden, cell = model.init_hidden(batch_size)`` ran once, before the epoch loop, and the final ``(hidden, cell)`` of
one epoch became the initial state of the next. After epoch 1's ``loss.backward()`` the graph behind that state is
freed, so epoch 2's backward fails: "Trying to backward through the graph a second time". Two fixes, for two
different intentions:

* Each epoch is a new pass over the same sequence, so it should start from the zero state. That is what this
  example does: the state is created inside the loop (``FIX``).
* If the state is *meant* to carry on (a long stream cut into chunks), keep its value and cut its history with
  ``hidden, cell = hidden.detach(), cell.detach()`` at each chunk boundary: truncated backpropagation through
  time. The gradient then stops at the boundary, the forward pass still sees the carried state, and memory and
  time per step stay constant. ``carry_state=True`` below runs that variant.

Finally the example maps the trained gate matrices into torch's packed layout (gates i, f, g, o; the blog's
``W_C`` is ``g``) with :func:`rnnlab.convert.split_gates_to_lstm`, and checks that ``rnnlab.LSTMCell`` computes
exactly the same states.

Run: ``python examples/seed_custom_lstm.py`` (a few seconds).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import rnnlab
from rnnlab.convert import split_gates_to_lstm


class CustomLSTM(nn.Module):
    """The blog's LSTM cell: separate forget, input, candidate and output gates on ``cat(h, x)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        # torch.empty, not the legacy torch.Tensor(...) constructor; both are overwritten by init_weights
        self.W_f = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))  # forget gate
        self.b_f = nn.Parameter(torch.empty(hidden_size))
        self.W_i = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))  # input gate
        self.b_i = nn.Parameter(torch.empty(hidden_size))
        self.W_C = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))  # candidate cell
        self.b_C = nn.Parameter(torch.empty(hidden_size))
        self.W_o = nn.Parameter(torch.empty(hidden_size, hidden_size + input_size))  # output gate
        self.b_o = nn.Parameter(torch.empty(hidden_size))
        self.init_weights()

    def init_weights(self) -> None:
        for param in self.parameters():
            nn.init.uniform_(param, -0.08, 0.08)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        combined = torch.cat((hidden, x), 1)  # (B, H + I)
        f_t = torch.sigmoid(combined @ self.W_f.T + self.b_f)
        i_t = torch.sigmoid(combined @ self.W_i.T + self.b_i)
        C_tilde = torch.tanh(combined @ self.W_C.T + self.b_C)
        C_t = f_t * cell + i_t * C_tilde
        o_t = torch.sigmoid(combined @ self.W_o.T + self.b_o)
        h_t = o_t * torch.tanh(C_t)
        return h_t, C_t

    def init_hidden(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(batch_size, self.hidden_size), torch.zeros(batch_size, self.hidden_size)

    def to_rnnlab(self) -> rnnlab.LSTMCell:
        """An ``rnnlab.LSTMCell`` with the same function (gate blocks rearranged into torch's layout)."""
        cell = rnnlab.LSTMCell(self.input_size, self.hidden_size, dtype=self.W_f.dtype)
        weights = {"i": self.W_i, "f": self.W_f, "g": self.W_C, "o": self.W_o}
        biases = {"i": self.b_i, "f": self.b_f, "g": self.b_C, "o": self.b_o}
        cell.load_state_dict(split_gates_to_lstm({k: v.detach() for k, v in weights.items()},
                                                 {k: v.detach() for k, v in biases.items()},
                                                 self.input_size, self.hidden_size))
        return cell


def main(epochs: int = 100, seed: int = 0, carry_state: bool = False, verbose: bool = True) -> list[float]:
    """Train the blog's CustomLSTM; returns the loss of every epoch.

    ``carry_state=True`` carries the final state into the next epoch, detached (truncated BPTT).
    """
    input_size, hidden_size, batch_size, sequence_length = 10, 20, 5, 15
    torch.manual_seed(seed)
    model = CustomLSTM(input_size, hidden_size)
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    inputs = torch.randn(sequence_length, batch_size, input_size)
    targets = torch.randn(batch_size, hidden_size)

    history = []
    hidden, cell = model.init_hidden(batch_size)
    for epoch in range(epochs):
        model.zero_grad()
        if carry_state:
            # Truncated BPTT: keep the state's value, drop its graph (which the last backward freed).
            hidden, cell = hidden.detach(), cell.detach()
        else:
            # FIX: every epoch is a fresh pass over the sequence, so it starts from the zero state.
            hidden, cell = model.init_hidden(batch_size)
        for t in range(sequence_length):
            hidden, cell = model(inputs[t], hidden, cell)
        loss = criterion(hidden, targets)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if verbose and (epoch + 1) % 10 == 0:
            print(f"Epoch [{epoch + 1}/{epochs}], Loss: {loss.item():.4f}")

    if verbose:
        ours = model.to_rnnlab()
        h_a, c_a = model.init_hidden(batch_size)
        h_b, c_b = h_a, c_a
        with torch.no_grad():
            for t in range(sequence_length):
                h_a, c_a = model(inputs[t], h_a, c_a)
                h_b, c_b = ours(inputs[t], (h_b, c_b))
        diff = max((h_a - h_b).abs().max().item(), (c_a - c_b).abs().max().item())
        print(f"CustomLSTM vs rnnlab.LSTMCell over {sequence_length} steps: max abs diff {diff:.2e}")
        print(f"loss: first epoch {history[0]:.4f} -> last epoch {history[-1]:.4f}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="optimizer steps over the fixed random batch")
    parser.add_argument("--seed", type=int, default=0, help="random seed (init and data)")
    parser.add_argument("--carry-state", action="store_true",
                        help="carry the detached final state into the next epoch (truncated BPTT)")
    args = parser.parse_args()
    main(args.epochs, args.seed, args.carry_state)
