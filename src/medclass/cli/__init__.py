"""The ``medclass`` command line: Typer commands (:mod:`~medclass.cli.app`) that check their arguments
(:mod:`~medclass.cli.preflight`) and call the workflows of :mod:`medclass.workflows`; ``medclass runs``
(:mod:`~medclass.cli.runs_table`)."""

from .app import app, main

__all__ = ["app", "main"]
