"""The ``rnnlab gradflow`` report: gradient flow at initialisation for chosen cells and init presets.

For each (cell, init) pair a model (rnnlab layer + linear read-out of the last step) is built from the same seed,
so two inits of one cell start from the same torch-default weights; one adding-problem batch is run through
:func:`rnnlab.diagnostics.analyse`; the page shows the gradient heatmap over (time, layer), the profile curves of
all pairs on one plot, the Jacobian-product spectra, the ``W_hh`` eigenvalues and the gate statistics.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..diagnostics import Diagnosis, analyse
from ..diagnostics.tasks import CELLS, LastStepRegressor, adding_batch, cell_name
from ..errors import UserError
from ..init import INIT_PRESETS, apply_init
from .figures import plot_gates, plot_heatmap, plot_jacobian_spectra, plot_profiles, plot_weight_spectra
from .html import Section, write_html

__all__ = ["GradflowConfig", "run_gradflow", "summary_row", "SUMMARY_HEADER"]


@dataclass
class GradflowConfig:
    """What ``rnnlab gradflow`` measures (each field is a CLI flag of the same name)."""

    cells: list[str] = field(default_factory=lambda: ["rnn_tanh", "lstm", "gru"])  # or rnn (= rnn_tanh), rnn_relu
    inits: list[str] = field(default_factory=lambda: ["torch"])  # presets of rnnlab.init
    task: str = "adding"  # only the adding problem (the long-range probe)
    seq_len: int = 100  # T: the marked numbers sit up to T steps before the loss
    hidden_size: int = 64
    num_layers: int = 2
    batch_size: int = 32
    rows: int = 2  # batch rows used for the Jacobian products (their cost grows with rows * T * S^2)
    t_max: float | None = None  # chrono's T_max; None = seq_len
    seed: int = 0
    # Extra "cell:init" pairs measured beside cells x inits. None = the lesson of the guide (section 3): when the
    # report runs torch's init with an LSTM, also the LSTM with forget-gate bias 1 and with chrono init, because at
    # torch's init the gated cells' gradients decay almost as fast as the tanh RNN's. [] = no extra pairs.
    contrast: list[str] | None = None

    def validate(self) -> None:
        """Raises UserError naming the bad field, expected vs got."""
        bad_cells = [c for c in self.cells if c not in CELLS and c != "rnn"]
        if not self.cells or bad_cells:
            raise UserError(f"gradflow: --cells expects a comma list of {list(CELLS)}, got {self.cells}")
        self.cells = [cell_name(c) for c in self.cells]
        bad_inits = [i for i in self.inits if i not in INIT_PRESETS]
        if not self.inits or bad_inits:
            raise UserError(f"gradflow: --inits expects a comma list of {list(INIT_PRESETS)}, got {self.inits}")
        if self.task != "adding":
            raise UserError(f"gradflow: --task supports 'adding', got {self.task!r}")
        for name in ("seq_len", "hidden_size", "num_layers", "batch_size", "rows"):
            if getattr(self, name) < 1:
                raise UserError(f"gradflow: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise UserError(f"gradflow: --seq-len must be >= 2 for the adding problem, got {self.seq_len}")
        if self.contrast is None:
            self.contrast = (["lstm:forget_bias", "lstm:chrono"] if self.inits == ["torch"] and "lstm" in self.cells
                             else [])
        for pair in self.contrast:
            cell, _, init = pair.partition(":")
            if cell_name_or_none(cell) is None or init not in INIT_PRESETS:
                raise UserError(f"gradflow: --contrast expects comma-separated cell:init pairs with a cell of "
                                f"{list(CELLS)} and an init of {list(INIT_PRESETS)}, got {pair!r}")
        self.contrast = [f"{cell_name(p.partition(':')[0])}:{p.partition(':')[2]}" for p in self.contrast]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (cell, init) the report measures: cells x inits, then the contrast pairs not already there."""
        out = [(cell, init) for cell in self.cells for init in self.inits]
        for pair in self.contrast or []:
            cell, _, init = pair.partition(":")
            if (cell, init) not in out:
                out.append((cell, init))
        return out


def cell_name_or_none(cell: str) -> str | None:
    try:
        return cell_name(cell)
    except ValueError:
        return None


SUMMARY_HEADER = ["cell", "init", "layer", "loss", "half-life h (steps)", "||dL/dh_0|| / ||dL/dh_T||",
                  "rho(W_hh) max", "sigma_max(ds_T/ds_0)", "sigmoid sat.", "tanh sat.", "mean f / z"]


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.3g}")


def summary_row(cell: str, init: str, diag: Diagnosis, n: int) -> list[str]:
    """One table row for layer-direction ``n`` of a diagnosis."""
    prof = diag.profile
    g = prof.by_distance(n)
    gs = diag.gates[n].scalars
    return [cell, init, prof.names[n], f"{prof.loss:.4f}", _fmt(prof.half_lives()[n]),
            _fmt(float(g[-1] / g[0]) if float(g[0]) > 0 else math.nan),
            _fmt(max(diag.weights[n].spectral_radius.values())),
            _fmt(float(diag.jacobians[n].singular_values[-1, :, 0].mean())),
            _na(gs.get("sigmoid_sat")), _na(gs.get("tanh_sat")), _na(gs.get("f_mean", gs.get("z_mean")))]


def _na(v: float | None) -> str:
    """A statistic the cell does not have (no sigmoid gates in an Elman RNN) shows as "-"."""
    return "-" if v is None else _fmt(v)


