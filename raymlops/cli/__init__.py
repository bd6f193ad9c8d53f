"""The `raymlops` command: one module per command group; each parses, calls the library and prints.

Exit codes: 0 ok · 1 unexpected failure · 2 bad usage or config · 3 blocked by a gate.
"""

from __future__ import annotations

import os
import traceback

import typer

from raymlops.cli import config, control, data, features, gc, init, pipeline, schema, serve  # noqa: F401 - they register commands
from raymlops.cli._common import app, say
from raymlops.errors import RaymlopsError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and turn raymlops errors into messages and exit codes."""
    import logging

    # Schema migrations and the like are not news; MLflow sets its own level when imported, hence the env var.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        # standalone_mode=False: click hands us exit codes and errors instead of calling sys.exit itself.
        # prog_name: also under `python -m raymlops.cli`, completion scripts and usage lines say `raymlops`.
        rv = app(args=argv, prog_name="raymlops", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except RaymlopsError as err:
        say(f"error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as err:  # click usage errors and the unexpected
        # Typer vendors its own click (typer._click): match on the shape, not on one click's classes.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return err.exit_code
        if type(err).__name__ == "Abort":
            return 1
        if os.environ.get("RAYMLOPS_DEBUG"):
            traceback.print_exc()
        say(f"unexpected error: {type(err).__name__}: {err}\n(set RAYMLOPS_DEBUG=1 for the traceback)")
        return 1
