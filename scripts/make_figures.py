"""Regenerate every figure of the guide (docs/guide.md, docs/zh/) and of docs/results.md with one command.

    python scripts/make_figures.py                 # all figures into docs/figures/ (about 10 s of CPU)
    python scripts/make_figures.py --list          # the names this script produces
    python scripts/make_figures.py --only vanishing forget_gate --out /tmp/figs

The guide figures are measured here, at initialisation or over a few training steps, with rnnlab's own layers and
diagnostics (:mod:`rnnlab.diagnostics`); each seed is fixed, so a rerun draws the same picture. The results
figures are drawn from the JSON files that the convergence benchmarks write (``benchmarks/convergence/results``);
rerun a benchmark to refresh its numbers, then this script to redraw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.ticker import NullFormatter
from torch import Tensor, nn

import rnnlab
from rnnlab.diagnostics import gradient_profile
from rnnlab.diagnostics.tasks import adding_batch
from rnnlab.init import apply_init

ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = ROOT / "docs" / "figures"
RESULTS_DIR = ROOT / "benchmarks" / "convergence" / "results"
SAMPLES_JSON = ROOT / "docs" / "data" / "samples.json"  # written by scripts/make_samples.py (a short training run)
MAIN_JOB_JSON = ROOT / "docs" / "data" / "main_job.json"  # `make run`'s validation curve and its measured times

COLORS = {"rnn_tanh": "tab:red", "rnn_relu": "tab:purple", "lstm": "tab:blue", "gru": "tab:green"}
LABELS = {"rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)", "lstm": "LSTM", "gru": "GRU"}


def _plain(value: Any) -> Any:
    """JSON-ready copy of a figure's data: tensors to lists, floats to 5 significant digits, NaN/inf to None."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else None
    return value


def _figure_data(fig: Figure) -> list[dict[str, Any]]:
    """What each panel of ``fig`` shows: its title, every line (label, x, y) and every piece of text."""
    panels = []
    for ax in fig.axes:
        lines = [{"label": ln.get_label(), "x": [float(v) for v in ln.get_xdata()],
                  "y": [float(v) for v in ln.get_ydata()]} for ln in ax.get_lines()]
        texts = [t.get_text() for t in ax.texts if t.get_text()]
        panels.append({"title": ax.get_title(), "lines": lines, "texts": texts})
    return panels


def _save(fig: Figure, path: Path, numbers: dict[str, Any] | None = None) -> Path:
    """Write the PNG and, next to it, ``<name>.json``: the data of every panel (lines and texts) and the measured
    ``numbers`` that the pages quote. The JSON is what the tests compare: PNG bytes differ across CPUs and library
    versions, the data must not (beyond float rounding)."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    data = {"numbers": numbers or {}, "panels": _figure_data(fig)}
    path.with_suffix(".json").write_text(json.dumps(_plain(data), ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _rate(norms: Tensor, k0: int, k1: int) -> float:
    """Geometric decay per step between distances k0 and k1: ``(g[k1] / g[k0]) ** (1 / (k1 - k0))``."""
    return float((norms[k1] / norms[k0]) ** (1.0 / (k1 - k0)))


class _LastStep(nn.Module):
    """Layer + linear read-out of the last output (the adding problem's model)."""

    def __init__(self, layer: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = layer, nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][-1])


def _layer(cell: str, inputs: int, hidden: int) -> nn.Module:
    if cell == "lstm":
        return rnnlab.LSTM(inputs, hidden)
    if cell == "gru":
        return rnnlab.GRU(inputs, hidden)
    return rnnlab.RNN(inputs, hidden, nonlinearity=cell[4:])


def _profile(model: nn.Module, x: Tensor, y: Tensor):
    """``||dL/dh_t||`` (and ``||dL/dc_t||``) of the adding-problem MSE at the last step."""
    return gradient_profile(model, lambda: nn.functional.mse_loss(model(x), y))


def _relative(norms: Tensor) -> Tensor:
    """Norms by distance from the loss, divided by the one at distance 0 (so curves of different models compare);
    values that underflowed float32 (below ~1e-38 before dividing) become NaN, so the line stops there instead of
    drawing a false floor."""
    rel = norms / norms[0]
    return torch.where(norms > 1e-37, rel, torch.full_like(rel, math.nan))


# ----------------------------------------------------------------------------------------------- guide figures


