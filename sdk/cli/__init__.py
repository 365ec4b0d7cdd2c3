"""`finetune`: the command line. Each group of commands is a module that registers on one typer app
(sdk.cli.app): specs, runs, tools, sweeps, serving. A command parses, calls the SDK and prints; start-up
imports only typer, and each command imports what it needs."""

from __future__ import annotations

import importlib
import sys

from sdk.cli.app import _console, app

__all__ = ["app", "main"]

# each registers its commands, in --help's order
for _group in ("specs", "importing", "runs", "reproduce", "sweeps", "tools", "exporting", "serving", "api"):
    importlib.import_module(f"sdk.cli.{_group}")


def main() -> None:
    """Console-script entry: user errors print one clean message and exit 2, never a traceback."""
    from sdk.core.errors import FinetuneError

    try:
        app()
    except FinetuneError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
