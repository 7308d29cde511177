"""The training loop: truncated BPTT, clipping, the non-finite guard, schedules, and callbacks.

The :class:`Trainer` knows nothing about the model beyond ``model(x, state) -> (output, state)`` and nothing about
the data beyond the :class:`rnnlab.data.Task` interface (batches, loss, score). Everything that writes or prints
(progress bar, metric files, TensorBoard, checkpoints, evaluation, early stopping) is a :class:`Callback`.

Truncated BPTT with forward stride ``k1`` and backprop horizon ``k2 >= k1`` (Williams & Peng 1990): the batch's
time axis is cut into windows of ``k1`` steps; the loss of each window is back-propagated through the ``k2``
most recent steps (the window and ``k2 - k1`` steps before it, recomputed from a stored state). Gradients of all
windows of a batch are accumulated and the optimizer steps once per batch, so ``k1 = k2 = T`` is exactly
full backprop through the batch. For a stateful task (a character model's streams), the state and the last
``k2 - k1`` inputs are carried into the next batch.

Example:
    >>> cfg = load_config(None, {"task.name": "sine", "task.num_samples": 64, "train.max_steps": 3})
    >>> task = build_task(cfg.task, cfg.train.seed); model = build_model(cfg.model, task)
    >>> result = Trainer(model, task, cfg).fit()        # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.base import Batch, Task
from ..errors import UserError
from ..models import detach_state
from .guard import clip_gradients, first_nonfinite_grad, first_nonfinite_output, first_nonfinite_parameter
from .schedules import LRSchedule

__all__ = ["Trainer", "Callback", "build_optimizer"]


class Callback:
    """Hooks called by :class:`Trainer`; override the ones you need. ``trainer.should_stop = True`` stops the run.

    Order per step: ``on_step_end`` for every callback, in the order given. Evaluation is itself a callback
    (:class:`rnnlab.train.callbacks.EvalCallback`) which calls ``on_eval_end`` on all callbacks.

    A callback that keeps state across a resume implements ``state_dict``/``load_state_dict`` (JSON-able dicts);
    the checkpoint stores them under the callback's :attr:`key` (its class name by default).
    """

    @property
    def key(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume)."""

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After optimizer step number ``step`` (1-based). ``metrics``: loss, grad_norm, clipped, lr, skipped,
        step_time, items (time steps x batch rows processed), ..."""

    def on_eval_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation at ``step``; ``metrics`` holds ``loss`` and the task's scores, prefixed ``val_``."""

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After the last step and the final evaluation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimizer of an :class:`rnnlab.train.config.OptimConfig` (adam, adamw or sgd)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise UserError(f"optim: unknown optimizer {cfg.optimizer!r}; expected 'adam', 'adamw' or 'sgd'")


