"""`raymlops gc`: apply the config's retention to the pipeline's logs, reports and runs."""

from __future__ import annotations

from typing import Annotated

import typer

from raymlops.cli._common import ConfigArg, EnvOpt, JsonOpt, SetOpt, app, emit, load, say


@app.command("gc")
def gc_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    env: EnvOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; change nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete log partitions, reports and runs past `retention:` and compact closed log days.

    Runs a registered model version references are always kept. Needs no Ray cluster.
    """
    from raymlops.control.retention import collect_garbage

    cfg = load(config, set_, env)
    report = collect_garbage(cfg, dry_run=dry_run)
    if as_json:
        emit(report.to_dict(), True)
        return
    for kind, names in (("log partition", report.deleted_partitions), ("report", report.deleted_reports),
                        ("run", report.deleted_runs)):
        for name in names:
            typer.echo(f"{'would delete' if dry_run else 'deleted'} {kind} {name}")
    for c in report.compacted:
        typer.echo(f"compacted {c['partition']}: {c['files_in']} files -> {c['files_out']} ({c['rows']:,} rows)")
    say(report.summary())
