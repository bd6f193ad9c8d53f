"""`raymlops run|runs|lineage` and `raymlops pipeline ...`: CT runs, their records, and delivery of the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from raymlops._ray import init_ray
from raymlops.cli._common import (
    AddressOpt,
    ConfigArg,
    EnvOpt,
    JsonOpt,
    SetOpt,
    app,
    emit,
    load,
    progress,
    say,
)

pipeline_app = typer.Typer(help="Deliver the pipeline's own code: package, pre-flight, deploy per environment, "
                           "promote, roll back.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
RequiredEnvOpt = Annotated[str, typer.Option("--env", help="The environment (`environments:` in the config).")]


@app.command("run")
def run_cmd(
    config: ConfigArg,
    set_: SetOpt = None, env: EnvOpt = None,
    resume: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--resume", help="Resume a failed run: only steps that did not complete run again."),
    ] = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the continuous-training pipeline: validate → prepare → train (+tune) → evaluate → bless → register."""
    cfg = load(config, set_, env)
    with progress(f"pipeline {cfg.name!r}", enabled=not as_json) as step:
        step("starting Ray")
        init_ray(address)
        from raymlops.ct import run_ct_pipeline

        result = run_ct_pipeline(cfg, resume_run_id=resume, progress=step)
    emit({"run_id": result.run_id, "status": result.status, "version": result.version, "error": result.error,
          "steps": {name: {"status": r.status, "duration_s": r.duration_s, "cache_hit": r.cache_hit,
                           "error": r.error} for name, r in result.pipeline.steps.items()},
          "mlflow_run_id": result.pipeline.mlflow_run_id}, as_json, result.summary())
    result.raise_for_status()


@app.command("runs")
def runs_cmd(
    config: ConfigArg,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs, newest first.")] = 20,
    set_: SetOpt = None, env: EnvOpt = None, as_json: JsonOpt = False,
) -> None:
    """List pipeline runs with their status and step states."""
    import dataclasses

    from raymlops.registry.client import runs

    cfg = load(config, set_, env)
    found = runs(cfg, limit=limit)
    if as_json:
        emit([dataclasses.asdict(r) | {"duration_s": r.duration_s} for r in found], True)
        return
    if not found:
        typer.echo(f"no runs of pipeline {cfg.name!r} yet; start one with `raymlops run {config}`")
    for r in found:
        typer.echo(r.render())


@app.command("lineage")
def lineage_cmd(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="Model version number or alias (champion, challenger).")],
    set_: SetOpt = None, env: EnvOpt = None, as_json: JsonOpt = False,
) -> None:
    """Walk from a model version back to its pipeline run, steps, artifacts and data."""
    from raymlops.registry.client import lineage

    found = lineage(load(config, set_, env), version)
    emit(found.to_dict(), as_json, found.render)


@pipeline_app.command("deploy")
def pipeline_deploy_cmd(
    config: ConfigArg,
    env: RequiredEnvOpt,
    source: Annotated[Path, typer.Option("--source", help="The working tree to package.")] = Path("."),
    skip_preflight: Annotated[bool, typer.Option("--skip-preflight", help="Deploy without the pre-flight run "
                                                 "(not advised).")] = False,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Package the working tree (with its git commit and a content digest), pre-flight it, and make it the
    implementation that ENV's controller runs for every triggered pipeline run."""
    from raymlops.pipeline.delivery import deploy_pipeline

    impl = deploy_pipeline(load(config, set_, env), source, run_preflight=not skip_preflight, address=address,
                           progress=say)
    typer.echo(f"{env}: pipeline implementation {impl.short} deployed; the next triggered run uses it")


@pipeline_app.command("list")
def pipeline_list_cmd(config: ConfigArg, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Implementations deployed to each environment: current, history, runs and blessed models per implementation."""
    import datetime as dt

    from raymlops.pipeline import delivery

    base = load(config, set_)
    if not base.environments:
        say("no environments in the config; add `environments:` (see configs/churn.yaml)")
        emit({}, as_json)
        return
    states = {name: delivery.env_state(load(config, set_, name)) for name in base.environments}
    if as_json:
        emit({name: st.to_dict() for name, st in states.items()}, True)
        return
    for name, state in states.items():
        typer.echo(f"{name}: current {state.current[:12] if state.current else '(installed code)'}"
                   + (f"; awaiting approval to promote {state.pending_approval[:12]}" if state.pending_approval else ""))
        for d in reversed(state.history):
            counts = state.runs.get(d.digest, {})
            when = dt.datetime.fromtimestamp(d.deployed_at).isoformat(sep=" ", timespec="seconds")
            typer.echo(f"  {'*' if d.digest == state.current else ' '} {d.digest[:12]}  {when}  runs "
                       f"{counts.get('runs', 0)}, blessed models {counts.get('models', 0)}  ({d.reason})")


@pipeline_app.command("promote")
def pipeline_promote_cmd(
    config: ConfigArg,
    env: Annotated[str, typer.Option("--env", help="The environment to promote INTO (e.g. production).")],
    source_env: Annotated[str, typer.Option("--from", help="The environment whose implementation to take.")],
    set_: SetOpt = None,
) -> None:
    """Promote the current implementation of --from into --env now (an operator's decision: no rule applies)."""
    from raymlops.pipeline.delivery import promote_current

    digest = promote_current(load(config, set_, source_env), env)
    typer.echo(f"{env}: pipeline implementation {digest[:12]} (from {source_env}) deployed")


@pipeline_app.command("approve")
def pipeline_approve_cmd(config: ConfigArg, env: RequiredEnvOpt, set_: SetOpt = None) -> None:
    """Approve the promotion into ENV of the implementation that earned it (promotion.require_approval)."""
    from raymlops.pipeline.delivery import approve_into

    source, impl = approve_into(load(config, set_, env))
    typer.echo(f"{env}: pipeline implementation {impl.short} (from {source}) approved and deployed")


@pipeline_app.command("rollback")
def pipeline_rollback_cmd(config: ConfigArg, env: RequiredEnvOpt, set_: SetOpt = None) -> None:
    """Return ENV to the implementation deployed before the current one."""
    from raymlops.pipeline.delivery import rollback_implementation

    impl = rollback_implementation(load(config, set_, env))
    typer.echo(f"{env}: pipeline implementation rolled back to {impl.short}")
