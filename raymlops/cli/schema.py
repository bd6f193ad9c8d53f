"""`raymlops schema show|diff|accept`: the versions of a pipeline's data schema, and the next one from a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from raymlops.cli._common import ConfigArg, EnvOpt, JsonOpt, SetOpt, app, emit, load, say

schema_app = typer.Typer(
    help="Schema versions: show one, propose the next from a validation report (diff), accept it.",
    no_args_is_help=True,
)
app.add_typer(schema_app, name="schema")

ReportOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option("--from-report", help="Validation report (report.json or its directory) whose anomalies the "
                 "next version should accept."),
]
FileOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--file", help="A schema YAML you edited (e.g. written by `schema diff --out`), as the next version."),
]
VersionOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--version", min=1, help="Schema version number. Default: the one validation uses now."),
]


def _plan(cfg, report: str | None, file: str | None):
    from raymlops.data.schemas import plan_from_file, propose_from_report
    from raymlops.errors import SchemaError

    if file is not None:
        return plan_from_file(cfg, file, report)
    if report is not None:
        return propose_from_report(cfg, report)
    raise SchemaError("give --from-report REPORT (the report of the data to accept) or --file SCHEMA.yaml (an "
                      "edited schema)")


def _show_plan(plan) -> None:
    for note in plan.notes:
        say(f"note: {note}")
    say(f"v{plan.base.schema.version} -> v{plan.schema.version}:\n{plan.proposal.summary()}")


@schema_app.command("show")
def schema_show(config: ConfigArg, version: VersionOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                as_json: JsonOpt = False) -> None:
    """Print a schema version as YAML or JSON (default: the one validation uses now)."""
    from raymlops.data.schemas import load_schema_version, schema_versions

    cfg = load(config, set_, env)
    frozen = load_schema_version(cfg, version)
    kept = ", ".join(f"v{v}" for v in sorted(schema_versions(cfg)))
    say(f"schema {frozen.schema.name} v{frozen.schema.version} ({frozen.uri}); versions kept: {kept or 'none'}")
    if as_json:
        emit(frozen.schema.to_dict() | {"uri": frozen.uri}, True)
        return
    typer.echo(frozen.schema.to_yaml(), nl=False)


@schema_app.command("diff")
def schema_diff_cmd(
    config: ConfigArg,
    from_report: ReportOpt = None,
    file: FileOpt = None,
    version: VersionOpt = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", help="Write the proposed version's YAML here, to edit and accept with --file."),
    ] = None,
    set_: SetOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the next version proposed from a report (or an edited file) against the current one; without either,
    what version N (default: the current) changed from N-1. Refuses (exit 2) to drop a feature the champion needs."""
    from raymlops.core.schema_evolution import schema_diff
    from raymlops.data.schemas import load_schema_version

    cfg = load(config, set_, env)
    if from_report is None and file is None:
        new = load_schema_version(cfg, version)
        if new.schema.version == 1:
            say(f"v1 is the first version ({new.uri}); nothing to compare it with")
            emit({"base_version": None, "version": 1, "diff": None}, as_json)
            return
        old = load_schema_version(cfg, new.schema.version - 1)
        text = schema_diff(old.schema, new.schema)
        emit({"base_version": old.schema.version, "version": new.schema.version, "diff": text}, as_json, text.rstrip("\n"))
        return
    plan = _plan(cfg, from_report, file)
    _show_plan(plan)
    if out is not None:
        out.write_text(plan.schema.to_yaml())
        say(f"wrote the proposal to {out}: edit it, then `raymlops schema accept {config} --file {out}"
            + (f" --from-report {from_report}`" if from_report else "`"))
    text = schema_diff(plan.base.schema, plan.schema)
    emit({"base_version": plan.base.schema.version, "version": plan.schema.version, "diff": text,
          "changes": plan.proposal.changes, "unresolved": plan.proposal.unresolved, "notes": plan.notes}, as_json,
         text.rstrip("\n"))


@schema_app.command("accept")
def schema_accept(
    config: ConfigArg,
    from_report: ReportOpt = None,
    file: FileOpt = None,
    set_: SetOpt = None,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the next schema version: proposed from a report's anomalies, or a file you edited (with the report,
    its data's statistics become the version's reference). Earlier versions are kept; nothing is written on error."""
    from raymlops.data.schemas import accept_schema

    cfg = load(config, set_, env)
    plan = _plan(cfg, from_report, file)
    _show_plan(plan)
    accepted = accept_schema(cfg, plan)
    for note in accepted.notes[len(plan.notes):]:
        say(note)
    emit(accepted, as_json, f"accepted schema v{accepted.version}: {accepted.uri}")
