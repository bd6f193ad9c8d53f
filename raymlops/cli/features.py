"""``raymlops features ...``: list, search and describe definitions; materialise; write example data.

Registered on the main app here, like every command group. Heavy imports happen inside the commands, so ``--help`` is fast.
Errors are ``RaymlopsError``s, which the main entry point turns into a message and an exit code (2 for a bad
definition file).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from raymlops.cli._common import JsonOpt, app, emit
from raymlops.errors import ConfigError

features_app = typer.Typer(
    help="The feature store: shared feature definitions (a YAML feature repo such as configs/features.yaml), "
    "point-in-time training data, and an online store that serving reads by entity key.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")

RepoOpt = Annotated[Path, typer.Option("--repo", help="Feature repo YAML (entities, feature views, services).")]
_DEFAULT_REPO = Path("configs/features.yaml")


def _repo(path: Path):
    from raymlops.features.definitions import load_feature_repo

    return load_feature_repo(path)


@features_app.command("list")
def list_(
    repo: RepoOpt = _DEFAULT_REPO,
    search: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional
        "--search", "-s", help="Show only definitions whose name, description, owner or tags contain this text.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List entities, feature views (with their features) and feature services."""
    r = _repo(repo)
    rows = []
    for name, e in r.entities.items():
        rows.append(("entity", name, ", ".join(f"{k}:{t}" for k, t in e.join_keys.items()), e.description, "", {}))
    for name, v in r.feature_views.items():
        ttl = f"ttl {v.ttl_s:.0f}s" if v.ttl_s else "no ttl"
        rows.append(("view", name, f"{v.entity}; {len(v.features)} features; {ttl}; " + ", ".join(v.features),
                     v.description, v.owner, v.tags))
    for name, s in r.feature_services.items():
        rows.append(("service", name, ", ".join(s.features), s.description, s.owner, s.tags))
    if search:
        needle = search.lower()
        rows = [row for row in rows if needle in json.dumps(row, default=str).lower()]
    if as_json:
        emit([dict(zip(("kind", "name", "summary", "description", "owner", "tags"), row, strict=True))
              for row in rows], True)
        return
    typer.echo(f"feature repo {repo} (project {r.project}, digest {r.digest[7:19]})")
    for kind, name, summary, description, owner, _ in rows:
        extra = "  ".join(x for x in (description, f"owner {owner}" if owner else "") if x)
        typer.echo(f"{kind:<8} {name:<24} {summary}" + (f"\n{'':<33}{extra}" if extra else ""))


@features_app.command()
def describe(
    name: Annotated[str, typer.Argument(help="An entity, feature view or feature service name.")],
    repo: RepoOpt = _DEFAULT_REPO,
    as_json: JsonOpt = False,
) -> None:
    """Show one definition in full (defaults filled in), as YAML or JSON."""
    import yaml

    r = _repo(repo)
    for kind, table in (("entity", r.entities), ("feature_view", r.feature_views),
                        ("feature_service", r.feature_services)):
        if name in table:
            doc = {kind: {name: table[name].model_dump(mode="json")}}
            if kind == "feature_service":
                doc["resolved"] = {v.name: list(v.features) for v in r.service(name)}
            emit(doc, as_json, lambda: yaml.safe_dump(doc, sort_keys=False).rstrip())  # noqa: B023 - called now
            return
    known = sorted([*r.entities, *r.feature_views, *r.feature_services])
    raise ConfigError(f"{repo}: no entity, feature view or service named '{name}'; known: {known}")


@features_app.command()
def materialize(
    repo: RepoOpt = _DEFAULT_REPO,
    view: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--view", help="Materialise only this view (repeatable). Default: every view with online: true.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Reload everything up to --end, replacing the store's "
                                       "rows. Default: incremental from the last materialised time (all history "
                                       "on the first run).")] = False,
    end: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--end", help="Materialise events up to this ISO-8601 time (naive = UTC). Default: now.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load the latest feature values per entity into the online store (SQLite by default, or Redis)."""
    from raymlops.features.materialize import materialize as run

    until = None
    if end:
        try:
            until = dt.datetime.fromisoformat(end)
        except ValueError:
            raise ConfigError(f"--end {end!r} is not an ISO-8601 time; write e.g. 2026-01-31T00:00:00Z") from None
    r = _repo(repo)
    results = run(r, views=view or None, full=full, end=until)
    where = r.online_store.path if r.online_store.type == "sqlite" else r.online_store.url
    emit({"views": results, "online_store": {"type": r.online_store.type, "where": where}}, as_json,
         lambda: "\n".join([*(x.summary() for x in results), f"online store: {r.online_store.type} {where}"]))


@features_app.command()
def generate(
    out: Annotated[str, typer.Option("--out", help="Directory (or URI) for the example feature data.")] = (
        "./.raymlops/feature-data"),
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 500,
    days: Annotated[int, typer.Option(min=3, help="Days of daily usage rows.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write the example data that configs/features.yaml reads: profiles, daily usage and churn labels."""
    from raymlops.features.example import generate_example

    written = generate_example(out, customers=customers, days=days, seed=seed)
    emit(written, as_json, lambda: "\n".join(f"{name}: {uri}" for name, uri in written.items()))
