"""``rnnlab generate RUN_DIR``: sample text from a trained character model (temperature, top-k, prime, length)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="sample text from a trained character model",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of a character model (shakespeare or text task)")
    p.add_argument("--prime", default=None,
                   help="text fed to the model before sampling (default: a newline, or a character of the "
                        "model's vocabulary when its text had none)")
    p.add_argument("--length", type=int, default=500, metavar="N", help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="softmax temperature: < 1 is more conservative, > 1 more varied")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample only among the K most likely characters (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--accept-changed-data", action="store_true",
                   help="use the run's data even if it changed since the run was trained (refused otherwise)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.text import default_prime
    from ..errors import UserError
    from ..models import generate_text
    from ..train.preflight import locate_data
    from ..train.run import load_run

    if args.length < 0:
        raise UserError(f"--length must be >= 0, got {args.length}")
    _, model, info = load_run(args.run_dir)
    # The text is not read (the vocabulary is in task.json), but a changed text means a model of other data.
    locate_data(args.run_dir, info, accept_changed=args.accept_changed_data, required=False)
    if info["kind"] != "lm" or not info.get("vocab"):
        raise UserError(f"{args.run_dir} is a {info['name']} run ({info['kind']}), not a character model")
    gen = torch.Generator().manual_seed(args.seed)
    prime = args.prime if args.prime is not None else default_prime(info["vocab"])
    text = generate_text(model, info["vocab"], prime=prime, length=args.length,
                         temperature=args.temperature, top_k=args.top_k, generator=gen)
    print(prime + text)
    return 0
