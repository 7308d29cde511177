"""The ``rnnlab compare`` report: RNN (tanh), LSTM and GRU trained on the same task, seed, init and budget.

Each cell is trained with the standard trainer (:func:`rnnlab.train.run.setup_run`, so every run folder is a normal
rnnlab run with its ``config.json``, metrics and checkpoint) plus a :class:`rnnlab.train.tracking.GradientTracker`.
The page shows the loss curves, the final metrics, the gradient profiles at step 0 and at the end side by side,
the gradient norms and ``rho(W_hh)`` during training; with ``lags`` it repeats the comparison at several sequence
lengths and reports the largest one each cell solves.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ..diagnostics.tasks import ADDING_BASELINE_MSE, CELLS, cell_name
from ..errors import UserError
from ..init import INIT_PRESETS, apply_init
from ..train.config import load_config
from ..train.run import setup_run
from ..train.tracking import GradientTracker
from ..train.trainer import Callback, Trainer
from .figures import _TINY, plot_curves, save
from .html import Section, write_html

__all__ = ["CompareConfig", "run_compare", "largest_solved", "QUICK"]

# --quick: a smoke run that finishes in well under a minute on one core.
QUICK = {"steps": 40, "hidden_size": 16, "batch_size": 32, "num_samples": 256, "seq_len": 20, "track_every": 20}


@dataclass
class CompareConfig:
    """What ``rnnlab compare`` trains (each field is a CLI flag of the same name)."""

    task: str = "adding"  # the adding problem: regression on the last step, baseline MSE 1/6
    cells: list[str] = field(default_factory=lambda: ["rnn_tanh", "lstm", "gru"])
    init: str = "torch"  # one preset of rnnlab.init, for every cell (chrono: T_max = seq_len)
    seq_len: int = 50
    hidden_size: int = 64
    num_layers: int = 1
    batch_size: int = 64
    num_samples: int = 10000  # training sequences (validation gets a tenth)
    steps: int = 1500  # optimizer steps per cell (the budget)
    lr: float = 3e-3
    clip_norm: float = 1.0  # Pascanu et al. 2013
    track_every: int = 100  # GradientTracker interval
    lags: list[int] = field(default_factory=list)  # optional lag sweep: sequence lengths, e.g. 25,50,100,200
    solve_fraction: float = 0.1  # solved = final validation MSE <= solve_fraction * 1/6
    seed: int = 0
    quick: bool = False  # smoke run: the QUICK overrides

    def resolved(self) -> CompareConfig:
        """A copy with ``quick`` applied and the cell names canonical. Raises UserError on a bad field."""
        cfg = CompareConfig(**asdict(self))
        if cfg.quick:
            for k, v in QUICK.items():
                setattr(cfg, k, v)
        bad = [c for c in cfg.cells if c not in CELLS and c != "rnn"]
        if not cfg.cells or bad:
            raise UserError(f"compare: --cells expects a comma list of {list(CELLS)}, got {cfg.cells}")
        cfg.cells = [cell_name(c) for c in cfg.cells]
        if cfg.init not in INIT_PRESETS:
            raise UserError(f"compare: --init expects one of {list(INIT_PRESETS)}, got {cfg.init!r}")
        if cfg.task != "adding":
            raise UserError(f"compare: --task supports 'adding' (its 'solved' threshold is known), got {cfg.task!r}")
        for name in ("seq_len", "hidden_size", "num_layers", "batch_size", "num_samples", "steps", "track_every"):
            if getattr(cfg, name) < 1:
                raise UserError(f"compare: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
        if any(t < 2 for t in cfg.lags):
            raise UserError(f"compare: --lags must all be >= 2, got {cfg.lags}")
        return cfg


class _LossCurve(Callback):
    """Training loss of every step (the trainer's own metric), for the loss plot."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if not metrics.get("skipped"):
            self.steps.append(step)
            self.loss.append(float(metrics["loss"]))


def _train(cfg: CompareConfig, cell: str, seq_len: int, run_dir: Path) -> dict[str, Any]:
    """Train one cell at one sequence length; returns its metrics, curves and tracker."""
    rc = load_config(None, {
        "task.name": cfg.task, "task.seq_len": seq_len, "task.batch_size": cfg.batch_size,
        "task.num_samples": cfg.num_samples, "model.cell": cell, "model.hidden_size": cfg.hidden_size,
        "model.num_layers": cfg.num_layers, "model.init": cfg.init, "optim.lr": cfg.lr,
        "optim.clip_norm": cfg.clip_norm, "train.max_steps": cfg.steps, "train.seed": cfg.seed,
        "train.eval_every": 0, "train.checkpoint_every": 0, "train.log_every": max(1, cfg.steps // 50),
        "run.progress": False, "run.plots": False, "run.tensorboard": False})
    curve, tracker = _LossCurve(), GradientTracker(every=cfg.track_every, spectra_every=1)  # rho curve: every record
    # overwrite: a comparison re-run into its --out folder replaces its earlier runs, as it replaces the report.
    trainer = setup_run(rc, run_dir=run_dir, callbacks=[curve, tracker], progress=False, overwrite=True)
    if cfg.init == "chrono":
        # build_model applies chrono with its default T_max; the dependency range of this task is seq_len
        # (Tallec & Ollivier 2018 set T_max to the expected range), so redo it in place before any step.
        apply_init(trainer.model, "chrono", t_max=float(max(seq_len, 3)),
                   generator=torch.Generator().manual_seed(cfg.seed))
    result = trainer.fit()
    val = float(result.get("val_loss", math.nan))
    return {"cell": cell, "seq_len": seq_len, "val_mse": val, "val_over_baseline": val / ADDING_BASELINE_MSE,
            "solved": val <= cfg.solve_fraction * ADDING_BASELINE_MSE, "train_time": result["train_time"],
            "steps": result["step"], "diag_seconds": tracker.seconds, "curve": (curve.steps, curve.loss),
            "tracker": tracker}


def _profile_grid(runs: list[dict[str, Any]], path: Path, seq_len: int) -> Path:
    """One panel per cell: ||dL/dh_t|| (last layer) vs steps back from the loss, at each tracked step."""
    fig = Figure(figsize=(4.2 * len(runs), 4))
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs):
        profiles = run["tracker"].profiles
        cmap = _colormap(len(profiles))
        for color, (step, prof) in zip(cmap, sorted(profiles.items())):
            g = prof.by_distance(len(prof.names) - 1)
            ax.semilogy(range(len(g)), (g / g[0]).clamp_min(_TINY).numpy(), color=color, label=f"step {step}")
        ax.set_title(f"{CELLS[run['cell']]} (T={seq_len})", fontsize=10)
        ax.set_xlabel("steps back from the loss (k)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T|| (last layer)")
    return save(fig, path)


def _colormap(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _tracked_curves(runs: list[dict[str, Any]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for run in runs:
        hist = [h for h in run["tracker"].history if key in h]
        out[CELLS[run["cell"]]] = ([h["step"] for h in hist], [h[key] for h in hist])
    return out


def _rho_curves(runs: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for run in runs:
        hist = [h for h in run["tracker"].history if "rho" in h]  # every record with a measured rho
        out[CELLS[run["cell"]]] = ([h["step"] for h in hist],
                                   [max(r for layer in h["rho"].values() for r in layer.values()) for h in hist])
    return out


def largest_solved(solved: dict[int, dict[str, bool]]) -> dict[str, int | None]:
    """Per cell, the largest sequence length it solved (None if none), from ``{T: {cell: solved}}``."""
    cells = {c for row in solved.values() for c in row}
    return {c: max((T for T, row in solved.items() if row.get(c)), default=None) for c in sorted(cells)}


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.3g}"


def run_compare(cfg: CompareConfig, out: str | Path) -> Path:
    """Train every cell of ``cfg`` (and every lag), write ``report.html``, PNGs, ``config.json`` and
    ``compare.json`` into ``out``; one run folder per training under ``out/runs``. Returns the HTML path.

    Raises:
        UserError: invalid config or an init that does not apply to a cell.
    """
    cfg = cfg.resolved()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    started = time.perf_counter()
    runs = [_train(cfg, cell, cfg.seq_len, out / "runs" / f"{cell}-T{cfg.seq_len}") for cell in cfg.cells]

    table = [["cell", "val MSE", "/ baseline 1/6", "solved", "steps", "train s", "diagnostics s",
              "half-life step 0", "half-life end", "rho(W_hh) max end"]]
    for run in runs:
        hist = run["tracker"].history
        last_layer = lambda h: list(h["half_life"].values())[-1]  # noqa: E731
        table.append([CELLS[run["cell"]], f"{run['val_mse']:.4f}", f"{run['val_over_baseline']:.3f}",
                      "yes" if run["solved"] else "no", str(run["steps"]), f"{run['train_time']:.1f}",
                      f"{run['diag_seconds']:.1f}", _fmt(last_layer(hist[0])), _fmt(last_layer(hist[-1])),
                      f"{max(r for layer in hist[-1]['rho'].values() for r in layer.values()):.3f}"])
    images = [
        (plot_curves({CELLS[r["cell"]]: r["curve"] for r in runs}, out / "loss.png", ylabel="training MSE",
                     title=f"Adding problem, T={cfg.seq_len}: training loss", hline=ADDING_BASELINE_MSE,
                     hline_label="baseline (predict 1): 1/6").name, "training loss per step, same seed and budget"),
        (_profile_grid(runs, out / "profiles.png", cfg.seq_len).name,
         "gradient profile at step 0 (first validation batch, dark) and at each tracked step (that step's own "
         "training batch) through the end (light)"),
        (plot_curves(_tracked_curves(runs, "grad_norm_pre"), out / "grad_norm.png", ylabel="pre-clip gradient norm",
                     title="Global gradient norm before clipping").name, "at each tracked step"),
        (plot_curves(_rho_curves(runs), out / "rho.png", ylabel="max rho(W_hh) over gate blocks", logy=False,
                     title="Spectral radius of the recurrent weights").name, "at each tracked step"),
    ]
    text = (f"solved: validation MSE <= {cfg.solve_fraction} x 1/6. Half-life: steps for ||dL/dh|| (last layer) "
            f"to halve (step 0: first validation batch; end: the last tracked step's own training batch).")
    sections = [Section("Results", text=text, table=table, images=images)]
    sweep: dict[str, Any] = {}
    if cfg.lags:
        lag_runs = {T: [_train(cfg, cell, T, out / "runs" / f"{cell}-T{T}") for cell in cfg.cells]
                    for T in cfg.lags}
        sweep_table = [["T", *[CELLS[c] for c in cfg.cells]]]
        for T, rs in lag_runs.items():
            sweep_table.append([str(T), *[f"{r['val_mse']:.4f}" + (" solved" if r["solved"] else "") for r in rs]])
        largest = largest_solved({T: {r["cell"]: r["solved"] for r in rs} for T, rs in lag_runs.items()})
        sweep_table.append(["largest T solved", *[str(largest[c] or "none") for c in cfg.cells]])
        sweep = {"val_mse": {str(T): {r["cell"]: r["val_mse"] for r in rs} for T, rs in lag_runs.items()},
                 "largest_solved": largest}
        sections.append(Section("Lag sweep", text=f"The same budget ({cfg.steps} steps) at each sequence length; "
                                "validation MSE (lower is better).", table=sweep_table))
    summary = {"config": asdict(cfg), "seconds": time.perf_counter() - started,
               "runs": [{k: v for k, v in r.items() if k not in ("tracker", "curve")} |
                        {"half_life": [h.get("half_life") for h in r["tracker"].history],
                         "tracked_steps": [h["step"] for h in r["tracker"].history]} for r in runs],
               "lag_sweep": sweep}
    (out / "compare.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    intro = (f"{', '.join(CELLS[c] for c in cfg.cells)} on the adding problem (T={cfg.seq_len}), same seed "
             f"({cfg.seed}), init ({cfg.init}), width {cfg.hidden_size}, {cfg.steps} steps of batch {cfg.batch_size}, "
             f"lr {cfg.lr}, clip {cfg.clip_norm}. Total {summary['seconds']:.0f} s.")
    return write_html(out / "report.html", "rnnlab compare", sections, intro)
