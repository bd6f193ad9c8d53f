"""What every command module shares: the app, the common options, loading the config, printing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="MLOps level 2 on Ray: validate data, train, register, serve and control models. "
    "Every command takes a config file (see configs/churn.yaml) and --address for a Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def say(msg: str) -> None:
    """Progress, notes and errors go to stderr (results to stdout), redacted: an error may quote a secret URI."""
    from raymlops.core.redact import redact

    typer.echo(redact(msg), err=True)


def load(config: Path | None, overrides: list[str] | None, env: str | None = None):
    from raymlops.config import load_config

    return load_config(config, overrides or [], env=env)


def echo_event(e: dict) -> None:
    import datetime as dt

    from raymlops.core.redact import redact

    at = dt.datetime.fromtimestamp(e["at"]).isoformat(sep=" ", timespec="seconds")
    by = (e.get("data") or {}).get("operator")  # who acted, on an operator command's events
    typer.echo(redact(f"{e['seq']:>5}  {at}  {e['kind']:<20} {e['message']}" + (f"  (by {by})" if by else "")))
