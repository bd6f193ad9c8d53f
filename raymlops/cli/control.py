"""`raymlops controller ...`, `trigger`, `approve`, `promote`, `rollback`, `events`, `status`: running the loop."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from raymlops._ray import cluster_address, connect_cluster, init_ray
from raymlops.cli._common import (
    AddressOpt,
    ConfigArg,
    EnvOpt,
    JsonOpt,
    RequestOpt,
    SetOpt,
    app,
    echo_event,
    emit,
    load,
    say,
)

controller_app = typer.Typer(help="The detached controller that runs the loop: triggers, retraining, canary "
                             "analysis, promotion and rollback.", no_args_is_help=True)
app.add_typer(controller_app, name="controller")

AsOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option("--as", help="who is acting, recorded on the event (default: the OS user)"),
]


@app.command("promote")
def promote_cmd(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="Version number or alias to make the champion.")],
    request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
    operator: AsOpt = None,
) -> None:
    """Make a version the champion (the old champion is kept as `previous` for rollback).

    With a controller running (--address / $RAY_ADDRESS), the controller does it: a canary in progress is
    promoted at once, and the serving split follows.
    """
    from raymlops.control.operations import promote

    typer.echo(promote(load(config, set_, env), version, request_id=request_id, address=address, operator=operator))


@app.command("rollback")
def rollback_cmd(
    config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
    address: AddressOpt = None, operator: AsOpt = None,
) -> None:
    """Roll back: the canary in progress (through the controller), else the `previous` champion returns."""
    from raymlops.control.operations import rollback

    typer.echo(rollback(load(config, set_, env), request_id=request_id, address=address, operator=operator))


@controller_app.command("start")
def controller_start_cmd(
    config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
    take_over: Annotated[bool, typer.Option(
        "--take-over", help="Take the lease from another controller of CONFIG (on another cluster sharing the "
        "storage) that is gone or must stop; it stops acting at its next renewal.")] = False,
) -> None:
    """Start the controller of CONFIG (a detached Ray actor; it resumes from its persisted state).

    With --address or $RAY_ADDRESS it runs on that cluster and this command returns. Without, Ray runs in this
    process and the controller with it: events are printed until Ctrl-C. One controller per pipeline: while
    another holds the lease (see `raymlops status CONFIG`), this one is refused unless --take-over.
    """
    import time

    from raymlops.control.actor import call, start_controller, stop_controller

    cfg = load(config, set_, env)
    address = cluster_address(cfg, address)
    init_ray(address)
    _, started = start_controller(cfg, take_over=take_over)
    s = call(cfg, "status")
    typer.echo(f"controller of {cfg.name!r} {'started' if started else 'already running'}: champion "
               f"{s['champion'] or '-'}, rollout {s['rollout']['phase']}, run "
               f"{(s['run'] or {}).get('run_id') or '-'}")
    if address is not None:
        return
    say("the controller runs in this process's Ray; press Ctrl-C to stop it (use --address for a cluster)")
    seen = s["last_event"]["seq"] if s["last_event"] else 0
    try:
        while True:
            for e in call(cfg, "events", seen):
                echo_event(e)
                seen = e["seq"]
            time.sleep(1.0)
    except KeyboardInterrupt:
        stop_controller(cfg)
        say("controller stopped; its state is kept and the next start resumes it")


@controller_app.command("stop")
def controller_stop_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None) -> None:
    """Stop the controller (serving keeps running; its state is kept for the next start)."""
    from raymlops.control.actor import stop_controller

    cfg = load(config, set_, env)
    connect_cluster(cfg, address)
    typer.echo("controller stopped" if stop_controller(cfg) else f"no controller of {cfg.name!r} was running")


@controller_app.command("status")
def controller_status_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
                          as_json: JsonOpt = False) -> None:
    """The live controller's state as JSON (either way; --json is accepted like everywhere): run in flight, queue,
    rollout, weights, last monitor pass."""
    from raymlops.control.actor import call

    cfg = load(config, set_, env)
    connect_cluster(cfg, address)
    emit(call(cfg, "status"), True)


def _command(config, set_, env, address, name: str, request_id: str | None, operator: str | None,
             version: str | None = None) -> None:
    from raymlops.control.operations import command

    typer.echo(command(load(config, set_, env), name, request_id=request_id, version=version, address=address,
                       operator=operator))


@controller_app.command("pause")
def controller_pause_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                         address: AddressOpt = None, operator: AsOpt = None) -> None:
    """Pause: no new runs start and no canary decision is taken (the split stays as it is)."""
    _command(config, set_, env, address, "pause", request_id, operator)


@controller_app.command("resume")
def controller_resume_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                          address: AddressOpt = None, operator: AsOpt = None) -> None:
    """Resume after `pause`: queued runs and waiting canaries go on."""
    _command(config, set_, env, address, "resume", request_id, operator)


@app.command("approve")
def approve_cmd(
    config: ConfigArg,
    version: Annotated[Optional[str], typer.Argument(help="The canary version (checked if given).")] = None,  # noqa: UP045
    request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
    operator: AsOpt = None,
) -> None:
    """Promote the canary waiting at its last step (canary.require_approval: true)."""
    _command(config, set_, env, address, "approve", request_id, operator, version)


@app.command("trigger")
def trigger_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                address: AddressOpt = None, operator: AsOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the controller for a pipeline run now (queued behind a run in flight)."""
    from raymlops.control.actor import call
    from raymlops.control.operations import trigger

    cfg = load(config, set_, env)
    rid = trigger(cfg, request_id=request_id, address=address, operator=operator)
    run = (call(cfg, "status")["run"] or {}).get("run_id")
    emit({"request_id": rid, "run_id": run, "queued": run is None}, as_json,
         f"trigger {rid} accepted: " + (f"run {run} in flight" if run else "queued") +
         "; follow it with `raymlops events CONFIG --follow`")


@app.command("events")
def events_cmd(
    config: ConfigArg,
    since: Annotated[int, typer.Option("--since", help="Only events after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (the newest).")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (JSON lines: `| jq .kind`), "
                                          "on stdout alone.")] = False,
    set_: SetOpt = None, env: EnvOpt = None,
) -> None:
    """The controller's event log: triggers, runs, canary decisions with their checks, promotions, rollbacks.

    Read from the controller's state in storage, so it works with the controller stopped and without Ray.
    """
    import time

    from raymlops.control.operations import events
    from raymlops.control.statefile import state_uri
    from raymlops.core.redact import redact_data

    cfg = load(config, set_, env)
    shown = events(cfg, since)
    if shown is None and not follow:
        (say if as_json else typer.echo)(f"no controller events for {cfg.name!r} yet ({state_uri(cfg)} does not exist); start one with "
                   "`raymlops controller start CONFIG`")
        return
    shown = (shown or [])[-limit:]
    try:
        while True:
            for e in shown:
                typer.echo(json.dumps(redact_data(e), default=str)) if as_json else echo_event(e)
                since = e["seq"]
            if not follow:
                return
            time.sleep(1.0)
            shown = events(cfg, since) or []
    except KeyboardInterrupt:
        return


@app.command("status")
def status_cmd(config: ConfigArg, as_json: JsonOpt = False, set_: SetOpt = None, env: EnvOpt = None) -> None:
    """Where the loop stands: model versions and aliases, controller rollout and run, live serving, monitoring."""
    from raymlops.control.status import gather_status, render_status

    doc = gather_status(load(config, set_, env))
    emit(doc, as_json, lambda: render_status(doc))
