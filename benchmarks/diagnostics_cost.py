"""Cost of rnnlab's gradient-flow diagnostics relative to a plain training step, measured in the same run.

For each cell, on one adding-problem batch (T steps, B rows, H units, a linear read-out of the last step):

* ``plain``: one training step with the default backend: forward, backward, clip, Adam step.
* ``plain_reference``: the same step on the reference loop (``backend="reference"``), for scale.
* ``tracked``: a training step tracked by :class:`rnnlab.train.tracking.GradientTracker` with
  ``source="step"`` (the default): the step's own forward and backward on the fused kernel, which hands over
  ``dL/dh_t`` of every step (``record(..., retain_grad=True, kernel=True)``), then clip and Adam as in ``plain``,
  plus the profile read-out, scalar gate statistics (8 rows), ``rho(W_hh)`` (float32) and per-layer gradient
  norms.
* ``tracked_no_rho``: ``tracked`` without ``rho(W_hh)`` (a tracked step that ``spectra_every > 1`` skips).
* ``tracked_reference``: ``tracked`` with ``kernel=False``: the tracked step on the recording reference loop.
* ``probe``: what ``source="probe"`` adds to a plain step: one extra recorded forward and backward (fused kernel)
  on a probe batch, gates, ``rho(W_hh)``, per-layer norms (reported as plain + probe).
* ``analyse``: :func:`rnnlab.diagnostics.analyse` with Jacobian-product spectra (4 rows), the ``gradflow`` report's
  measurement (not done during training).

Reported: median wall and process-CPU milliseconds over interleaved repeats (after warm-up), the spread (min..max), and the
ratio of medians to ``plain``. One thread (``torch.set_num_threads(1)``).

    python benchmarks/diagnostics_cost.py [--seq-len 100] [--hidden-size 128] [--batch-size 32] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rnnlab.diagnostics import (analyse, gate_stats, profile_from_grads, profile_from_recording, record,
                                recurrent_spectra)
from rnnlab.diagnostics.tasks import LastStepRegressor, adding_batch
from rnnlab.train.tracking import layer_grad_norms
from rnnlab.kernels import get_backend


def timed(steps, warmup: int, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU milliseconds of every step function, in interleaved rounds (so that a change of machine load
    during the run affects every row alike)."""
    for _ in range(warmup):
        for _, fn in steps:
            fn()
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in steps}
    for r in range(repeats):
        for name, fn in (steps if r % 2 == 0 else steps[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            out[name][0].append(1e3 * (time.perf_counter() - w0))
            out[name][1].append(1e3 * (time.process_time() - c0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-analyse", action="store_true", help="leave out the (slow) analyse row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = adding_batch(args.seq_len, args.batch_size, torch.Generator().manual_seed(0))
    print(f"T={args.seq_len} B={args.batch_size} H={args.hidden_size}, default backend {get_backend()!r}, "
          f"1 thread, {args.repeats} repeats after {args.warmup} warm-up; ms median [min..max], ratio of medians")
    for cell in ("rnn_tanh", "lstm", "gru"):
        model = LastStepRegressor(cell, 2, args.hidden_size)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = lambda: F.mse_loss(model(x), y)  # noqa: E731

        def plain():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        def tracked(kernel: bool = True, rho: bool = True):
            opt.zero_grad(set_to_none=True)
            with record(model, retain_grad=True, kernel=kernel) as rec:
                loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            profile_from_grads(rec, float(loss.detach()))
            [gate_stats(tr, rows=8, full=False) for tr in rec.traces]
            if rho:
                recurrent_spectra(model, singular_values=False, dtype=torch.float32)
            layer_grad_norms(model)

        def plain_reference():
            model.rnn.backend = "reference"
            plain()
            model.rnn.backend = None

        def probe():
            plain()
            layer_grad_norms(model)
            recurrent_spectra(model, singular_values=False, dtype=torch.float32)
            with record(model, kernel=True) as rec:
                loss = loss_fn()
            profile_from_recording(rec, loss)
            [gate_stats(tr, rows=8, full=False) for tr in rec.traces]

        def full():
            analyse(model, loss_fn, rows=4)

        steps = (("plain", plain), ("plain_reference", plain_reference), ("tracked", tracked),
                 ("tracked_no_rho", lambda: tracked(rho=False)), ("tracked_reference", lambda: tracked(kernel=False)),
                 ("probe", probe), ("analyse", full))
        if args.no_analyse:
            steps = steps[:-1]
        results = timed(steps, args.warmup, args.repeats)
        base_w, base_c = statistics.median(results["plain"][0]), statistics.median(results["plain"][1])
        for name, (wall, cpu) in results.items():
            mw, mc = statistics.median(wall), statistics.median(cpu)
            print(f"{cell:9s} {name:17s} wall {mw:8.1f} [{min(wall):.1f}..{max(wall):.1f}]  cpu {mc:8.1f}  "
                  f"ratio wall {mw / base_w:5.2f}  cpu {mc / base_c:5.2f}")


if __name__ == "__main__":
    main()
