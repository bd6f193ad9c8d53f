"""What every command module shares: the app, the common options, loading the config, printing."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(
    help="MLOps level 2 on Ray: validate data, train, register, serve and control models. "
    "Every command takes a config file (see configs/churn.yaml, or `raymlops init DIR` for a starter project) "
    "and --address for a Ray cluster.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)


def version() -> str:
    """The installed raymlops version (the package's ``__version__``, else the distribution's metadata)."""
    import raymlops

    found = getattr(raymlops, "__version__", None)
    if found:
        return str(found)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("raymlops")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"raymlops {version()}")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own logs and warnings (raylet "
                                          "messages, Ray Data progress bars, library deprecation warnings); by "
                                          "default they go to {storage_uri}/logs/raymlops.log.")] = False,
    _version: Annotated[Optional[bool], typer.Option(  # noqa: UP045 - typer needs Optional here
        "--version", callback=_print_version, is_eager=True, help="Print the raymlops version and exit.")] = None,
) -> None:
    """MLOps level 2 on Ray: validate data, train, register, serve and control models."""
    from raymlops._ray import cli_output

    # Entered for the command and left when click tears the context down, also on errors.
    ctx.with_resource(cli_output(verbose=verbose))

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline config (YAML), e.g. configs/churn.yaml.")]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
]
EnvOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--env", help="Environment of the config (`environments:`), e.g. staging or production."),
]
AddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--address", help="Ray cluster address. Default: $RAY_ADDRESS, else a local Ray."),
]
RequestOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--request-id", help="Idempotency key: a retried command with the same id counts once."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout, alone (pipe it into jq); notes and "
                                        "progress go to stderr.")]


def say(msg: str) -> None:
    """Progress, notes and errors go to stderr (results to stdout), redacted: an error may quote a secret URI."""
    from raymlops.core.redact import redact

    typer.echo(redact(msg), err=True)


def load(config: Path | None, overrides: list[str] | None, env: str | None = None):
    from raymlops._ray import log_under
    from raymlops.config import load_config

    cfg = load_config(config, overrides or [], env=env)
    log_under(cfg.storage_uri)  # Ray's own logs go next to the pipeline's other records
    return cfg


def to_json(data: Any) -> str:
    """``data`` (dicts, lists, dataclasses) as indented JSON, secrets redacted like every printed line."""
    from raymlops.core.redact import redact_data

    return json.dumps(redact_data(_plain(data)), indent=2, default=str)


def _plain(data: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def emit(data: Any, as_json: bool, text: str | Callable[[], str] | None = None) -> None:
    """The one printer of results: ``data`` as JSON with --json, else ``text`` (nothing when None)."""
    if as_json:
        typer.echo(to_json(data))
        return
    shown = text() if callable(text) else text
    if shown is not None:
        typer.echo(shown)


_STEP = re.compile(r"^\s*\[(\w+)\]")


@contextmanager
def progress(what: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A progress printer for a long step: each line goes to stderr as with ``say``; on a terminal (stdout and
    stderr both TTYs, not --json) a spinner under them names ``what`` and the pipeline step in flight."""
    if not (enabled and sys.stdout.isatty() and sys.stderr.isatty()):
        yield say
        return
    from rich.console import Console

    from raymlops.core.redact import redact

    console = Console(stderr=True)
    with console.status(what) as status:

        def update(msg: str) -> None:
            console.print(redact(msg), markup=False, highlight=False, soft_wrap=True)
            step = _STEP.match(msg)
            if step:
                status.update(f"{what}: {step.group(1)}")

        yield update


def echo_event(e: dict) -> None:
    import datetime as dt

    from raymlops.core.redact import redact

    at = dt.datetime.fromtimestamp(e["at"]).isoformat(sep=" ", timespec="seconds")
    by = (e.get("data") or {}).get("operator")  # who acted, on an operator command's events
    typer.echo(redact(f"{e['seq']:>5}  {at}  {e['kind']:<20} {e['message']}" + (f"  (by {by})" if by else "")))
