r"""Jacobians through time and the spectra of the recurrent weights.

The gradient that reaches ``h_{t-k}`` from ``h_t`` is multiplied by the product of step Jacobians

.. math::
    \frac{\partial s_t}{\partial s_{t-k}} = J_t J_{t-1} \cdots J_{t-k+1}, \qquad
    J_s = \frac{\partial s_s}{\partial s_{s-1}},

where ``s`` is the full state (``h``, or ``(h, c)`` stacked for an LSTM, whose ``h`` alone is not a state). Its
singular values say how much each direction of the state is amplified or forgotten over ``k`` steps (Pascanu,
Mikolov & Bengio 2013): the largest one above 1 for long windows means exploding gradients, all of them far
below 1 means vanishing ones. For an Elman RNN ``J_s = diag(phi'(a_s)) W_hh``, so ``rho(W_hh) < 1`` with a tanh
is sufficient for vanishing gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..kernels.reference import State, Step
from .probe import LayerTrace, rnn_layers, state_tensors

__all__ = ["JacobianSpectrum", "WeightSpectrum", "step_jacobians", "trace_jacobians", "product_spectrum",
           "jacobian_spectrum", "recurrent_spectra", "block_names"]


def block_names(gate_names: Sequence[str]) -> tuple[str, ...]:
    """The labels of the gate blocks of ``W_hh``: the cell's gate names (``CellSpec.gate_names``), or ``"hh"`` for
    a cell with one block (an Elman cell's is the whole ``W_hh``, whatever its one "gate" is called)."""
    return tuple(gate_names) if len(gate_names) > 1 else ("hh",)


def __getattr__(name: str):
    if name == "GATE_NAMES":  # the table this module kept before the gate names moved into the specs
        warnings.warn("rnnlab.diagnostics.jacobian.GATE_NAMES is deprecated; the gate names are in the cell specs "
                      "(rnnlab.cellspec.CellSpec.gate_names, block_names)", DeprecationWarning, stacklevel=2)
        from ..cellspec import SPECS

        return {spec.mode: list(block_names(spec.gate_names)) for spec in SPECS.values() if spec.mode}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class JacobianSpectrum:
    """Singular values of ``ds_end/ds_{end-k}`` for several windows ``k``.

    Attributes:
        windows: the ``k`` values (steps back from the end of the walk).
        singular_values: ``(K, R, S)`` float64, descending, for ``R`` batch rows and state size ``S``.
        hidden_singular_values: ``(K, R, H_out)`` of the ``dh_end/dh_{end-k}`` block (LSTM: with ``c_{end-k}``
            held fixed, all paths through ``c`` in between included); equal to ``singular_values`` for RNN/GRU.
    """

    windows: list[int]
    singular_values: Tensor
    hidden_singular_values: Tensor

    def to_dict(self) -> dict:
        return {"windows": self.windows, "top_singular_value": self.singular_values[:, :, 0].mean(1).tolist(),
                "hidden_top_singular_value": self.hidden_singular_values[:, :, 0].mean(1).tolist()}


def _flat(state: State) -> Tensor:
    return torch.cat(state_tensors(state), dim=-1)


def _unflat(flat: Tensor, sizes: Sequence[int]) -> State:
    parts = tuple(flat.split(list(sizes), dim=-1))
    return parts if len(parts) > 1 else parts[0]


def step_jacobians(step: Step, inputs: Sequence[Tensor], prev: Sequence[State], rows: int | None = None) -> Tensor:
    """``J_t = ds_t/ds_{t-1}`` for each step, per batch row (no graph of the model is touched).

    A step treats batch rows independently, so each row's state is repeated ``S`` times and one backward pass
    with the identity as output gradient gives every row of every Jacobian at once (``S`` separate passes, or
    ``torch.func``/forward-mode AD, cost more here: the latter two import torch's compiler stack on first use).

    Args:
        step: one-step function ``step(x_t, state) -> state``.
        inputs: ``x_t`` ``(B, I)`` per step, in walking order. prev: the state before each step.
        rows: keep the first ``rows`` batch rows (the cost is ``O(T * rows * S * cost of one step)``).

    Returns:
        ``(T, R, S, S)`` float64 Jacobians, ``S`` the flattened state size.
    """
    sizes = [s.size(-1) for s in state_tensors(prev[0])]
    S = sum(sizes)
    out = []
    for x_t, s in zip(inputs, prev):
        x_t, s_flat = x_t.detach(), _flat(s).detach()
        if rows is not None:
            x_t, s_flat = x_t[:rows], s_flat[:rows]
        R = s_flat.size(0)
        with torch.enable_grad():
            s_rep = s_flat.repeat_interleave(S, dim=0).requires_grad_()  # (R*S, S), row (r, j)
            new = _flat(step(x_t.repeat_interleave(S, dim=0), _unflat(s_rep, sizes)))  # (R*S, S)
            pick = torch.eye(S, dtype=new.dtype, device=new.device).repeat(R, 1)  # row (r, j) selects output j
            (rows_of_j,) = torch.autograd.grad(new, s_rep, pick)  # row (r, j) = e_j^T J_r
        out.append(rows_of_j.view(R, S, S).double())  # (R, S, S)
    return torch.stack(out)


def trace_jacobians(trace: LayerTrace, rows: int | None = 4) -> Tensor:
    """:func:`step_jacobians` of a recorded layer-direction, in its walking order, with the step it ran."""
    order = range(trace.steps - 1, -1, -1) if trace.reverse else range(trace.steps)
    return step_jacobians(trace.step, [trace.inputs[t] for t in order],
                          [trace.prev[t] for t in order], rows)


def product_spectrum(jacobians: Tensor, windows: Sequence[int], hidden_size: int | None = None) -> JacobianSpectrum:
    """Singular values of ``J_end ... J_{end-k+1}`` (the last ``k`` Jacobians) for each ``k`` in ``windows``.

    Args:
        jacobians: ``(T, R, S, S)`` from :func:`step_jacobians`, in walking order.
        windows: positive window lengths ``k <= T``.
        hidden_size: size of ``h`` inside the state (the leading block); ``None`` means the whole state.

    Raises:
        ValueError: a window outside ``1..T``.
    """
    T, R, S, _ = jacobians.shape
    bad = [k for k in windows if not 1 <= k <= T]
    if bad:
        raise ValueError(f"product_spectrum: windows must be in 1..T={T}, got {bad}")
    H = S if hidden_size is None else hidden_size
    wanted = sorted(set(windows))
    svs, hsvs = {}, {}
    prod = torch.eye(S, dtype=torch.float64).expand(R, S, S)
    for k in range(1, wanted[-1] + 1):
        prod = prod @ jacobians[T - k]  # ds_end/ds_{end-k} = (ds_end/ds_{end-k+1}) J_{end-k+1}
        if k in wanted:
            svs[k] = torch.linalg.svdvals(prod)  # (R, S)
            hsvs[k] = torch.linalg.svdvals(prod[:, :H, :H])  # (R, H)
    return JacobianSpectrum(list(wanted), torch.stack([svs[k] for k in wanted]),
                            torch.stack([hsvs[k] for k in wanted]))


def jacobian_spectrum(step: Step, x: Tensor, state: State, windows: Sequence[int],
                      rows: int | None = None) -> JacobianSpectrum:
    """Run ``step`` over ``x`` from ``state`` and return the spectra of ``ds_{T-1}/ds_{T-1-k}``.

    ``k = T`` is the Jacobian of the last state w.r.t. the initial one.

    Example:
        >>> W = 0.9 * torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
        >>> spec = jacobian_spectrum(lambda x, h: h @ W.T + x, torch.zeros(10, 1, 4, dtype=torch.float64),
        ...                          torch.zeros(1, 4, dtype=torch.float64), [10])
        >>> round(float(spec.singular_values.max()), 6)   # 0.9 ** 10
        0.348678
    """
    prev, s = [], state
    with torch.no_grad():
        for x_t in x.unbind(0):
            prev.append(s)
            s = step(x_t, s)
    sizes = [t.size(-1) for t in state_tensors(state)]
    return product_spectrum(step_jacobians(step, list(x.unbind(0)), prev, rows), windows,
                            hidden_size=sizes[0])


@dataclass
class WeightSpectrum:
    """Spectral radius and singular values of each gate block of one layer-direction's ``W_hh``.

    For a projected LSTM the block ``(H, P)`` is composed with ``W_hr`` ``(P, H)`` into the square map from one
    step's cell output to the next step's gate pre-activation.
    """

    name: str
    mode: str
    spectral_radius: dict[str, float]
    singular_values: dict[str, list[float]]
    eigenvalues: dict[str, list[complex]]

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "spectral_radius": self.spectral_radius,
                "top_singular_values": {g: v[:5] for g, v in self.singular_values.items()}}