def fig_vanishing(path: Path) -> Path:
    """Gradient reaching h_{T-k} at initialisation, tanh RNN vs LSTM vs GRU (torch default init), T = 200.

    Also measures what section 2 quotes about torch's default W_hh: its spectral radius and its largest singular
    value (the quantity the bound needs), at H = 64 and H = 256."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    curves: dict[str, Tensor] = {}
    for cell in ("rnn_tanh", "gru", "lstm"):
        torch.manual_seed(0)
        model = _LastStep(_layer(cell, 2, H), H)
        prof = _profile(model, x, y)
        curves[cell] = g = _relative(prof.by_distance(0))
        ax.semilogy(range(len(g)), g, color=COLORS[cell], label=f"{LABELS[cell]}: ||dL/dh||")
        if cell == "lstm":
            curves["lstm_cell"] = c = _relative(prof.by_distance(0, "cell"))
            ax.semilogy(range(len(c)), c, color=COLORS[cell], ls="--", label="LSTM: ||dL/dc||")
    ax.set_xlabel("k = distance from the loss (steps back from T)")
    ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
    ax.set_title(f"Gradient through time at init (adding problem, T={T}, H={H}, torch default init)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    norms = {}
    for h in (64, 256):  # torch's RNN init: every W_hh entry ~ U(-1/sqrt(H), 1/sqrt(H))
        torch.manual_seed(0)
        w = rnnlab.RNN(2, h).weight_hh_l0.detach().double()
        norms[str(h)] = {"rho": float(torch.linalg.eigvals(w).abs().max()), "sigma_max": float(torch.linalg.matrix_norm(w, 2))}
    rates = {name: _rate(g, 10, 60) for name, g in curves.items()}
    return _save(fig, path, {"setup": {"T": T, "H": H, "B": B, "seed": 0},
                             "rate_k10_60": rates, "default_whh": norms})


def _scaled_rnn(nonlinearity: str, rho: float, H: int, seed: int) -> nn.Module:
    """An Elman RNN whose W_hh is rho times a random orthogonal matrix (all |eigenvalues| = rho), zero biases."""
    torch.manual_seed(seed)
    rnn = rnnlab.RNN(2, H, nonlinearity=nonlinearity)
    with torch.no_grad():
        q = torch.empty(H, H, dtype=torch.float64)
        nn.init.orthogonal_(q)
        rnn.weight_hh_l0.copy_((rho * q).float())
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


SPECTRAL_RHOS = (0.5, 0.9, 1.0, 1.1, 1.5)


def fig_spectral_radius(path: Path) -> Path:
    """||dL/dh_{T-k}|| for Elman RNNs with W_hh = rho * Q: tanh (left) and ReLU (right), rho from 0.5 to 1.5.
    The rho^k guides are drawn black and dotted on top of the measured curves (markers every 10 steps), so where
    they coincide both stay visible; for rho > 1 the guide shows how far below rho^k the measured growth stays."""
    T, H, B = 100, 64, 16
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    x = 0.1 * x  # small inputs keep tanh near its linear range, so the picture shows W_hh, not saturation
    fig = Figure(figsize=(10, 4.4))
    curves: dict[str, Tensor] = {}
    ks = torch.arange(T + 1, dtype=torch.float64)
    for i, nl in enumerate(("tanh", "relu")):
        ax = fig.add_subplot(1, 2, i + 1)
        for rho, color in zip(SPECTRAL_RHOS, ("#1b9e77", "#66a61e", "#333333", "#e6ab02", "#d95f02")):
            model = _LastStep(_scaled_rnn(nl, rho, H, seed=0), H)
            curves[f"{nl}_{rho}"] = g = _relative(_profile(model, x, y).by_distance(0))
            ax.semilogy(range(len(g)), g, color=color, lw=2.5, alpha=0.75, marker="o", ms=3, markevery=10,
                        label=f"rho(W_hh) = {rho}")
            if nl == "tanh" and rho != 1.0:
                ax.semilogy(ks, rho ** ks, color="k", ls=":", lw=1.2, zorder=5,
                            label="rho^k (guide)" if rho == SPECTRAL_RHOS[0] else None)
        ax.set_title(f"{nl} RNN, W_hh = rho * orthogonal" + (" (black dotted: rho^k)" if nl == "tanh" else ""),
                     fontsize=10)
        ax.set_xlabel("k = steps back from the loss")
        ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
        ax.set_ylim(1e-30, 1e20)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    growth = {str(rho): float(curves[f"tanh_{rho}"][T]) for rho in (1.1, 1.5)}
    return _save(fig, path, {"setup": {"T": T, "H": H, "B": B, "input_scale": 0.1},
                             "tanh_growth_at_T": growth, "tanh_rate_0.5": _rate(curves["tanh_0.5"], 10, 40),
                             "tanh_rate_0.9": _rate(curves["tanh_0.9"], 10, 90)})


def _forget_gates(layer: nn.Module, x: Tensor) -> Tensor:
    """The forget gate ``f_t`` of every step, row and unit of a one-layer rnnlab LSTM: ``(T, B, H)``."""
    layer.return_gates = layer.return_all_states = True  # AllStates.gates["f"]: (L, T, B, H)
    try:
        with torch.no_grad():
            _, _, states = layer(x)
    finally:
        layer.return_gates = layer.return_all_states = False
    return states.gates["f"][0]


def fig_forget_gate(path: Path) -> Path:
    """LSTM cell-state gradient ||dL/dc_{T-k}|| under forget-gate bias 0, 1 and chrono, with sigma(b)^k guides.

    Also measured, for the text of section 3: the decay per step of the measured curve (the rate of the full
    (h, c) step Jacobian), and the largest per-unit forget gate (geometric mean over steps and rows): the fastest
    rate the cell path alone (dc_t/dc_{t-1} = diag(f_t)) could give. The first is larger: the rest of the
    gradient comes back through c -> h -> gates -> c."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    ks = torch.arange(T + 1, dtype=torch.float64)
    curves: dict[str, Tensor] = {}
    measured: dict[str, dict[str, float]] = {}
    for name, color, bias in (("b0", "tab:red", 0.0), ("b1", "tab:blue", 1.0), ("chrono", "tab:green", None)):
        torch.manual_seed(0)
        model = _LastStep(rnnlab.LSTM(2, H), H)
        if name == "b0":  # torch's init draws b_f ~ U(-1/sqrt(H), 1/sqrt(H)); set it to exactly 0 for the guide
            with torch.no_grad():
                model.rnn.bias_ih_l0[H:2 * H] = 0.0
                model.rnn.bias_hh_l0[H:2 * H] = 0.0
        else:
            apply_init(model, "forget_bias" if name == "b1" else "chrono", t_max=T,
                       generator=torch.Generator().manual_seed(0))
        curves[name] = c = _relative(_profile(model, x, y).by_distance(0, "cell"))
        f = _forget_gates(model.rnn, x).double()  # (T, B, H)
        measured[name] = {"rate_k20_100": _rate(c, 20, 100), "at_k100": float(c[100]), "at_k200": float(c[200]),
                          "max_unit_f": float(f.log().mean((0, 1)).exp().max()), "mean_f": float(f.mean())}
        label = {"b0": "b_f = 0", "b1": "b_f = 1 (forget_bias)", "chrono": "chrono (T_max = 200)"}[name]
        ax.semilogy(range(len(c)), c, color=color, label=f"||dL/dc||, {label}")
        if bias is not None:
            s = 1 / (1 + math.exp(-bias))
            ax.semilogy(ks, s ** ks, color=color, ls=":", lw=1, label=f"sigma({bias:g})^k = {s:.2f}^k")
    ax.set_ylim(1e-30, 10)
    ax.set_xlabel("k = steps back from the loss")
    ax.set_ylabel("||dL/dc_{T-k}|| / ||dL/dc_T||")
    ax.set_title("LSTM cell gradient at init under three forget-gate biases")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    guide_ratio = (1 / (1 + math.exp(-1.0)) / 0.5) ** 100
    return _save(fig, path, {"setup": {"T": T, "H": H, "B": B, "seed": 0}, "measured": measured,
                             "ratio_at_k100_measured": measured["b1"]["at_k100"] / measured["b0"]["at_k100"],
                             "ratio_at_k100_guides": guide_ratio})


def fig_init_presets(path: Path) -> Path:
    """Half of the guide's init table: ||dL/dh_{T-k}|| at init for each preset, tanh RNN and GRU, T = 200."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(10, 4.2))
    curves: dict[str, Tensor] = {}
    for i, (cell, presets) in enumerate((("rnn_tanh", ("torch", "orthogonal", "irnn")),
                                         ("gru", ("torch", "orthogonal", "forget_bias", "chrono")))):
        ax = fig.add_subplot(1, 2, i + 1)
        for preset, color in zip(presets, ("tab:red", "tab:blue", "tab:green", "tab:orange")):
            torch.manual_seed(0)
            model = _LastStep(_layer(cell, 2, H), H)
            apply_init(model, preset, t_max=T, generator=torch.Generator().manual_seed(0))
            curves[f"{cell}_{preset}"] = g = _relative(_profile(model, x, y).by_distance(0))
            ax.semilogy(range(len(g)), g, color=color, label=preset)
        ax.set_title(f"{LABELS[cell]}: init presets (rnnlab.init)")
        ax.set_xlabel("k = steps back from the loss")
        ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
        ax.set_ylim(1e-30, 1e3)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, {"setup": {"T": T, "H": H, "B": B, "seed": 0}})


def _graph_size(t: Tensor) -> int:
    """Number of autograd nodes reachable from ``t``'s grad_fn: the work a backward pass through it must do."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return len(seen)


