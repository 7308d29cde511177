"""``rnnlab export``: write a trained run's model to ONNX and check it with onnxruntime.

Reads the checkpoint of a run folder written by ``rnnlab train``, exports the model (inputs ``input, h_0[, c_0]``,
outputs ``output, h_n[, c_n]``, dynamic batch, the sequence length fixed at ``--seq-len``), then runs the file
with onnxruntime on a random batch and compares it with the torch model; a difference above ``--tolerance``
is an error. Beside the ``.onnx`` file it writes ``<name>.json``: the graph's names and shapes and the task's
info (vocabulary or scaler) a runtime needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained run's model to ONNX (needs the [export] extra), checked with onnxruntime",
        description=__doc__.split("\n\n")[0].replace("``", "") + " Needs: pip install 'rnnlab[export]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `rnnlab train` (with its checkpoint)")
    p.add_argument("--out", metavar="FILE", default=None, help="the .onnx file to write (default: RUN_DIR/model.onnx)")
    p.add_argument("--seq-len", type=int, default=None, metavar="N",
                   help="time steps of the exported graph, fixed (default: the run's task.seq_len; use 1 for a "
                        "step-at-a-time generator)")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset version (default: the exporter's)")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="X",
                   help="largest accepted |onnxruntime - torch| difference in the check")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import example_inputs, export_onnx, verify_onnx
    from ..train.run import load_run
    from ..train.runfolder import atomic_write, lock_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    cfg, model, info = load_run(run_dir)
    seq_len = args.seq_len if args.seq_len is not None else cfg.task.seq_len
    if seq_len < 1:
        raise UserError(f"--seq-len must be >= 1, got {seq_len}")
    out = Path(args.out) if args.out else run_dir / "model.onnx"
    if out.resolve().parent == run_dir.resolve():  # writes into the run folder: not while another command writes there
        _lock = lock_run(run_dir, "export")  # noqa: F841 - held until this function returns
    exported = export_onnx(model, out, seq_len=seq_len, opset_version=args.opset, seed=cfg.train.seed)
    layer = next(m for m in model.modules() if hasattr(m, "mode"))
    shapes = {name: list(t.shape) for name, t in zip(exported.input_names, exported.example)}
    meta = {
        "format": "rnnlab-onnx-1",
        "onnx": out.name,
        "inputs": exported.input_names,
        "outputs": exported.output_names,
        "example_shapes": shapes,
        "seq_len": seq_len,
        "batch_axis": {"input": exported.batch_axis, "states": 1},
        "cell": cfg.model.cell,
        "mode": layer.mode,
        "task": info,
    }
    atomic_write(out.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    print(f"rnnlab export: wrote {out} ({out.stat().st_size:,} bytes) and {out.with_suffix('.json').name}; "
          f"inputs {', '.join(exported.input_names)}, sequence length {seq_len}, any batch size", file=sys.stderr)
    if args.no_verify:
        return 0
    import torch

    # A batch size other than the recorded one, so the check also covers the dynamic batch axis.
    inputs = example_inputs(model, seq_len, 3, torch.Generator().manual_seed(cfg.train.seed + 1))
    diff = verify_onnx(exported, model, inputs)
    if not diff <= args.tolerance:
        raise UserError(f"onnxruntime output differs from torch by {diff:.3g} > tolerance {args.tolerance:g}")
    print(f"verified: max |onnxruntime - torch| = {diff:.2e} on a batch of 3 (tolerance {args.tolerance:g})")
    return 0