class Trainer:
    """Train ``model`` on ``task`` as ``config`` says.

    Args:
        model: ``model(x, state) -> (output, state)`` with time-major tensors (see :mod:`rnnlab.models`).
        task: a :class:`rnnlab.data.Task`.
        config: a :class:`rnnlab.train.config.Config` (uses its ``optim`` and ``train`` sections).
        callbacks: :class:`Callback` objects (progress, logging, evaluation, checkpoints, early stopping, or your
            own, e.g. gradient tracking); :func:`rnnlab.train.callbacks.default_callbacks` builds the usual set.
        run_dir: the run folder (where callbacks write), or None.

    Attributes:
        step: optimizer steps done. should_stop: set by a callback to end :meth:`fit` after the current step.
        last_eval: the latest evaluation's metrics. skipped: list of ``(step, reason)`` of steps the guard skipped.
        stop_reason: why :meth:`fit` stopped early on its own (``train.max_bad_steps`` consecutive skipped
            steps), or None.
        rank, world_size: 0 and 1 (data-parallel runs set them); :attr:`is_main` says whether this process writes.

    Data parallelism hooks: ``task.train_batch(step)`` is the global batch, a pure function of the step, so a rank
    can take its rows (e.g. ``rank::world_size``) in :meth:`train_step` with no sampler state; every file is
    written by a callback that checks :attr:`is_main`.
    """

    def __init__(self, model: nn.Module, task: Task, config, callbacks: list[Callback] | tuple = (),
                 run_dir: str | Path | None = None) -> None:
        self.model, self.task, self.config = model, task, config
        self.callbacks: list[Callback] = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        tc = config.train
        if tc.max_steps < 0:
            raise UserError(f"train: max_steps must be >= 0, got {tc.max_steps}")
        if tc.bptt_stride < 0 or tc.bptt_horizon < 0:
            raise UserError(f"train: bptt_stride and bptt_horizon must be >= 0, got {tc.bptt_stride} and "
                            f"{tc.bptt_horizon}")
        if tc.bptt_horizon and tc.bptt_horizon < (tc.bptt_stride or config.task.seq_len):
            raise UserError(f"train: bptt_horizon (k2={tc.bptt_horizon}) must be >= bptt_stride "
                            f"(k1={tc.bptt_stride or config.task.seq_len})")
        self.device = torch.device(tc.device)
        self.model.to(self.device)
        self.optimizer = build_optimizer(model, config.optim)
        self.schedule = LRSchedule(config.optim, tc.max_steps)
        self.step = 0
        self.should_stop = False
        self.last_eval: dict[str, float] = {}
        self.skipped: list[tuple[int, str]] = []
        self.stop_reason: str | None = None
        self._bad_streak = 0  # consecutive skipped steps
        self.rank, self.world_size = 0, 1
        self.run_lock: Any = None  # the run folder's lock while this trainer writes there (set by setup_run)
        self.train_time = 0.0  # seconds spent in fit(), summed over resumes
        # Carried across batches of a stateful task: the detached state at the start of `_ctx_x`, and the last
        # k2 - k1 inputs (so the first window of the next batch can reach back k2 steps).
        self._state = None
        self._ctx_x: Tensor | None = None

    # -- public API ----------------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``, ``max_time`` or a callback's stop; returns the final metrics."""
        tc = self.config.train
        self.model.train()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        start = time.perf_counter() - self.train_time
        while self.step < tc.max_steps and not self.should_stop:
            if tc.max_time and time.perf_counter() - start >= tc.max_time:
                break
            metrics = self.train_step(self.task.train_batch(self.step))
            self.step += 1
            self.train_time = time.perf_counter() - start
            self._bad_streak = self._bad_streak + 1 if metrics["skipped"] else 0
            if tc.max_bad_steps and self._bad_streak >= tc.max_bad_steps:
                # Skipping cannot help any more (diverged weights, or data that is bad from here on): stop, and
                # keep the last checkpoint, which skipped steps never made worse.
                self.stop_reason = (f"stopped after {self._bad_streak} consecutive non-finite steps (steps "
                                    f"{self.step - self._bad_streak + 1}-{self.step}); last: {self.skipped[-1][1]}")
                self.should_stop = True
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, metrics)
        self.train_time = time.perf_counter() - start
        result: dict[str, Any] = {"step": self.step, "train_time": self.train_time, "skipped_steps": len(self.skipped),
                  **{k: v for k, v in self.last_eval.items() if k != "final"}}
        if self.stop_reason:
            result["stopped"] = self.stop_reason
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on one batch (all its TBPTT windows); returns the step's metrics."""
        t0 = time.perf_counter()
        task = self.task
        x, y = batch.x.to(self.device), batch.y.to(self.device)
        T = x.size(0)
        k1 = min(self.config.train.bptt_stride or T, T)
        k2 = max(self.config.train.bptt_horizon or k1, k1)
        if batch.reset or not task.stateful:
            self._state, self._ctx_x = None, None
        saved_state, saved_ctx = self._state, self._ctx_x
        lr = self.schedule.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)

        xs = x if self._ctx_x is None else torch.cat([self._ctx_x, x])  # (c + T, B, ...)
        c = xs.size(0) - T
        ends = [c + e for e in range(k1, T, k1)] + [c + T]
        s_pos, s_state = 0, self._state
        prev_end, total = c, 0.0
        for w, end in enumerate(ends):
            last = w == len(ends) - 1
            nxt = ends[w + 1] - k2 if not last else end - (k2 - k1)
            nxt = min(max(nxt, s_pos), end)
            with torch.set_grad_enabled(task.per_step or last):
                # The state is split at `nxt` (where the next window's horizon starts) and a detached copy kept:
                # detaching cuts the graph there, so memory and backward cost stay bounded by k2 steps instead
                # of growing with everything seen since the stream began (the "repackage_hidden" of
                # pytorch/examples' word_language_model).
                if s_pos < nxt < end:
                    out_a, st = self.model(xs[s_pos:nxt], s_state)
                    next_state = detach_state(st)
                    out_b, _ = self.model(xs[nxt:end], st)
                    out = torch.cat([out_a, out_b])  # (end - s_pos, B, O)
                elif nxt == end:
                    out, st = self.model(xs[s_pos:end], s_state)
                    next_state = detach_state(st)
                else:  # nxt == s_pos: the next horizon starts where this window starts
                    next_state = detach_state(s_state)
                    out, _ = self.model(xs[s_pos:end], s_state)
                if task.per_step:
                    # Weight by the window's share of the batch, so the summed loss is the batch mean.
                    loss = task.loss(out[prev_end - s_pos:], y[prev_end - c:end - c]) * ((end - prev_end) / T)
                elif last:
                    loss = task.loss(out[-1], y)
                else:
                    loss = None
            if loss is not None:
                if not torch.isfinite(loss):
                    where = self._locate_forward(xs[s_pos:end], s_state)
                    return self._skip(f"loss is {float(loss.detach())}; first non-finite value at {where}", t0,
                                      saved_state, saved_ctx, T, x.size(1))
                loss.backward()
                total += float(loss.detach())
            s_pos, s_state, prev_end = nxt, next_state, end

        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm, clipped = clip_gradients(params, self.config.optim.clip_norm, self.config.optim.clip_value)
        if not math.isfinite(grad_norm):
            name = first_nonfinite_grad(self.model)
            # An Inf input can give a finite loss (saturating gates) and still a NaN gradient (inf * 0): blame the data.
            source = "first non-finite value at the input batch; " if _has_nonfinite(xs) else ""
            return self._skip(f"gradient norm is {grad_norm}; {source}first non-finite gradient (in backward "
                              f"order) at parameter {name}", t0, saved_state, saved_ctx, T, x.size(1))
        self.optimizer.step()
        if task.stateful:
            self._state = s_state
            self._ctx_x = xs[s_pos:].detach() if s_pos < xs.size(0) else None
        return {"loss": total, "grad_norm": grad_norm, "clipped": float(clipped), "lr": lr, "skipped": 0.0,
                "step_time": time.perf_counter() - t0, "items": float(T * x.size(1))}

    @torch.no_grad()
    def evaluate(self, max_batches: int = 0) -> dict[str, float]:
        """Mean validation loss (and the task's scores) over the first ``max_batches`` batches (0 = all).

        The model is put in eval mode (no dropout) and restored. For a stateful task the state is carried across
        validation batches as in training. Returns ``{"val_loss": ..., "val_<score>": ...}``.
        """
        was_training = self.model.training
        self.model.eval()
        state = None
        loss_sum, count = 0.0, 0
        sums: dict[str, list[float]] = {}
        for k, batch in enumerate(self.task.val_batches()):
            if max_batches and k >= max_batches:
                break
            x, y = batch.x.to(self.device), batch.y.to(self.device)
            if batch.reset or not self.task.stateful:
                state = None
            out, state = self.model(x, state)
            if not self.task.per_step:
                out = out[-1]
            n = y.numel()
            loss_sum += float(self.task.loss(out, y)) * n
            count += n
            for name, (s, m) in self.task.score(out, y).items():
                acc = sums.setdefault(name, [0.0, 0])
                acc[0] += s
                acc[1] += m
        self.model.train(was_training)
        if count == 0:
            raise UserError(f"{self.task.name}: the validation split is empty")
        result = {"val_loss": loss_sum / count}
        result.update({f"val_{name}": s / max(m, 1) for name, (s, m) in sums.items()})
        return result

    def emit_eval(self, metrics: dict[str, float]) -> None:
        """Record an evaluation, feed the plateau schedule, and call every callback's ``on_eval_end``."""
        self.last_eval = dict(metrics)
        self.schedule.on_eval(metrics["val_loss"])
        for cb in self.callbacks:
            cb.on_eval_end(self, self.step, metrics)

    # -- state for checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs besides the config: tensors and JSON-able values, mixed (see checkpoint)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "train_time": self.train_time,
            "last_eval": self.last_eval,
            "skipped": [list(s) for s in self.skipped],
            "bad_streak": self._bad_streak,
            "rng": {"torch": torch.get_rng_state(), **{f"cuda{i}": s for i, s in enumerate(cuda)}},
            "carry": {"state": self._state, "ctx_x": self._ctx_x},
            "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:  # a checkpoint of another model (other cell, size or layers)
            detail = " ".join(str(err).split())
            raise UserError(f"checkpoint: the saved state does not fit this model ({detail[:300]})") from None
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.train_time = float(state["train_time"])
        self.last_eval = dict(state["last_eval"])
        self.skipped = [(int(s), str(r)) for s, r in state["skipped"]]
        self._bad_streak = int(state.get("bad_streak", 0))  # absent in checkpoints written before it existed
        torch.set_rng_state(state["rng"]["torch"])
        cuda = [state["rng"][k] for k in sorted(state["rng"]) if k.startswith("cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        carry = state["carry"]
        self._state = carry["state"]
        self._ctx_x = carry["ctx_x"]
        for cb in self.callbacks:
            if cb.key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][cb.key])

    # -- internals -----------------------------------------------------------------------------------------

    def _locate_forward(self, x: Tensor, state) -> str:
        if _has_nonfinite(x):
            return "the input batch"
        name = first_nonfinite_parameter(self.model)
        if name is not None:
            return f"parameter {name}"
        where = first_nonfinite_output(self.model, lambda: self.model(x, state))
        return f"output of module {where}" if where else "the loss function"

    def _skip(self, reason: str, t0: float, saved_state, saved_ctx, T: int, B: int) -> dict[str, float]:
        """Skip this step: no update, gradients cleared, the carried state left as it was before the batch."""
        self.optimizer.zero_grad(set_to_none=True)
        self._state, self._ctx_x = saved_state, saved_ctx
        self.skipped.append((self.step + 1, reason))
        return {"loss": float("nan"), "grad_norm": float("nan"), "clipped": 0.0,
                "lr": self.schedule.lr_at(self.step), "skipped": 1.0, "step_time": time.perf_counter() - t0, "items": float(T * B)}


def _has_nonfinite(x: Tensor) -> bool:
    return x.is_floating_point() and not bool(torch.isfinite(x).all())