def blog_loop_error(retain_graph: bool = False) -> str:
    """Run the blog's CustomLSTM-style loop (state carried across iterations, never detached, an optimizer step
    between the two backward passes) and return the first line of the error that the second ``backward()``
    raises. With ``retain_graph=True`` (what the first error suggests) it fails too: the optimizer step changed
    the weights in place, and the old graph needs the old values."""
    torch.manual_seed(0)
    cell = rnnlab.LSTMCell(10, 20)
    opt = torch.optim.Adam(cell.parameters(), 1e-3)
    x, target = torch.randn(15, 5, 10), torch.randn(5, 20)
    h, c = torch.zeros(5, 20), torch.zeros(5, 20)
    try:
        for _ in range(2):
            opt.zero_grad()
            for t in range(15):
                h, c = cell(x[t], (h, c))
            nn.functional.mse_loss(h, target).backward(retain_graph=retain_graph)
            opt.step()
    except RuntimeError as err:
        return str(err).split("\n")[0]
    return ""


def fig_tbptt(path: Path) -> Path:
    """Autograd graph behind each batch's loss when the state is carried across batches: without detach (the
    blog's loop, with retain_graph and no optimizer step so that it can run at all) the graph grows with every
    batch; with detach it stays the size of one batch."""
    T, B, H, batches = 20, 8, 32, 15
    sizes: dict[str, list[int]] = {}
    for mode in ("no detach (blog)", "detach (truncated BPTT)"):
        torch.manual_seed(0)
        lstm = rnnlab.LSTM(1, H)
        head = nn.Linear(H, 1)
        state = None
        sizes[mode] = []
        for i in range(batches):
            x = torch.randn(T, B, 1)
            if state is not None and mode.startswith("detach"):
                state = tuple(s.detach() for s in state)  # keep the values, cut the graph
            out, state = lstm(x, state)
            loss = head(out).pow(2).mean()
            sizes[mode].append(_graph_size(loss))
            loss.backward(retain_graph=True)
    errors = {"plain": blog_loop_error(), "retain_graph": blog_loop_error(retain_graph=True)}
    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.add_subplot()
    for (mode, s), color in zip(sizes.items(), ("tab:red", "tab:blue")):
        ax.plot(range(1, batches + 1), s, marker="o", ms=3, color=color, label=mode)
    ax.set_xlabel("batch number (state carried from the previous batch)")
    ax.set_ylabel("autograd nodes behind the loss")
    ax.set_title(f"Carrying the state: graph size per batch (LSTM, {T} steps a batch)")
    ax.text(0.02, 0.97, "The blog's loop (with its optimizer step), 2nd backward():\n  "
            + errors["plain"][:58] + "...\nwith retain_graph=True:\n  " + errors["retain_graph"][:58] + "...",
            transform=ax.transAxes, fontsize=9, va="top", family="monospace",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
    ax.set_ylim(0, max(sizes["no detach (blog)"]) * 1.45)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right")
    return _save(fig, path, {"sizes": sizes, "errors": errors})


def fig_clipping(path: Path) -> Path:
    """A tanh RNN with W_hh = 1.5 Q (Q orthogonal: an exploding start) trained by plain SGD (lr 0.1) on the adding
    problem, with and without clipping the global gradient norm at 1 (Pascanu, Mikolov & Bengio 2013)."""
    T, H, B, steps = 50, 32, 32, 300
    fig = Figure(figsize=(10, 4.0))
    ax_g, ax_l = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    data: dict[str, Any] = {"setup": {"T": T, "H": H, "B": B, "steps": steps, "lr": 0.1}}
    for clip, color in ((None, "tab:red"), (1.0, "tab:blue")):
        model = _LastStep(_scaled_rnn("tanh", 1.5, H, seed=0), H)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        norms, losses = [], []
        for _ in range(steps):
            x, y = adding_batch(T, B, gen)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            total = float(nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf")))
            norms.append(total)
            losses.append(float(loss.detach()))
            if not (math.isfinite(total) and math.isfinite(losses[-1])):
                break  # the weights are no longer finite numbers: training is over
            opt.step()
        key = "no_clip" if clip is None else "clip"
        data[key] = {"steps_run": len(losses),
                     "last_50_mean_loss": sum(losses[-50:]) / len(losses[-50:])}
        label = "no clipping" if clip is None else f"clip_grad_norm_(params, {clip:g})"
        if clip is None and len(losses) < steps:
            label += f" (non-finite at step {len(losses) - 1})"
        ax_g.semilogy(norms, color=color, label=label)
        ax_l.semilogy(losses, color=color, label=label)
    ax_g.axhline(1.0, color="k", lw=0.8, ls=":", label="clip threshold 1")
    ax_g.set_title("global gradient norm before clipping")
    ax_g.set_ylabel("||g|| (all parameters)")
    ax_l.axhline(1 / 6, color="k", lw=0.8, ls=":", label="predict 1: MSE 1/6 (learned nothing)")
    ax_l.set_title(f"training loss (tanh RNN, W_hh = 1.5 Q, SGD 0.1, T={T})", fontsize=10)
    ax_l.set_ylabel("training MSE")
    for ax in (ax_g, ax_l):
        ax.set_xlabel("optimiser step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, data)


# ---------------------------------------------------------------------------------------------------- diagrams
# Drawn, not measured: the cells and the time axis as the guide's text describes them. Labels are English and in
# matplotlib's mathtext (rendered with the DejaVu fonts matplotlib ships), so no glyph can be missing; the Chinese
# guide translates the captions.


def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str = "#dbe9f6", size: float = 10,
         **kw: Any) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="0.25", lw=1.2, zorder=3, **kw))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, zorder=4)


def _arrow(ax: Any, a: tuple[float, float], b: tuple[float, float], color: str = "0.2", lw: float = 1.4,
           ls: str = "-", rad: float = 0.0, zorder: int = 2) -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=color, lw=lw, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", zorder=zorder, shrinkA=0, shrinkB=0))


def _op(ax: Any, x: float, y: float, sym: str, color: str = "white") -> None:
    """A pointwise operation: a small circle with its symbol (x for a product, + for a sum)."""
    ax.add_patch(Circle((x, y), 0.17, facecolor=color, edgecolor="0.2", lw=1.2, zorder=3))
    ax.text(x, y, sym, ha="center", va="center", fontsize=12, zorder=4)