def lesson(half_lives: dict[tuple[str, str], float], hidden_size: int) -> str:
    """The sentences that open the report: what the measured half-lives (last layer) say, and why at torch's init
    the gated cells look like the tanh RNN. Empty when the report has no torch-init LSTM to talk about."""
    hl = {k: _fmt(v) for k, v in half_lives.items()}
    if ("lstm", "torch") not in hl:
        return ""
    at_init = ", ".join(f"{CELLS[c]} {hl[(c, 'torch')]}" for c in ("rnn_tanh", "lstm", "gru") if (c, "torch") in hl)
    bound = 1 / math.sqrt(hidden_size)
    text = (f"At torch's default init the gradient half-lives (steps, first layer) are {at_init}: the gates "
            f"change little at step 0, because torch draws every weight and bias, the forget gate's included, from "
            f"U(-{bound:.3g}, {bound:.3g}), so every forget gate starts near sigmoid(0) = 0.5: the cell path "
            f"dc_t/dc_(t-1) = diag(f_t) scales the gradient by about 0.5 per step, and with the paths through h "
            f"the LSTM's gradient decays about as fast as the tanh RNN's, whose W_hh has a spectral radius near "
            f"0.6. What the LSTM adds is a path whose decay is a gate it can learn "
            f"to open, or that an init can open from the start: ")
    opened = [f"forget-gate bias 1 ({hl[('lstm', 'forget_bias')]} steps)" if ("lstm", "forget_bias") in hl else "",
              f"chrono init ({hl[('lstm', 'chrono')]} steps)" if ("lstm", "chrono") in hl else ""]
    opened = [o for o in opened if o]
    text += ("the LSTM with " + " and with ".join(opened) + ". " if opened else
             "rerun with --inits torch,forget_bias,chrono to see it. ")
    return text + "(docs/guide.md, section 3.)"


def run_gradflow(cfg: GradflowConfig, out: str | Path) -> Path:
    """Measure every (cell, init) pair of ``cfg`` and write ``report.html``, PNGs, ``config.json`` and
    ``diagnostics.json`` into ``out``. Returns the HTML path.

    Raises:
        UserError: invalid config, or an init that does not apply to a cell (e.g. ``irnn`` on an LSTM).
    """
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    x, y = adding_batch(cfg.seq_len, cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    results: dict[str, Diagnosis] = {}
    sections: list[Section] = []
    table = [SUMMARY_HEADER]
    started = time.perf_counter()
    half_lives: dict[tuple[str, str], float] = {}
    for cell, init in cfg.pairs():
        torch.manual_seed(cfg.seed)  # same base weights for every init of a cell
        model = LastStepRegressor(cell, 2, cfg.hidden_size, cfg.num_layers)
        try:
            apply_init(model, init, t_max=cfg.t_max or float(max(cfg.seq_len, 3)),
                       generator=torch.Generator().manual_seed(cfg.seed))
        except ValueError as err:
            raise UserError(str(err)) from err
        diag = analyse(model, lambda: ((model(x) - y) ** 2).mean(), rows=cfg.rows)
        key = f"{cell}-{init}"
        results[key] = diag
        half_lives[(cell, init)] = diag.profile.half_lives()[0]  # the first layer, as the table's first row
        table.extend(summary_row(cell, init, diag, n) for n in range(len(diag.profile.names)))
        images = [(plot_heatmap(diag.profile, out / f"{key}_heatmap_h.png",
                                f"{CELLS[cell]}, init {init}: log10 ||dL/dh_t||").name,
                   "log10 of the total gradient reaching each hidden state, per layer and step")]
        if cell == "lstm":
            images.append((plot_heatmap(diag.profile, out / f"{key}_heatmap_c.png",
                                        f"LSTM, init {init}: log10 ||dL/dc_t||", which="cell").name,
                           "the same for the cell state c_t (the additive path)"))
        images.append((plot_jacobian_spectra(dict(zip(diag.profile.names, diag.jacobians)),
                                             out / f"{key}_jacobian.png", f"{CELLS[cell]}, init {init}").name,
                       "singular values of the Jacobian product ds_T/ds_{T-k} (state s = h, or (h, c))"))
        images.append((plot_weight_spectra(diag.weights, out / f"{key}_whh.png").name,
                       "eigenvalues of each gate block of W_hh, with the unit circle"))
        images.append((plot_gates(diag.gates, out / f"{key}_gates.png").name, "gate statistics per step"))
        sections.append(Section(f"{CELLS[cell]}, init {init}", images=images))
    profile_png = plot_profiles({k: d.profile for k, d in results.items()}, out / "profiles.png",
                                f"Gradient norm vs distance from the loss (adding problem, T={cfg.seq_len})")
    (out / "diagnostics.json").write_text(json.dumps({k: d.to_dict() for k, d in results.items()}) + "\n")
    intro = (f"Gradient flow at initialisation (step 0) on one adding-problem batch: T={cfg.seq_len}, "
             f"B={cfg.batch_size}, hidden={cfg.hidden_size}, layers={cfg.num_layers}, seed={cfg.seed}. "
             f"Loss = MSE of the last step's read-out; every gradient is the total one through the recurrence, "
             f"computed on the reference loop with the model's own weights. Measured in "
             f"{time.perf_counter() - started:.1f} s.")
    head = Section("Summary", text="half-life: steps for ||dL/dh|| to halve (log-linear fit over the whole "
                   "sequence, see rnnlab.diagnostics.half_life); sat.: fraction of saturated units "
                   "(sigmoid < 0.1 or > 0.9, |tanh| > 0.9).", table=table,
                   images=[(profile_png.name, "all cells and inits: gradient norm vs steps back from the loss, "
                                              "normalised at the loss (solid h, dashed c)")])
    first = lesson(half_lives, cfg.hidden_size)
    opening = [Section("What this shows", text=first)] if first else []
    return write_html(out / "report.html", "rnnlab gradflow", [*opening, head, *sections], intro)
