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

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import Tensor, nn

import rnnlab
from rnnlab.diagnostics import gradient_profile
from rnnlab.diagnostics.tasks import adding_batch
from rnnlab.init import apply_init

ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = ROOT / "docs" / "figures"
RESULTS_DIR = ROOT / "benchmarks" / "convergence" / "results"

COLORS = {"rnn_tanh": "tab:red", "rnn_relu": "tab:purple", "lstm": "tab:blue", "gru": "tab:green"}
LABELS = {"rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)", "lstm": "LSTM", "gru": "GRU"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


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
    """Gradient reaching h_{T-k} at initialisation, tanh RNN vs LSTM vs GRU (torch default init), T = 200."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    for cell in ("rnn_tanh", "gru", "lstm"):
        torch.manual_seed(0)
        model = _LastStep(_layer(cell, 2, H), H)
        prof = _profile(model, x, y)
        g = _relative(prof.by_distance(0))
        ax.semilogy(range(len(g)), g, color=COLORS[cell], label=f"{LABELS[cell]}: ||dL/dh||")
        if cell == "lstm":
            c = prof.by_distance(0, "cell")
            ax.semilogy(range(len(c)), _relative(c), color=COLORS[cell], ls="--", label="LSTM: ||dL/dc||")
    ax.set_xlabel("k = distance from the loss (steps back from T)")
    ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
    ax.set_title(f"Gradient through time at init (adding problem, T={T}, H={H}, torch default init)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return _save(fig, path)


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


def fig_spectral_radius(path: Path) -> Path:
    """||dL/dh_{T-k}|| for Elman RNNs with W_hh = rho * Q: tanh (left) and ReLU (right), rho from 0.5 to 1.5."""
    T, H, B = 100, 64, 16
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    x = 0.1 * x  # small inputs keep tanh near its linear range, so the picture shows W_hh, not saturation
    fig = Figure(figsize=(10, 4.2))
    for i, nl in enumerate(("tanh", "relu")):
        ax = fig.add_subplot(1, 2, i + 1)
        for rho, color in zip((0.5, 0.9, 1.0, 1.1, 1.5), ("#1b9e77", "#66a61e", "#333333", "#e6ab02", "#d95f02")):
            model = _LastStep(_scaled_rnn(nl, rho, H, seed=0), H)
            g = _relative(_profile(model, x, y).by_distance(0))
            ax.semilogy(range(len(g)), g, color=color, label=f"rho(W_hh) = {rho}")
            if nl == "tanh" and rho < 1:
                ks = torch.arange(len(g), dtype=torch.float64)
                ax.semilogy(ks, rho ** ks, color=color, ls=":", lw=1)
        ax.set_title(f"{nl} RNN, W_hh = rho * orthogonal" + (" (dotted: rho^k)" if nl == "tanh" else ""))
        ax.set_xlabel("k = steps back from the loss")
        ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
        ax.set_ylim(1e-30, 1e12)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def fig_forget_gate(path: Path) -> Path:
    """LSTM cell-state gradient ||dL/dc_{T-k}|| under forget-gate bias 0, 1 and chrono, with sigma(b)^k guides."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    ks = torch.arange(T + 1, dtype=torch.float64)
    for name, color, bias in (("torch", "tab:red", 0.0), ("forget_bias", "tab:blue", 1.0), ("chrono", "tab:green",
                                                                                             None)):
        torch.manual_seed(0)
        model = _LastStep(rnnlab.LSTM(2, H), H)
        if name == "torch":  # torch's init draws b_f ~ U(-1/sqrt(H), 1/sqrt(H)); set it to exactly 0 for the guide
            with torch.no_grad():
                model.rnn.bias_ih_l0[H:2 * H] = 0.0
                model.rnn.bias_hh_l0[H:2 * H] = 0.0
        else:
            apply_init(model, name, t_max=T, generator=torch.Generator().manual_seed(0))
        c = _profile(model, x, y).by_distance(0, "cell")
        label = {"torch": "b_f = 0", "forget_bias": "b_f = 1 (forget_bias)", "chrono": "chrono (T_max = 200)"}[name]
        ax.semilogy(range(len(c)), _relative(c), color=color, label=f"||dL/dc||, {label}")
        if bias is not None:
            s = 1 / (1 + math.exp(-bias))
            ax.semilogy(ks, s ** ks, color=color, ls=":", lw=1, label=f"sigma({bias:g})^k = {s:.2f}^k")
    ax.set_ylim(1e-30, 10)
    ax.set_xlabel("k = steps back from the loss")
    ax.set_ylabel("||dL/dc_{T-k}|| / ||dL/dc_T||")
    ax.set_title("LSTM cell path: dc_t/dc_{t-1} = f_t, so the forget gate sets the decay")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_init_presets(path: Path) -> Path:
    """Half of the guide's init table: ||dL/dh_{T-k}|| at init for each preset, tanh RNN and GRU, T = 200."""
    T, H, B = 200, 64, 32
    x, y = adding_batch(T, B, torch.Generator().manual_seed(0))
    fig = Figure(figsize=(10, 4.2))
    for i, (cell, presets) in enumerate((("rnn_tanh", ("torch", "orthogonal", "irnn")),
                                         ("gru", ("torch", "orthogonal", "forget_bias", "chrono")))):
        ax = fig.add_subplot(1, 2, i + 1)
        for preset, color in zip(presets, ("tab:red", "tab:blue", "tab:green", "tab:orange")):
            torch.manual_seed(0)
            model = _LastStep(_layer(cell, 2, H), H)
            apply_init(model, preset, t_max=T, generator=torch.Generator().manual_seed(0))
            g = _relative(_profile(model, x, y).by_distance(0))
            ax.semilogy(range(len(g)), g, color=color, label=preset)
        ax.set_title(f"{LABELS[cell]}: init presets (rnnlab.init)")
        ax.set_xlabel("k = steps back from the loss")
        ax.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
        ax.set_ylim(1e-30, 1e3)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


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


def blog_loop_error() -> str:
    """Run the blog's CustomLSTM-style loop (state carried across iterations, never detached) and return the error
    that the second ``backward()`` raises."""
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
            nn.functional.mse_loss(h, target).backward()
            opt.step()
    except RuntimeError as err:
        return str(err).split("\n")[0]
    return ""


def fig_tbptt(path: Path) -> Path:
    """Autograd graph behind each batch's loss when the state is carried across batches: without detach (the
    blog's loop, kept alive with retain_graph so it does not crash) the graph grows with every batch."""
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
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.add_subplot()
    for (mode, s), color in zip(sizes.items(), ("tab:red", "tab:blue")):
        ax.plot(range(1, batches + 1), s, marker="o", ms=3, color=color, label=mode)
    ax.set_xlabel("batch number (state carried from the previous batch)")
    ax.set_ylabel("autograd nodes behind the loss")
    ax.set_title(f"Carrying the state: graph size per batch (LSTM, {T} steps a batch)")
    ax.text(0.02, 0.95, "without retain_graph the blog's 2nd backward() raises:\n\"" + blog_loop_error()[:70] +
            "...\"", transform=ax.transAxes, fontsize=7.5, va="top", family="monospace")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right")
    return _save(fig, path)


def fig_clipping(path: Path) -> Path:
    """A tanh RNN with W_hh = 1.5 Q (Q orthogonal: an exploding start) trained by plain SGD (lr 0.1) on the adding
    problem, with and without clipping the global gradient norm at 1 (Pascanu, Mikolov & Bengio 2013)."""
    T, H, B, steps = 50, 32, 32, 300
    fig = Figure(figsize=(10, 4.0))
    ax_g, ax_l = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for clip, color in ((None, "tab:red"), (1.0, "tab:blue")):
        model = _LastStep(_scaled_rnn("tanh", 1.5, H, seed=0), H)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(0)
        norms, losses = [], []
        for _ in range(steps):
            x, y = adding_batch(T, B, data)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            total = float(nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf")))
            norms.append(total)
            losses.append(float(loss.detach()))
            if not (math.isfinite(total) and math.isfinite(losses[-1])):
                break  # the weights are no longer finite numbers: training is over
            opt.step()
        label = "no clipping" if clip is None else f"clip_grad_norm_(params, {clip:g})"
        if clip is None:
            label += f" (non-finite at step {len(losses) - 1})" if len(losses) < steps else ""
        ax_g.semilogy(norms, color=color, label=label)
        ax_l.semilogy(losses, color=color, label=label)
    ax_g.axhline(1.0, color="k", lw=0.8, ls=":")
    ax_g.set_title("global gradient norm before clipping")
    ax_l.axhline(1 / 6, color="k", lw=0.8, ls=":", label="baseline 1/6")
    ax_l.set_title(f"training loss (tanh RNN, W_hh = 1.5 Q, SGD 0.1, T={T})")
    for ax in (ax_g, ax_l):
        ax.set_xlabel("optimiser step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


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
    ax.axhline(1.88, color="gray", ls="--", lw=1, label="nanoGPT CPU config (published): 1.88")
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


FIGURES: dict[str, Callable[[Path], Path | None]] = {
    "vanishing": fig_vanishing,
    "spectral_radius": fig_spectral_radius,
    "forget_gate": fig_forget_gate,
    "init_presets": fig_init_presets,
    "tbptt": fig_tbptt,
    "clipping": fig_clipping,
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
    p.add_argument("--only", nargs="+", default=None, choices=list(FIGURES), metavar="NAME",
                   help="make only these figures")
    p.add_argument("--out", type=Path, default=FIGURES_DIR, help="output folder (default docs/figures)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{name}.png" for name in FIGURES))
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