def _canvas(w: float, h: float, xlim: tuple[float, float], ylim: tuple[float, float]) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h))
    ax = fig.add_subplot()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def fig_diagram_unrolled(path: Path) -> Path:
    """The RNN unrolled in time: one step function applied T times with the same weights (forward, black), and
    backpropagation through time (red): the loss's gradient enters at each output and flows back through every
    step Jacobian J_t = dh_t/dh_{t-1}."""
    fig, ax = _canvas(10, 4.8, (-0.6, 10.4), (-1.4, 4.3))
    xs = [1.0, 3.4, 5.8, 8.2]
    names = ["1", "2", "3", "T"]
    ax.text(-0.55, 1.75, "$h_0$", fontsize=12, va="center")
    ax.text(5.0, 3.95, "every step: $h_t = \\tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})$, one $W$ for all t",
            ha="center", fontsize=10)
    for i, (x, t) in enumerate(zip(xs, names)):
        _box(ax, x, 1.5, 1.3, 0.9, "step\n(same $W$)")
        _box(ax, x, -0.6, 0.8, 0.5, f"$x_{t}$", color="#f2f2f2")
        _arrow(ax, (x, -0.35), (x, 1.05))
        _box(ax, x, 3.3, 0.9, 0.5, f"$L_{t}$", color="#fde0dd")
        _arrow(ax, (x, 1.95), (x, 3.05))
        ax.text(x + 0.08, 2.45, f"$h_{t}$", fontsize=11)
        # the gradient of the loss at this step enters the state (red, dashed, beside the forward arrow)
        _arrow(ax, (x + 0.35, 3.05), (x + 0.35, 1.95), color="tab:red", ls="--")
    _arrow(ax, (-0.05, 1.5), (xs[0] - 0.65, 1.5))
    for a, b in zip(xs, xs[1:]):
        if b == xs[-1]:
            ax.text((a + b) / 2, 1.85, "...", ha="center", fontsize=14)
        _arrow(ax, (a + 0.65, 1.62), (b - 0.65, 1.62))  # forward: h_{t-1} -> next step
        _arrow(ax, (b - 0.65, 1.25), (a + 0.65, 1.25), color="tab:red", ls="--")  # backward: through J^T
        ax.text((a + b) / 2, 0.9, "$J^{\\top}$", ha="center", color="tab:red", fontsize=11)
    ax.text(5.0, -1.25, "black: forward (the state carries information forward)     red dashed: BPTT, "
            "$\\partial L/\\partial h_{t-1} = J_t^{\\top}\\, \\partial L/\\partial h_t$ + the loss at step t-1",
            ha="center", fontsize=9)
    ax.set_title("An RNN unrolled in time, with backpropagation through time", fontsize=11)
    return _save(fig, path)


def _carry_line(ax: Any, y: float, half: float, caption: str, caption_above: float, left: str, right: str,
                x_mul: float, x_add: float) -> None:
    """The highlighted carry path of a gated cell (the LSTM's cell line, the GRU's keep path): a band with its
    caption, ``left`` -> (x) -> (+) -> ``right``, the operators at ``x_mul`` and ``x_add``."""
    ax.add_patch(FancyBboxPatch((-0.5, y - half), 10.9, 2 * half, boxstyle="round,pad=0.02", facecolor="#fff3b0",
                                edgecolor="none", zorder=1))
    ax.text(-0.5, y + caption_above, caption, fontsize=9.5, color="#8a6d00")
    ax.text(-0.75, y, left, fontsize=12, va="center")
    ax.text(10.15, y, right, fontsize=12, va="center")
    _op(ax, x_mul, y, "x")
    _op(ax, x_add, y, "+")
    ax.plot([-0.05, x_mul - 0.17], [y, y], color="#b8860b", lw=3, zorder=2)
    ax.plot([x_mul + 0.17, x_add - 0.17], [y, y], color="#b8860b", lw=3, zorder=2)
    _arrow(ax, (x_add + 0.17, y), (10.05, y), color="#b8860b", lw=3)


def fig_diagram_lstm(path: Path) -> Path:
    """The LSTM cell in torch's gate order (i, f, g, o): the cell line along the top (the constant error
    carousel: dc_t/dc_{t-1} = diag(f_t), no matrix and no squashing on it) highlighted, each gate with its
    equation."""
    fig, ax = _canvas(10, 6.2, (-0.8, 10.8), (-2.6, 5.0))
    cy, hy = 3.9, 0.0  # the cell line and the hidden line
    _carry_line(ax, cy, 0.28, "cell line = constant error carousel:  $\\partial c_t/\\partial c_{t-1} = "
                "\\mathrm{diag}(f_t)$  (1997: no forget gate, exactly $I$)", 0.45, "$c_{t-1}$", "$c_t$", 2.2, 4.6)
    ax.text(-0.75, hy, "$h_{t-1}$", fontsize=12, va="center")
    ax.text(-0.75, -1.2, "$x_t$", fontsize=12, va="center")
    ax.plot([-0.05, 7.4], [hy, hy], color="0.3", lw=1.2, zorder=1)  # [h_{t-1}, x_t] feed every gate
    ax.plot([-0.05, 0.6], [-1.2, -1.2], color="0.3", lw=1.2, zorder=1)
    ax.plot([0.6, 0.6], [-1.2, hy], color="0.3", lw=1.2, zorder=1)
    gates = [("f", 2.2, "$f_t = \\sigma(W_{if} x_t + W_{hf} h_{t-1} + b_f)$", "forget"),
             ("i", 3.6, "$i_t = \\sigma(W_{ii} x_t + W_{hi} h_{t-1} + b_i)$", "input"),
             ("g", 5.0, "$g_t = \\tanh(W_{ig} x_t + W_{hg} h_{t-1} + b_g)$", "candidate"),
             ("o", 6.4, "$o_t = \\sigma(W_{io} x_t + W_{ho} h_{t-1} + b_o)$", "output")]
    for name, gx, eq, what in gates:
        _box(ax, gx, 1.2, 1.0, 0.6, f"{'tanh' if name == 'g' else 'σ'}\n{what} ${name}_t$", size=8.5,
             color="#e5f5e0" if name != "g" else "#dbe9f6")
        ax.plot([gx, gx], [hy, 0.9], color="0.3", lw=1.2, zorder=1)
    ax.text(-0.5, -1.75, gates[0][2] + "      " + gates[1][2], fontsize=9.5)
    ax.text(-0.5, -2.35, gates[2][2] + "      " + gates[3][2], fontsize=9.5)
    _arrow(ax, (2.2, 1.5), (2.2, cy - 0.17))  # f -> x on the cell line
    _op(ax, 4.3, 2.5, "x")  # i * g
    _arrow(ax, (3.6, 1.5), (4.15, 2.42))
    _arrow(ax, (5.0, 1.5), (4.45, 2.42))
    _arrow(ax, (4.4, 2.65), (4.57, cy - 0.17))
    ax.text(4.65, 3.05, "$+\\, i_t g_t$", fontsize=10)
    ax.text(2.35, 3.0, "$\\times f_t$", fontsize=10)
    # output: h_t = o_t * tanh(c_t)
    _box(ax, 8.0, 2.7, 0.8, 0.5, "tanh", size=9)
    ax.plot([8.0, 8.0], [cy, 2.95], color="#b8860b", lw=1.5, zorder=1)
    _op(ax, 8.0, 1.2, "x")
    _arrow(ax, (8.0, 2.45), (8.0, 1.37))
    _arrow(ax, (6.9, 1.2), (7.83, 1.2))
    _arrow(ax, (8.17, 1.2), (10.05, 1.2))
    ax.text(10.15, 1.2, "$h_t$", fontsize=12, va="center")
    ax.text(8.2, 1.75, "$h_t = o_t \\tanh(c_t)$", fontsize=10)
    ax.text(5.0, 3.45, "$c_t = f_t c_{t-1} + i_t g_t$", fontsize=10)
    ax.set_title("LSTM cell (torch's gate order i, f, g, o; products are elementwise)", fontsize=11)
    return _save(fig, path)


