"""The ``rnnlab`` command line: parses flags, calls the library, and nothing else.

Each subcommand lives in its own module under :mod:`rnnlab.commands` and exposes ``register(subparsers)``,
which adds its parser and sets ``func=run`` with ``run(args) -> int``. Add a new command by listing its module
in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .errors import UserError

# Module names under rnnlab.commands, in the order `rnnlab --help` lists them.
COMMANDS: list[str] = ["train", "eval", "generate", "forecast", "gradflow", "compare", "export", "bench"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line, exit status 2 (argparse prints the whole usage block first,
    dozens of lines for ``train``, which buries the one line that matters). Subparsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # Library warnings that name the package themselves ("rnnlab: no C++ compiler ...") get the prefix once.
    return f"rnnlab: warning: {str(message).removeprefix('rnnlab: ')}\n"


def _describe(err: OSError | MemoryError) -> str:
    """One line for an error of the operating system: what failed, on which file, and why."""
    if isinstance(err, MemoryError):
        return "out of memory (the run needs more than this machine has: reduce the model, the batch or the data)"
    where = f" {err.filename}" if err.filename else ""
    return f"cannot access{where}: {err.strerror or err}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnlab",
        description="Recurrent neural networks from first principles: train, inspect and benchmark RNN/LSTM/GRU.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"rnnlab.commands.{name}").register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)  # for errors found after parsing
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rnnlab`` console script. Returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if unknown:  # argparse would blame the top-level parser and point to `rnnlab --help`
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a warning is one line too (e.g. a checkpoint fallback)
    debug = os.environ.get("RNNLAB_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        # User errors are one line and exit 2 (argparse's convention), never a traceback.
        print(f"rnnlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # A command may say what was kept and how to go on (train: the checkpoint's step and the resume command).
        print(f"rnnlab {args.command}: interrupted" + (f"; {err}" if str(err) else ""), file=sys.stderr)
        return 130
    except (OSError, MemoryError) as err:
        # The machine refused (read-only folder, full disk, permissions, memory): the user's to fix, so one line
        # and exit 2 as for any user error; RNNLAB_DEBUG=1 shows where.
        if debug:
            raise
        print(f"rnnlab {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: one line that says how to see the traceback
        if debug:
            raise
        detail = " ".join(str(err).split())[:300]
        print(f"rnnlab {args.command}: internal error: {type(err).__name__}: {detail} (a bug in rnnlab; run again "
              f"with RNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
