"""Config fields as command-line flags: one flag per field (``--hidden-size`` for ``model.hidden_size``), with the
field's help text, so the CLI and the TOML files can never drift apart."""

from __future__ import annotations

import argparse
import typing
from typing import Any

from .config import Config, field_flag, iter_fields, optional_base

__all__ = ["add_config_flags", "config_overrides"]

_META = {int: "N", float: "X", str: "STR", list: "ITEM"}


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """Add a flag per config field (of ``sections``, or all), grouped by section; defaults are left unset so that
    only the flags the user typed override the TOML file."""
    defaults = Config()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section, f in iter_fields():
        if sections is not None and section not in sections:
            continue
        group = groups.get(section) or groups.setdefault(
            section, parser.add_argument_group(f"{section} options ([{section}] in a TOML config)"))
        kind = typing.get_type_hints(type(getattr(defaults, section)))[f.name]
        kind = optional_base(kind) or kind  # `float | None`: the flag sets a value; leaving it out keeps it unset
        default = getattr(getattr(defaults, section), f.name)
        dest = f"cfg__{section}__{f.name}"
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if kind is bool:
            group.add_argument(field_flag(f), dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif kind is list:
            group.add_argument(field_flag(f), dest=dest, nargs="*", metavar=_META[list], default=None,
                               help=help_text)
        else:
            group.add_argument(field_flag(f), dest=dest, type=kind, metavar=_META[kind], default=None,
                               help=help_text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"section.field": value}`` for every config flag the user gave."""
    out = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            out[f"{section}.{name}"] = value
    return out