def fig_diagram_gru(path: Path) -> Path:
    """The GRU cell as torch.nn.GRU computes it: the reset gate r multiplies W_hn h + b_hn (after the matrix
    product), and z is the keep gate: h_t = (1 - z_t) n_t + z_t h_{t-1}."""
    fig, ax = _canvas(10, 5.6, (-0.8, 10.8), (-2.4, 4.6))
    hy = 3.6
    _carry_line(ax, hy, 0.25, "the keep path: $\\partial h_t/\\partial h_{t-1} = \\mathrm{diag}(z_t)$ + terms "
                "through the gates", 0.4, "$h_{t-1}$", "$h_t$", 3.0, 7.0)
    ax.text(3.15, hy - 0.6, "$\\times z_t$", fontsize=10)
    ax.plot([0.3, 0.3], [hy, 0.0], color="0.3", lw=1.2, zorder=1)  # h_{t-1} down to the gates
    ax.plot([0.3, 6.0], [0.0, 0.0], color="0.3", lw=1.2, zorder=1)
    ax.text(-0.75, -1.0, "$x_t$", fontsize=12, va="center")
    ax.plot([-0.05, 6.0], [-1.0, -1.0], color="0.3", lw=1.2, zorder=1)
    for name, gx, what in (("z", 3.0, "update $z_t$\n(keep)"), ("r", 3.9, "reset $r_t$")):
        _box(ax, gx, 1.0, 0.8, 0.7, f"σ\n{what}", size=8.5, color="#e5f5e0")
        ax.plot([gx, gx], [-1.0, 0.65], color="0.3", lw=1.2, zorder=1)
    _arrow(ax, (3.0, 1.35), (3.0, hy - 0.17))
    # candidate n: the reset gate scales W_hn h + b_hn, after the product
    _box(ax, 5.0, 0.5, 1.3, 0.5, "$W_{hn} h_{t-1} + b_{hn}$", size=8.5, color="#f2f2f2")
    ax.plot([5.0, 5.0], [0.0, 0.25], color="0.3", lw=1.2, zorder=1)
    _op(ax, 5.0, 1.35, "x")
    _arrow(ax, (5.0, 0.75), (5.0, 1.18))
    _arrow(ax, (4.3, 1.15), (4.83, 1.33))
    _box(ax, 6.3, 2.1, 1.2, 0.6, "tanh\ncandidate $n_t$", size=8.5, color="#dbe9f6")
    _arrow(ax, (5.12, 1.47), (5.85, 1.8))
    ax.plot([6.9, 6.9], [-1.0, 1.8], color="0.3", lw=1.2, zorder=1)
    ax.text(7.0, -0.3, "$W_{in} x_t + b_{in}$", fontsize=8.5)
    _op(ax, 7.0, 2.8, "x")
    _arrow(ax, (6.5, 2.4), (6.88, 2.68))
    _arrow(ax, (7.0, 2.97), (7.0, hy - 0.17))
    ax.text(7.25, 2.75, "$\\times (1 - z_t)$", fontsize=10)
    ax.text(-0.5, -1.6, "$r_t = \\sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr})$     "
            "$z_t = \\sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})$", fontsize=9.5)
    ax.text(-0.5, -2.2, "$n_t = \\tanh(W_{in} x_t + b_{in} + r_t (W_{hn} h_{t-1} + b_{hn}))$     "
            "$h_t = (1 - z_t)\\, n_t + z_t\\, h_{t-1}$", fontsize=9.5)
    ax.set_title("GRU cell as torch.nn.GRU computes it (reset gate after $W_{hn}$; gate order r, z, n)",
                 fontsize=11)
    return _save(fig, path)


def fig_diagram_tbptt(path: Path) -> Path:
    """Truncated BPTT as rnnlab's trainer does it: the stream is cut into windows of k1 steps (the loss of each
    window), and each window's loss is back-propagated through its last k2 >= k1 steps, the k2 - k1 steps before
    the window recomputed from a detached state."""
    k1, k2, n = 4, 6, 4
    fig, ax = _canvas(10, 4.2, (-1.5, 4 * n + 0.5), (-1.1, n + 2.0))
    ax.set_aspect("auto")
    T = k1 * n
    for t in range(T):
        ax.add_patch(Rectangle((t, n + 0.5), 0.9, 0.5, facecolor="#f2f2f2", edgecolor="0.5", zorder=2))
        ax.text(t + 0.45, n + 0.75, str(t + 1), ha="center", va="center", fontsize=8)
    ax.text(-1.4, n + 0.75, "stream", va="center", fontsize=10)
    for w in range(n):
        y = n - 1 - w
        start, end = w * k1, (w + 1) * k1
        back = max(0, end - k2)
        if back < start:
            ax.add_patch(Rectangle((back, y), start - back - 0.1, 0.6, facecolor="#d9d9d9", edgecolor="0.5",
                                   hatch="//", zorder=2))
        ax.add_patch(Rectangle((start, y), k1 - 0.1, 0.6, facecolor="#9ecae1", edgecolor="0.3", zorder=2))
        ax.plot([back - 0.05, back - 0.05], [y - 0.15, y + 0.75], color="tab:red", lw=2.5, zorder=3)  # detach
        _arrow(ax, (end - 0.1, y - 0.25), (back, y - 0.25), color="tab:red", ls="--", lw=1.2)
        ax.text(-1.4, y + 0.3, f"window {w + 1}", va="center", fontsize=9)
    ax.text(start + k1 / 2, -0.8, f"k1 = {k1}: loss steps per window", ha="center", fontsize=9, color="#08519c")
    ax.text(-1.4, n + 1.45, f"blue: k1 = {k1} steps whose loss is taken (forward stride);  red dashed: the gradient "
            f"goes back k2 = {k2} steps;\nhatched: the k2 - k1 = {k2 - k1} steps before the window, re-run from the "
            "stored state;  red bar: the state is detached there", fontsize=9)
    ax.set_title("Truncated BPTT: windows of k1 steps, gradients through the last k2 steps", fontsize=11)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ a trained LSTM's units


