"""Matplotlib figures of :mod:`rnnlab.diagnostics` results, written as PNG files.

Uses matplotlib's object API with the Agg canvas (no ``pyplot``), so drawing a report never changes the
caller's backend or global figure state and works headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..diagnostics import GateStats, GradientProfile, JacobianSpectrum, WeightSpectrum

__all__ = ["save", "plot_heatmap", "plot_profiles", "plot_jacobian_spectra", "plot_weight_spectra", "plot_gates",
           "plot_curves"]

_TINY = 1e-45  # below float32's smallest subnormal: log10 of a gradient that underflowed to 0


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (dpi 100) and return the path."""
    path = Path(path)
    FigureCanvasAgg(fig)
    # Fixed margins, not constrained layout: layout solving costs more than drawing (about 0.5 s a figure).
    fig.subplots_adjust(left=0.09, right=0.92, bottom=0.12, top=0.85, wspace=0.42, hspace=0.5)
    fig.savefig(path, format="png", dpi=100)
    return path


def _log10(t: torch.Tensor) -> torch.Tensor:
    return t.clamp_min(_TINY).log10()


def plot_heatmap(profile: GradientProfile, path: str | Path, title: str = "", which: str = "hidden") -> Path:
    """``log10 ||dL/dh_t||`` over (layer-direction, time); the initial state is the leftmost column."""
    rows = profile.hidden if which == "hidden" else profile.cell
    init = profile.hidden_initial if which == "hidden" else profile.cell_initial
    if rows is None or init is None:
        raise ValueError(f"plot_heatmap: the profile has no {which!r} norms (only LSTM layers have a cell state)")
    data = _log10(torch.cat([init.unsqueeze(1), rows], dim=1)).numpy()  # (N, T+1)
    fig = Figure(figsize=(9, 1.2 + 0.5 * len(profile.names)))
    ax = fig.add_subplot()
    im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(-1.5, data.shape[1] - 1.5, len(profile.names) - 0.5, -0.5))
    ax.set_yticks(range(len(profile.names)), profile.names)
    ax.set_xlabel("time step t (-1 = initial state)")
    sym = "h" if which == "hidden" else "c"
    ax.set_title(title or f"log10 ||dL/d{sym}_t||")
    fig.colorbar(im, ax=ax, label=f"log10 ||dL/d{sym}_t||")
    return save(fig, path)


def plot_profiles(profiles: Mapping[str, GradientProfile], path: str | Path, title: str = "") -> Path:
    """Gradient norm vs distance from the end of the walk (the loss, for a last-step loss), one curve per
    (run, layer-direction); LSTM cell-state norms dashed. Normalised to 1 at distance 0 so runs compare."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for label, prof in profiles.items():
        for n, name in enumerate(prof.names):
            g = prof.by_distance(n)
            line, = ax.semilogy(range(len(g)), (g / g[0]).clamp_min(_TINY).numpy(), label=f"{label} {name} h")
            if prof.cell is not None and prof.modes[n] == "LSTM":
                c = prof.by_distance(n, "cell")
                if float(c[0]) > 0:
                    ax.semilogy(range(len(c)), (c / c[0]).clamp_min(_TINY).numpy(), "--", color=line.get_color(),
                                label=f"{label} {name} c")
    ax.set_xlabel("steps back from the loss (k)")
    ax.set_ylabel("||dL/ds_{T-k}|| / ||dL/ds_T||")
    ax.set_title(title or "Gradient norm through time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return save(fig, path)


def plot_jacobian_spectra(spectra: Mapping[str, JacobianSpectrum], path: str | Path, title: str = "") -> Path:
    """Left: top singular value of ``ds_T/ds_{T-k}`` vs ``k`` (mean over rows, band = min..max).
    Right: the whole spectrum for the longest window."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for label, spec in spectra.items():
        top = spec.singular_values[:, :, 0]  # (K, R)
        line, = left.semilogy(spec.windows, top.mean(1).clamp_min(_TINY).numpy(), "o-", label=label)
        left.fill_between(spec.windows, top.min(1).values.clamp_min(_TINY).numpy(),
                          top.max(1).values.clamp_min(_TINY).numpy(), color=line.get_color(), alpha=0.2)
        last = spec.singular_values[-1].mean(0)  # (S,)
        right.semilogy(range(1, len(last) + 1), last.clamp_min(_TINY).numpy(), ".-", color=line.get_color(),
                       label=f"{label} (k={spec.windows[-1]})")
    left.axhline(1.0, color="k", lw=0.8, ls=":")
    left.set_xlabel("window k (steps)")
    left.set_ylabel("sigma_max(ds_T/ds_{T-k})")
    left.set_title("Largest singular value of the Jacobian product")
    right.set_xlabel("index")
    right.set_ylabel("singular value")
    right.set_title("Spectrum of the longest product")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_weight_spectra(weights: Sequence[WeightSpectrum], path: str | Path, title: str = "") -> Path:
    """Eigenvalues of each gate block of each ``W_hh`` in the complex plane, with the unit circle."""
    n = len(weights)
    fig = Figure(figsize=(3.6 * n, 3.8))
    axes = fig.subplots(1, n, squeeze=False)[0]
    angle = torch.linspace(0, 2 * math.pi, 200)
    for ax, ws in zip(axes, weights):
        ax.plot(angle.cos().numpy(), angle.sin().numpy(), "k:", lw=0.8)
        for gate, eig in ws.eigenvalues.items():
            ax.scatter([z.real for z in eig], [z.imag for z in eig], s=8,
                       label=f"{gate}: rho={ws.spectral_radius[gate]:.2f}")
        ax.set_aspect("equal")
        ax.set_title(f"{ws.name} W_hh eigenvalues", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_gates(stats: Sequence[GateStats], path: str | Path, title: str = "") -> Path:
    """Per-step gate series of each layer-direction (one panel per layer), plus the histograms of the gates."""
    n = len(stats)
    fig = Figure(figsize=(11, 3.2 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for (ax_s, ax_h), st in zip(axes, stats):
        for key, series in st.series.items():
            if key == "forget_cumprod":
                continue
            ax_s.plot(series.numpy(), label=key)
        if "forget_cumprod" in st.series:  # spans decades: its own log axis
            ax_f = ax_s.twinx()
            ax_f.semilogy(st.series["forget_cumprod"].clamp_min(_TINY).numpy(), "k--")
            ax_f.set_ylabel("mean prod_{s<=t} f_s (dashed, log)", fontsize=8)
        ax_s.set_xlabel("time step t")
        ax_s.set_title(f"{st.name} ({st.mode}) per step", fontsize=9)
        ax_s.grid(True, alpha=0.3)
        ax_s.legend(fontsize=7)
        for key, (counts, edges) in st.histograms.items():
            centers = ((edges[1:] + edges[:-1]) / 2).numpy()
            ax_h.plot(centers, (counts / counts.sum().clamp_min(1)).numpy(), ".-", label=key)
        ax_h.set_title(f"{st.name} distribution over steps, rows and units", fontsize=9)
        ax_h.set_xlabel("value")
        ax_h.set_ylabel("fraction")
        ax_h.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                ylabel: str = "loss", title: str = "", logy: bool = True,
                hline: float | None = None, hline_label: str = "") -> Path:
    """Line plot of ``label -> (x, y)`` curves, e.g. training loss vs step."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        (ax.semilogy if logy else ax.plot)(list(x), list(y), label=label)
    if hline is not None:
        ax.axhline(hline, color="k", ls=":", lw=1, label=hline_label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