def recurrent_spectra(model: nn.Module, *, singular_values: bool = True,
                      dtype: torch.dtype = torch.float64) -> list[WeightSpectrum]:
    """:class:`WeightSpectrum` of every layer-direction of every rnnlab layer in ``model``.

    ``singular_values=False`` skips the SVDs (empty lists) and ``dtype=torch.float32`` halves the cost of the
    eigenvalues, for cheap tracking of ``rho`` during training.
    """
    out = []
    for mname, module in rnn_layers(model):
        if module.spec.mode is None:  # a cell without torch's weight layout (a variant, a custom cell)
            continue
        gates = block_names(module.spec.gate_names)
        for layer in range(module.num_layers):
            for direction in range(module.num_directions):
                weights = module.layer_weights(layer, direction)
                assert weights[1] is not None  # W_hh always exists; only biases and W_hr are optional
                w_hh = weights[1].detach().to(dtype)
                blocks = w_hh.chunk(len(gates), dim=0)
                label = f"l{layer}" + ("_reverse" if direction else "")
                ws = WeightSpectrum(f"{mname}.{label}" if mname else label, module.mode, {}, {}, {})
                for gate, block in zip(gates, blocks):
                    if len(weights) > 4 and weights[4] is not None:
                        block = block @ weights[4].detach().to(dtype)  # (H, P) @ (P, H)
                    eig = torch.linalg.eigvals(block)
                    ws.spectral_radius[gate] = float(eig.abs().max())
                    ws.singular_values[gate] = torch.linalg.svdvals(block).tolist() if singular_values else []
                    ws.eigenvalues[gate] = eig.tolist()
                out.append(ws)
    return out