def fig_lstm_units(path: Path) -> Path | None:
    """Cell activations tanh(c_t) of the units that scripts/make_samples.py found most correlated with simple text
    features, drawn as colour behind each character of a held-out passage (after Karpathy, Johnson & Fei-Fei
    2015). Drawn from docs/data/samples.json; nothing is trained here."""
    if not SAMPLES_JSON.is_file():
        return None
    data = json.loads(SAMPLES_JSON.read_text(encoding="utf-8"))
    lines = data["passage"].split("\n")
    cols = max(len(line) for line in lines) + 1
    # The two features with a clear unit after 300 steps; the stage-direction unit is quoted in the text only.
    units = [u for u in data["units"] if u["feature"] in ("speaker name", "line position")]
    fig = Figure(figsize=(0.105 * cols + 0.6, 0.24 * len(lines) * len(units) + 0.9 * len(units)))
    cmap = matplotlib.colormaps["coolwarm"]
    for k, u in enumerate(units):
        ax = fig.add_subplot(len(units), 1, k + 1)
        acts = u["activation"]
        i = 0
        for row, line in enumerate(lines):
            for col, ch in enumerate(line + "\n"):
                if i >= len(acts):
                    break
                ax.add_patch(Rectangle((col, row), 1, 1, facecolor=cmap((acts[i] + 1) / 2), edgecolor="none"))
                if ch != "\n":
                    ax.text(col + 0.5, row + 0.55, ch, ha="center", va="center", fontsize=7.5, family="monospace")
                i += 1
        ax.set_xlim(0, cols)
        ax.set_ylim(len(lines), 0)
        ax.axis("off")
        ax.set_title(f"unit {u['unit']}, tanh(c_t): '{u['feature']}', r = {u['r']:+.2f} (init: {u['best_abs_r_at_init']:.2f})"
                     f"; blue -1, red +1", fontsize=9, loc="left")
    return _save(fig, path, {"units": [{k: v for k, v in u.items() if k != "activation"} for u in units]})


# ---------------------------------------------------------------------------------------------- results figures


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _runs(*names: str) -> list[dict]:
    runs: list[dict] = []
    for name in names:
        data = _load(name)
        if data is not None:
            runs.extend(data["runs"])
    return runs


ADDING_FILES = ("adding_quick", "adding_seeds_1_2", "adding", "adding_rnn_5000", "adding_lag50", "adding_lag200",
                "adding_lag200_lstm", "adding_lag400_gru", "adding_lags")


def _adding_runs() -> list[dict]:
    """Every adding-problem run, one per (cell, T, seed): a later file in ADDING_FILES replaces an earlier run of the
    same key (adding_rnn_5000 holds the same tanh-RNN seeds as the 2,000-step runs, run to 5,000 steps)."""
    by_key: dict[tuple, dict] = {}
    for r in _runs(*ADDING_FILES):
        by_key[(r["cell"], r["seq_len"], r["seed"])] = r
    return list(by_key.values())


def fig_results_adding(path: Path) -> Path | None:
    """Test MSE against steps, every cell and seed of the adding-problem runs at T = 100."""
    runs = [r for r in _adding_runs() if r["seq_len"] == 100]
    if not runs:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    seen = set()
    for r in runs:
        c = r["curve"]
        label = None if r["cell"] in seen else LABELS[r["cell"]]
        seen.add(r["cell"])
        ax.plot(c["steps"], c["values"], color=COLORS[r["cell"]], alpha=0.85, label=label)
    ax.axhline(1 / 6, color="k", ls=":", lw=1, label="predict 1: MSE 1/6")
    ax.axhline(0.05, color="gray", ls="--", lw=1, label="pass: 0.05")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step (batch 64)")
    ax.set_ylabel("test MSE (1,000 sequences)")
    ax.set_title("Adding problem, T=100, H=64, Adam 1e-3, clip 1 (one line per seed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_results_lags(path: Path) -> Path | None:
    """Lag sweep of the adding problem: final test MSE and steps used, per cell and sequence length."""
    runs = _adding_runs()
    if not {r["seq_len"] for r in runs} - {100}:
        return None
    fig = Figure(figsize=(10, 4.0))
    ax_m, ax_s = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for cell in ("lstm", "gru", "rnn_tanh"):
        rs = sorted((r for r in runs if r["cell"] == cell), key=lambda r: r["seq_len"])
        if not rs:
            continue
        marker = {"lstm": "s", "gru": "o", "rnn_tanh": "^"}[cell]  # distinct shapes: points can coincide
        ax_m.plot([r["seq_len"] for r in rs], [r["final_mse"] for r in rs], marker, color=COLORS[cell],
                  label=LABELS[cell], alpha=0.7, mfc="none" if cell == "lstm" else None, ms=9 if cell == "lstm" else 6)
        ax_s.plot([r["seq_len"] for r in rs], [r["curve"]["steps_run"] for r in rs], marker, color=COLORS[cell],
                  label=LABELS[cell], alpha=0.7, mfc="none" if cell == "lstm" else None, ms=9 if cell == "lstm" else 6)
    ax_m.axhline(1 / 6, color="k", ls=":", lw=1, label="predict 1: 1/6")
    ax_m.axhline(0.05, color="gray", ls="--", lw=1, label="pass: 0.05")
    ax_m.set_yscale("log")
    ax_m.set_ylabel("final test MSE")
    ax_s.set_ylabel("optimiser steps run (gated: until MSE < 0.05)")
    ax_m.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_m, ax_s):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([50, 100, 200, 400], ["50", "100", "200", "400"])
        ax.set_xlabel("sequence length T")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_m.set_title("Adding problem: lag sweep (one point per seed)")
    return _save(fig, path)


