"""A :class:`rnnlab.train.Trainer` callback that tracks gradient flow while a model trains.

The measuring is :mod:`rnnlab.diagnostics`' (which returns data and knows nothing of training); this callback
decides when to measure, on which batch, and writes the records: training sits above diagnostics.

Every ``every`` optimizer steps (and once before the first) it measures, and appends as one JSON line to
``<run_dir>/diagnostics.jsonl`` (and keeps in :attr:`GradientTracker.history`):

* the global gradient norm before and after clipping, and per layer-direction (and per other module) norms;
* ``rho(W_hh)`` of every gate block (:func:`rnnlab.diagnostics.recurrent_spectra`);
* the gradient profile ``||dL/dh_t||``, its half-life, and the gate statistics
  (:func:`rnnlab.diagnostics.gate_stats`).

Where the profile comes from (``source``):

* ``"step"`` (default): from the tracked training step itself. The callback arms a
  :class:`rnnlab.diagnostics.Recorder` (``retain_grad=True, kernel=True``) at the end of the step before, so the
  trainer's own forward and backward fill every step's ``dL/dh_t``: no extra forward or backward. Layers on the
  compiled fused kernel keep it (its backward hands over the per-step gradients it forms anyway); other layers
  (variants, step-changing options, ``kernel=False``) run that one step on the recording reference loop. The
  batch is that step's training batch, in training mode (dropout on).
* ``"probe"``: from a fixed probe batch (the first validation batch) in eval mode, with one extra forward and
  backward (on the fused kernel too, unless ``kernel=False``); profiles of different steps are then directly
  comparable.

Step 0 (before training) and the final weights (``at_end``) always use the probe batch.

The gradients of the step are read after the optimizer step (the trainer zeroes them only at the start of the
next step), so they are the *clipped* ones; the pre-clip per-layer norms are exact for norm clipping (a common
factor) and NaN when element-wise clipping changed them. The probe profile is taken with the model in eval mode
(no dropout) with the current weights; it never touches the parameters' ``.grad``.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.base import Batch
from ..diagnostics import (GradientProfile, Recorder, Recording, gate_stats, profile_from_grads,
                           profile_from_recording, record, recurrent_spectra)
from .trainer import Callback, Trainer

__all__ = ["GradientTracker", "layer_grad_norms"]

# Any parameter of a recurrent layer-direction ends in `_l{k}` or `_l{k}_reverse` (torch's scheme, which the
# variants follow: `weight_ih_l0`, `bias_l0`, `ln_c_weight_l1_reverse`, `weight_ci_l0`, learned `h0_l0`).
_LAYER = re.compile(r"^(?:(?P<module>.*)\.)?[A-Za-z0-9_]+?_l(?P<layer>\d+)(?P<rev>_reverse)?$")


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradients grouped by recurrent layer-direction (``rnn.l0``, ``rnn.l1_reverse``) and, for
    other parameters, by their module (``head``). Parameters without a gradient are left out."""
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        m = _LAYER.match(name)
        if m:
            key = f"{m['module'] or ''}.l{m['layer']}{m['rev'] or ''}".lstrip(".")
        else:
            key = name.rsplit(".", 1)[0] if "." in name else name
        sq[key] = sq.get(key, 0.0) + float(p.grad.detach().double().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


class GradientTracker(Callback):
    """Track gradient norms, ``rho(W_hh)``, gate statistics and the gradient profile during training.

    Args:
        every: measure every ``every`` optimizer steps (and at step 0 when ``at_start``).
        profile: also measure the gradient profile and gate statistics.
        source: ``"step"`` or ``"probe"``: where tracked steps take the profile from (see the module docstring).
        at_start: measure once before training (step 0: weights as initialised, no gradient norms yet).
        at_end: measure the final weights too when the last step is not a multiple of ``every``.
        gate_rows: gate statistics on the first ``gate_rows`` batch rows only (None = all; they cost about as
            much as the recorded forward on the whole batch).
        filename: the JSON-lines file in the run folder (nothing is written without a run folder).
        kernel: let tracked steps keep the compiled fused kernel (``source="step"``); ``False`` records them on
            the reference loop instead (the same numbers, slower).
        spectra_every: measure ``rho(W_hh)`` at every ``spectra_every``-th tracked step (and always at step 0
            and at the end); records without it have no ``"rho"`` key. ``rho`` takes one eigendecomposition of
            an ``H x H`` block per gate and layer, whose cost does not shrink with the batch or the sequence: at
            ``B=32, T=100, H=128`` it costs 0.6-1.0x a training step, as much as everything else a tracked step
            measures. The default 10 keeps a tracked step within 2x an untracked one on average (1.2-1.8x);
            ``spectra_every=1`` puts ``rho`` in every record at 2.0-2.4x (docs/gradflow.md, "Cost").

    Attributes:
        history: the records, in order. profiles: ``step -> GradientProfile``. seconds: time spent measuring.

    Example:
        >>> tracker = GradientTracker(every=100)
        >>> Trainer(model, task, cfg, callbacks=[tracker], run_dir="runs/x").fit()
        >>> tracker.history[-1]["rho"]
    """

    def __init__(self, every: int = 100, *, profile: bool = True, source: str = "step", at_start: bool = True,
                 at_end: bool = True, gate_rows: int | None = 8, filename: str = "diagnostics.jsonl",
                 kernel: bool = True, spectra_every: int = 10) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"GradientTracker: every must be an int >= 1, got {every!r}")
        if not isinstance(spectra_every, int) or isinstance(spectra_every, bool) or spectra_every < 1:
            raise ValueError(f"GradientTracker: spectra_every must be an int >= 1, got {spectra_every!r}")
        if source not in ("step", "probe"):
            raise ValueError(f"GradientTracker: source must be 'step' or 'probe', got {source!r}")
        self.every, self.profile, self.source, self.filename = every, profile, source, filename
        self.kernel, self.spectra_every = kernel, spectra_every
        self._recorder: Recorder | None = None
        self.gate_rows = gate_rows
        self.at_start, self.at_end = at_start, at_end
        self.history: list[dict[str, Any]] = []
        self.profiles: dict[int, GradientProfile] = {}
        self.seconds = 0.0
        self._probe: Batch | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.profile and self._probe is None:
            self._probe = next(iter(trainer.task.val_batches()))
        if self.at_start and trainer.step == 0:
            self._measure(trainer, 0, None)
        self._arm(trainer, trainer.step)

    def _arm(self, trainer: Trainer, done: int) -> None:
        """Record the next training step if it is a tracked one (``source="step"``)."""
        if (self.profile and self.source == "step" and (done + 1) % self.every == 0
                and done + 1 <= trainer.config.train.max_steps):
            self._recorder = Recorder(trainer.model, retain_grad=True, kernel=self.kernel)
            self._recorder.start()

    def _disarm(self) -> Recording | None:
        if self._recorder is None:
            return None
        rec = self._recorder.stop()
        self._recorder = None
        return rec

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        rec = self._disarm()
        if step % self.every == 0 and not metrics.get("skipped"):
            self._measure(trainer, step, metrics, rec)
        self._arm(trainer, step)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._disarm()
        if self.at_end and (not self.history or self.history[-1]["step"] != trainer.step):
            self._measure(trainer, trainer.step, None)

    def measure_profile(self, trainer: Trainer) -> tuple[GradientProfile, list]:
        """The gradient profile and gate statistics of the probe batch with the current weights."""
        model, task = trainer.model, trainer.task
        if self._probe is None:
            self._probe = next(iter(task.val_batches()))
        x, y = self._probe.x.to(trainer.device), self._probe.y.to(trainer.device)
        was_training = model.training
        model.eval()
        try:
            with record(model, kernel=self.kernel) as rec:
                out, _ = model(x, None)
                loss = task.loss(out if task.per_step else out[-1], y)
            prof = profile_from_recording(rec, loss)
            return prof, [gate_stats(tr, rows=self.gate_rows, full=False) for tr in rec.traces]
        finally:
            model.train(was_training)

    def _measure(self, trainer: Trainer, step: int, metrics: dict[str, float] | None,
                 recording: Recording | None = None) -> None:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"step": step}
        if metrics is not None:
            post = layer_grad_norms(trainer.model)
            post_total = math.sqrt(sum(v * v for v in post.values()))
            optim = trainer.config.optim
            pre_total = float(metrics["grad_norm"])
            if not metrics.get("clipped"):
                scale = 1.0
            elif optim.clip_value > 0:
                scale = math.nan  # element-wise clipping: per-layer pre-clip norms are not recoverable
            else:
                scale = pre_total / post_total if post_total > 0 else math.nan
            rec.update({"grad_norm_pre": pre_total, "grad_norm_post": post_total,
                        "clipped": bool(metrics.get("clipped")), "loss": float(metrics["loss"]),
                        "layer_grad_norm_post": post,
                        "layer_grad_norm_pre": {k: v * scale for k, v in post.items()}})
        last = step >= trainer.config.train.max_steps
        if metrics is None or last or step % (self.every * self.spectra_every) == 0:  # step 0, the end, every k-th
            rec["rho"] = {ws.name: ws.spectral_radius
                          for ws in recurrent_spectra(trainer.model, singular_values=False, dtype=torch.float32)}
        if self.profile:
            if recording is not None and recording.traces:  # the tracked step's own forward and backward
                prof = profile_from_grads(recording, loss=float(metrics["loss"]) if metrics else math.nan)
                gates = [gate_stats(tr, rows=self.gate_rows, full=False) for tr in recording.traces]
                rec["profile_source"] = "step"
            else:
                prof, gates = self.measure_profile(trainer)
                rec["profile_source"] = "probe"
            self.profiles[step] = prof
            rec["profile_loss"] = prof.loss
            rec["profile"] = {n: row[~torch.isnan(row)].tolist() for n, row in zip(prof.names, prof.hidden)}
            rec["half_life"] = dict(zip(prof.names, prof.half_lives()))
            rec["gates"] = {g.name: g.scalars for g in gates}
        rec["seconds"] = time.perf_counter() - t0
        self.seconds += rec["seconds"]
        self.history.append(rec)
        if trainer.run_dir is not None and trainer.is_main:
            trainer.run_dir.mkdir(parents=True, exist_ok=True)
            with (Path(trainer.run_dir) / self.filename).open("a") as f:
                f.write(json.dumps(rec, default=_json_float) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = float(state.get("seconds", 0.0))


def _json_float(v: Any) -> Any:
    return float(v) if isinstance(v, (int, float)) else str(v)
