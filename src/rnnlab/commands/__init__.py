"""Subcommands of the ``rnnlab`` CLI, one module each (see :mod:`rnnlab.cli`)."""
