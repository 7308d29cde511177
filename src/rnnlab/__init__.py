"""rnnlab: recurrent neural networks from first principles in PyTorch.

Drop-in replacements for ``torch.nn.RNN/LSTM/GRU`` and their cells whose code reads like the equations
(:mod:`rnnlab.functional`), one reference time loop (:mod:`rnnlab.kernels.reference`) and selectable
whole-sequence backends (:mod:`rnnlab.kernels`).
"""

from . import functional
from .cells import GRUCell, LSTMCell, RNNCell
from .kernels import available_backends, get_backend, set_backend
from .layers import GRU, LSTM, RNN, AllStates, RNNBase
from .variants import (LayerNormGRU, LayerNormGRUCell, LayerNormLSTM, LayerNormLSTMCell, PeepholeLSTM,
                       PeepholeLSTMCell, Recurrent)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "RNN",
    "LSTM",
    "GRU",
    "RNNBase",
    "Recurrent",
    "AllStates",
    "LayerNormLSTM",
    "LayerNormGRU",
    "PeepholeLSTM",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "PeepholeLSTMCell",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "set_backend",
    "get_backend",
    "available_backends",
    "__version__",
]
