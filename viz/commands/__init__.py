"""Subcommands of the ``landscape`` CLI, one module each (see viz.cli)."""