def fig_results_mnist1d(path: Path) -> Path | None:
    """Test accuracy against steps for every MNIST-1D model run (mnist1d.json and the extra RNN run)."""
    runs = _runs("mnist1d", "mnist1d_rnn_lr1e-3")
    if not runs:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    colors = {"gru6_bi_flat": "tab:green", "lstm64_last": "tab:blue", "rnn64_last": "tab:red",
              "rnn64_last_lr1e-3": "tab:orange"}
    for r in runs:
        c = r["curve"]
        ax.plot(c["steps"], c["values"], color=colors.get(r["model"], "gray"),
                label=f"{r['model']} (Adam {r['lr']:g}, seed {r['seed']})")
    ax.axhline(0.91, color="tab:green", ls=":", lw=1, label="published GRU 0.91 (Greydanus 2020)")
    ax.axhline(0.10, color="k", ls=":", lw=0.8, label="chance 0.10")
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimiser step (batch 100)")
    ax.set_ylabel("test accuracy (1,000 signals)")
    ax.set_title("MNIST-1D: bidirectional GRU(6) flattened; LSTM(64) and tanh RNN(64) on the last state",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_results_copy(path: Path) -> Path | None:
    """Copy memory: test cross-entropy divided by the memoryless baseline, per T (longer runs dashed)."""
    runs = _runs("copy_memory", "copy_memory_T30_10k")
    if not runs:
        return None
    delays = sorted({r["delay"] for r in runs})
    fig = Figure(figsize=(5 * len(delays), 4.0))
    for i, d in enumerate(delays):
        ax = fig.add_subplot(1, len(delays), i + 1)
        for r in (r for r in runs if r["delay"] == d):
            c = r["curve"]
            ax.plot(c["steps"], [v / r["baseline"] for v in c["values"]], color=COLORS[r["cell"]],
                    ls="-" if c["steps_run"] <= 3000 else "--", label=f"{LABELS[r['cell']]} ({c['steps_run']} steps)")
        ax.axhline(1.0, color="k", ls=":", lw=1, label=f"memoryless 10 ln8/(T+20) = {r['baseline']:.3f}")
        ax.axhline(0.9, color="gray", ls="--", lw=0.8, label="0.9 x baseline")
        ax.set_ylim(0, 1.6)
        ax.set_title(f"Copy memory, T = {d}")
        ax.set_xlabel("optimiser step (batch 64)")
        ax.set_ylabel("test cross-entropy / memoryless baseline")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def fig_results_shakespeare(path: Path) -> Path | None:
    data = _load("shakespeare")
    if data is None:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    for r in data["runs"]:
        ax.plot(r["curve"]["steps"], r["curve"]["values"], color=COLORS[r["cell"]],
                label=f"{LABELS[r['cell']]} {data['config']['hidden']}")
    ax.axhline(data["bigram_measured"], color="k", ls=":", lw=1,
               label=f"bigram, this split: {data['bigram_measured']:.2f}")
    # No published number here: nanoGPT's 1.88 and the 2.47 bigram are on tiny-shakespeare, another split
    # (docs/results.md, section 4); the bigram measured on this split is the like-for-like reference.
    ax.set_ylim(1.3, 4.5)
    ax.set_xlabel("optimiser step (32 x 100 characters)")
    ax.set_ylabel("validation nats per character")
    ax.set_title("Character LM on Shakespeare (held-out plays)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_results_forget_bias(path: Path) -> Path | None:
    data = _load("forget_bias")
    if data is None:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    for r in data["runs"]:
        color = "tab:blue" if r["forget_bias"] == 1.0 else "tab:red"
        ax.plot(r["curve"]["steps"], r["curve"]["values"], color=color, alpha=0.8,
                label=f"b_f = {r['forget_bias']:g}, seed {r['seed']}")
    ax.axhline(0.05, color="gray", ls="--", lw=1, label="threshold 0.05")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test MSE")
    ax.set_title(f"Forget-gate bias 0 vs 1, LSTM on the adding problem (T = {data['config']['seq_len']})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ numbers the pages quote



def _sci(v: float, digits: int = 1) -> str:
    """``1.4e-20``, ``1.6e13``: scientific notation as the pages write it (no '+', no padded exponent)."""
    mantissa, exp = f"{v:.{digits}e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _thousands(v: float) -> str:
    return f"{int(round(v)):,}"


def _figure_numbers(name: str, figures_dir: Path) -> dict[str, Any]:
    path = figures_dir / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))["numbers"] if path.is_file() else {}


def quoted_numbers(figures_dir: Path = FIGURES_DIR, samples: Path = SAMPLES_JSON) -> dict[str, str]:
    """Every number the guide, README, training.md and results.md quote, formatted as the pages write it, computed
    from the committed JSON only (the figures' data files, the convergence benchmarks' results, the samples run).
    ``tests/test_docs.py`` checks that each page in :data:`QUOTES` contains the numbers listed for it, so a rerun
    that moves a number shows up as a failing test until the text follows. ``--numbers`` prints them."""
    out: dict[str, str] = {}
    if MAIN_JOB_JSON.is_file():
        job = json.loads(MAIN_JOB_JSON.read_text())
        out["main.final"] = f"{job['final_val']:.3f}"
        out["main.final_bits"] = f"{job['final_val'] / math.log(2):.2f}"
        for step, loss in job["val_curve"].items():
            out[f"main.val.{step}"] = f"{loss:.3f}"
        for k, t in enumerate(job["timings"]):
            out[f"main.wall.{k}"] = f"{t['wall_s'] // 60} min {t['wall_s'] % 60:02d} s"
            out[f"main.training.{k}"] = f"{t['training_s']} s"
            out[f"main.cpu.{k}"] = f"{t['user_cpu_s']} s"
    van = _figure_numbers("vanishing", figures_dir)
    if van:
        for h in ("64", "256"):
            out[f"whh.rho{h}"] = f"{van['default_whh'][h]['rho']:.2f}"
            out[f"whh.sigma{h}"] = f"{van['default_whh'][h]['sigma_max']:.2f}"
        for cell, rate in van["rate_k10_60"].items():
            out[f"vanishing.rate.{cell}"] = f"{rate:.2f}"
    spec = _figure_numbers("spectral_radius", figures_dir)
    if spec:
        out["spectral.rate0.5"] = f"{spec['tanh_rate_0.5']:.3f}"
        out["spectral.rate0.9"] = f"{spec['tanh_rate_0.9']:.3f}"
        out["spectral.growth1.5"] = _sci(spec["tanh_growth_at_T"]["1.5"])
    fg = _figure_numbers("forget_gate", figures_dir)
    if fg:
        m = fg["measured"]
        out["forget.rate.b0"] = f"{m['b0']['rate_k20_100']:.2f}"
        out["forget.rate.b1"] = f"{m['b1']['rate_k20_100']:.2f}"
        out["forget.k100.b0"] = _sci(m["b0"]["at_k100"])
        out["forget.k100.b1"] = _sci(m["b1"]["at_k100"])
        out["forget.chrono.k200"] = f"{m['chrono']['at_k200']:.2f}"
        out["forget.maxf.b0"] = f"{m['b0']['max_unit_f']:.2f}"
        out["forget.maxf.b1"] = f"{m['b1']['max_unit_f']:.3f}"
        out["forget.ratio.measured"] = _sci(fg["ratio_at_k100_measured"])
        out["forget.ratio.guides"] = _sci(fg["ratio_at_k100_guides"], 0)
    clip = _figure_numbers("clipping", figures_dir)
    if clip:
        out["clip.nonfinite_step"] = str(clip["no_clip"]["steps_run"] - 1)
        out["clip.last50"] = f"{clip['clip']['last_50_mean_loss']:.3f}"
    for r in _adding_runs():  # docs/results.md, section 1 and the lag sweep
        digits = 4 if r["seq_len"] == 100 else 3  # the lag-sweep table writes three
        out[f"adding.{r['cell']}.T{r['seq_len']}.s{r['seed']}.mse"] = f"{r['final_mse']:.{digits}f}"
    for r in _runs("mnist1d", "mnist1d_rnn_lr1e-3"):
        out[f"mnist1d.{r['model']}.final"] = f"{r['final_acc']:.3f}"
        out[f"mnist1d.{r['model']}.best"] = f"{r['best_acc']:.3f}"
    for name in ("copy_memory", "copy_memory_T30_10k"):
        for r in _runs(name):
            tag = "10k" if name.endswith("10k") else "3k"
            out[f"copy.{r['cell']}.T{r['delay']}.{tag}.ce"] = f"{r['final_ce']:.3f}"
            out[f"copy.{r['cell']}.T{r['delay']}.{tag}.ratio"] = f"{r['final_ce'] / r['baseline']:.2f}"
    shakes = _load("shakespeare")
    if shakes:
        out["shakespeare.bigram"] = f"{shakes['bigram_measured']:.3f}"
        out["shakespeare.bigram2"] = f"{shakes['bigram_measured']:.2f}"
        for r in shakes["runs"]:
            out[f"shakespeare.{r['cell']}"] = f"{r['curve']['values'][-1]:.3f}"
    fb = _load("forget_bias")
    adding = {r["seed"]: r for r in _runs("adding_quick", "adding_seeds_1_2") if r["cell"] == "lstm"}
    if fb and adding:
        first = lambda r: next(s for s, v in zip(r["curve"]["steps"], r["curve"]["values"]) if v < 0.05)  # noqa: E731
        b0 = {r["seed"]: first(r) for r in fb["runs"] if r["forget_bias"] == 0.0}
        b1 = {seed: first(r) for seed, r in adding.items() if seed in b0}
        gains = sorted((b0[s] - b1[s] for s in b0), reverse=True)  # steps saved by b_f = 1, per seed
        out["forget_bias.gain1"], out["forget_bias.gain2"] = _thousands(gains[0]), _thousands(gains[1])
        out["forget_bias.loss3"] = _thousands(-gains[2])
        out["forget_bias.median0"] = _thousands(sorted(b0.values())[len(b0) // 2])
        out["forget_bias.median1"] = _thousands(sorted(b1.values())[len(b1) // 2])
    if samples.is_file():
        sm = json.loads(samples.read_text(encoding="utf-8"))
        out["samples.steps"] = str(sm["config"]["steps"])
        out["samples.val"] = f"{sm['val_loss'][str(sm['config']['steps'])]:.3f}"
        out["samples.analysis_chars"] = _thousands(sm["analysis_chars"])
        for x in sm["samples"]:  # the first line of each sample the pages show
            out[f"samples.text.{x['step']}.{x['temperature']:g}"] = x["text"].split("\n")[0][:80]
        for u in sm["units"]:
            key = u["feature"].replace(" ", "_")
            out[f"samples.unit.{key}"] = str(u["unit"])
            out[f"samples.r.{key}"] = f"{u['r']:.2f}"
            out[f"samples.r_init.{key}"] = f"{u['best_abs_r_at_init']:.2f}"
    return out


_GUIDE = ["whh.rho64", "whh.sigma64", "whh.rho256", "whh.sigma256", "vanishing.rate.rnn_tanh", "vanishing.rate.gru",
          "vanishing.rate.lstm", "vanishing.rate.lstm_cell", "spectral.rate0.5", "spectral.rate0.9",
          "spectral.growth1.5", "forget.rate.b0", "forget.rate.b1", "forget.k100.b0", "forget.k100.b1",
          "forget.chrono.k200", "forget.maxf.b0", "forget.maxf.b1", "forget.ratio.measured", "forget.ratio.guides",
          "clip.nonfinite_step", "clip.last50", "forget_bias.gain1", "forget_bias.gain2", "forget_bias.loss3",
          "forget_bias.median0", "forget_bias.median1"]
_SAMPLES = ["samples.steps", "samples.val", "samples.analysis_chars", "samples.text.25.0.8", "samples.text.100.0.8",
            "samples.text.300.0.8", "samples.text.300.0.5", "samples.text.300.1.5"] + [
    f"samples.{what}.{feature}" for what in ("unit", "r", "r_init")
    for feature in ("line_position", "speaker_name", "stage_direction")]
_RESULTS = [f"adding.{cell}.T100.s{seed}.mse" for cell in ("lstm", "gru", "rnn_tanh") for seed in (0, 1, 2)] + [
    f"adding.{cell}.T{t}.s0.mse" for cell, t in (("lstm", 50), ("gru", 50), ("rnn_tanh", 50), ("lstm", 200),
                                                  ("gru", 200), ("rnn_tanh", 200), ("gru", 400))] + [
    f"mnist1d.{model}.{which}" for model in ("gru6_bi_flat", "lstm64_last", "rnn64_last", "rnn64_last_lr1e-3")
    for which in ("final", "best")] + [
    f"copy.{cell}.T{t}.3k.{what}" for cell in ("lstm", "gru", "rnn_tanh") for t in (30, 100) for what in ("ce", "ratio")
] + [f"copy.{cell}.T30.10k.{what}" for cell in ("lstm", "gru") for what in ("ce", "ratio")]
# Which page quotes which number (the keys of quoted_numbers); tests/test_docs.py holds every page to its list.
QUOTES: dict[str, list[str]] = {
    "docs/guide.md": _GUIDE + _SAMPLES,
    "docs/zh/guide.md": _GUIDE + _SAMPLES,
    "docs/results.md": _RESULTS + ["shakespeare.bigram", "shakespeare.lstm", "shakespeare.gru", "forget_bias.gain1",
                        "forget_bias.gain2", "forget_bias.median0", "forget_bias.median1", "forget.ratio.measured",
                        "forget.ratio.guides"],
    "docs/zh/results.md": _RESULTS + ["shakespeare.bigram", "shakespeare.lstm", "shakespeare.gru", "forget_bias.gain1",
                           "forget_bias.gain2", "forget_bias.median0", "forget_bias.median1",
                           "forget.ratio.measured", "forget.ratio.guides"],
    "docs/training.md": ["shakespeare.bigram2", "main.final", "main.final_bits"] + [
        f"main.val.{step}" for step in range(100, 801, 100)] + [
        f"main.{what}.{k}" for what in ("wall", "training", "cpu") for k in (0, 1, 2, 3)],
    "README.md": ["shakespeare.bigram2", "samples.val", "samples.text.300.0.8", "main.final", "main.wall.0",
                  "main.cpu.0", "main.wall.3", "main.cpu.3"],
}


FIGURES: dict[str, Callable[[Path], Path | None]] = {
    "diagram_unrolled": fig_diagram_unrolled,
    "diagram_lstm": fig_diagram_lstm,
    "diagram_gru": fig_diagram_gru,
    "diagram_tbptt": fig_diagram_tbptt,
    "vanishing": fig_vanishing,
    "spectral_radius": fig_spectral_radius,
    "forget_gate": fig_forget_gate,
    "init_presets": fig_init_presets,
    "tbptt": fig_tbptt,
    "clipping": fig_clipping,
    "lstm_units": fig_lstm_units,
    "results_adding": fig_results_adding,
    "results_lags": fig_results_lags,
    "results_mnist1d": fig_results_mnist1d,
    "results_copy": fig_results_copy,
    "results_shakespeare": fig_results_shakespeare,
    "results_forget_bias": fig_results_forget_bias,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--list", action="store_true", help="print the figure names and exit")
    p.add_argument("--numbers", action="store_true",
                   help="print the numbers the pages quote (from the committed JSON) and which pages quote them")
    p.add_argument("--only", nargs="+", default=None, choices=list(FIGURES), metavar="NAME",
                   help="make only these figures")
    p.add_argument("--out", type=Path, default=FIGURES_DIR, help="output folder (default docs/figures)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{name}.png" for name in FIGURES))
        return 0
    if args.numbers:
        numbers = quoted_numbers()
        for key, text in numbers.items():
            pages = [page for page, keys in QUOTES.items() if key in keys]
            print(f"{key:32s} {text:>10s}   {', '.join(pages)}")
        return 0
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in args.only or list(FIGURES):
        t0 = time.perf_counter()
        made = FIGURES[name](args.out / f"{name}.png")
        if made is None:
            missing.append(name)
            print(f"{name}: skipped, no benchmark JSON in {RESULTS_DIR}", file=sys.stderr)
        else:
            print(f"{made}  ({time.perf_counter() - t0:.1f} s)")
    return 1 if missing and args.only else 0


if __name__ == "__main__":
    sys.exit(main())
