"""The `raymlops` command. The only module that starts Ray (ray.init) for the user.

Exit codes: 0 ok · 1 unexpected failure · 2 bad usage or config · 3 blocked by a gate.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from raymlops.errors import RaymlopsError

app = typer.Typer(
    help="MLOps level 2 on Ray: validate data, train, register, serve and control models. "
    "Every command takes a config file (see configs/churn.yaml) and --address for a Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthetic data for demos, tests and benchmarks.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

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


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _load(config: Path | None, overrides: list[str] | None, env: str | None = None):
    from raymlops.config import load_config

    return load_config(config, overrides or [], env=env)


def init_ray(address: str | None = None) -> None:
    """Connect to the given cluster, $RAY_ADDRESS (as under `ray job submit`), or start a small local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train v2 collects worker reports every 2 s, which floors every epoch at 2 s (bench_train.py); a local Ray
    # started here inherits this. On a cluster, set it in the cluster's environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Worker logs stay in /tmp/ray/session_latest/logs: the steps report progress (and errors) themselves.
        ray.init(include_dashboard=False, object_store_memory=512 * 1024 * 1024, configure_logging=False,
                 log_to_driver=False)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Our steps print their own progress; Ray Data's bars and INFO lines would bury it."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we know


# ------------------------------------------------------------------------------------------------ data
@data_app.command("generate")
def data_generate(
    out: Annotated[str, typer.Option("--out", help="Output directory or URI for daily parquet files.")],
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows per day.")] = 2000,
    days: Annotated[int, typer.Option("--days", min=1, help="Number of daily files.")] = 7,
    start_date: Annotated[str, typer.Option("--start-date", help="First day (YYYY-MM-DD).")] = "2026-01-01",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    drift: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--drift", help="Covariate drift FEATURE:shift=S,scale=K (repeatable), e.g. monthly_charges:shift=20,scale=1.5."),
    ] = None,
    drift_from_day: Annotated[int, typer.Option("--drift-from-day", help="First day (0-based) with drift.")] = 0,
    concept_drift_from_day: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--concept-drift-from-day", help="From this day (0-based) the label function changes."),
    ] = None,
    schema_change: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--schema-change",
            help="add_column | remove_column | rename_column | change_type | new_category (repeatable).",
        ),
    ] = None,
    schema_change_from_day: Annotated[int, typer.Option("--schema-change-from-day")] = 0,
    null_pct: Annotated[float, typer.Option("--null-pct", min=0, max=100, help="Nulls per feature, %.")] = 0.0,
    corrupt_pct: Annotated[
        float, typer.Option("--corrupt-pct", min=0, max=100, help="Corrupt values (negative, NaN, Inf, outliers), %.")
    ] = 0.0,
) -> None:
    """Write churn-like synthetic data as daily parquet files."""
    from raymlops.data.synthetic import DriftSpec, generate, parse_drift_option

    spec = DriftSpec(features=parse_drift_option(drift), from_day=drift_from_day) if drift else None
    result = generate(
        out,
        rows_per_day=rows,
        days=days,
        start_date=start_date,
        seed=seed,
        drift=spec,
        concept_drift_from_day=concept_drift_from_day,
        schema_change=schema_change or [],
        schema_change_from_day=schema_change_from_day,
        null_pct=null_pct,
        corrupt_pct=corrupt_pct,
    )
    typer.echo(f"wrote {result.rows:,} rows in {len(result.files)} files under {out}")


# -------------------------------------------------------------------------------------------- validate
@app.command("validate")
def validate_cmd(
    config: ConfigArg,
    data: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--data", help="Dataset to validate (file, glob, dir, URI). Default: data.source."),
    ] = None,
    set_: SetOpt = None,
    env: EnvOpt = None,
    address: AddressOpt = None,
) -> None:
    """Profile a dataset and check it against the frozen schema (schema skew → exit 3) and reference (drift)."""
    cfg = _load(config, set_, env)
    init_ray(address)
    from raymlops.data.validate import validate_data

    outcome = validate_data(cfg, data_uri=data, progress=_say)
    typer.echo(outcome.report.summary())
    typer.echo(f"report: {outcome.report_uri}\nhtml:   {outcome.html_uri}")
    if outcome.decision == "STOP":
        raise typer.Exit(3)


# ------------------------------------------------------------------------------------------------- run
@app.command("run")
def run_cmd(
    config: ConfigArg,
    set_: SetOpt = None, env: EnvOpt = None,
    resume: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--resume", help="Resume a failed run: only steps that did not complete run again."),
    ] = None,
    address: AddressOpt = None,
) -> None:
    """Run the continuous-training pipeline: validate → prepare → train (+tune) → evaluate → bless → register."""
    cfg = _load(config, set_, env)
    init_ray(address)
    from raymlops.pipeline.ct import run_ct_pipeline

    result = run_ct_pipeline(cfg, resume_run_id=resume, progress=_say)
    typer.echo(result.summary())
    result.raise_for_status()


@app.command("runs")
def runs_cmd(
    config: ConfigArg,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs, newest first.")] = 20,
    set_: SetOpt = None, env: EnvOpt = None,
) -> None:
    """List pipeline runs with their status and step states."""
    import datetime as dt

    from raymlops.registry.tracking import MetadataStore

    cfg = _load(config, set_, env)
    runs = MetadataStore(cfg.tracking_uri).list_runs(cfg.name, limit)
    if not runs:
        typer.echo(f"no runs of pipeline {cfg.name!r} yet; start one with `raymlops run {config}`")
    for r in runs:
        started = dt.datetime.fromtimestamp(r.started_at).isoformat(timespec="seconds") if r.started_at else "-"
        took = f"{r.duration_s:.0f}s" if r.duration_s is not None else "-"
        steps = " ".join(f"{k}:{v}" for k, v in r.steps.items())
        typer.echo(f"{r.pipeline_run_id}  {r.status:<9} {started}  {took:>6}  {steps}")
        if r.error:
            typer.echo(f"    {r.error}")


@app.command("lineage")
def lineage_cmd(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="Model version number or alias (champion, challenger).")],
    set_: SetOpt = None, env: EnvOpt = None,
) -> None:
    """Walk from a model version back to its pipeline run, steps, artifacts and data."""
    from raymlops.registry.models import ModelRegistry
    from raymlops.registry.tracking import MetadataStore

    cfg = _load(config, set_, env)
    v = ModelRegistry(cfg.tracking_uri).resolve(cfg.name, version).version
    typer.echo(MetadataStore(cfg.tracking_uri).lineage(cfg.name, v).render())


@app.command("promote")
def promote_cmd(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="Version number or alias to make the champion.")],
    request_id: Annotated[Optional[str], typer.Option("--request-id", help="Idempotency key.")] = None,  # noqa: UP045
    set_: SetOpt = None, env: EnvOpt = None,
    address: AddressOpt = None,
) -> None:
    """Make a version the champion (the old champion is kept as `previous` for rollback).

    With a controller running (--address / $RAY_ADDRESS), the controller does it: a canary in progress is
    promoted at once, and the serving split follows.
    """
    from raymlops.registry.models import ModelRegistry

    cfg = _load(config, set_, env)
    reg = ModelRegistry(cfg.tracking_uri)
    resolved = str(reg.resolve(cfg.name, version).version)
    if _controller_running(cfg, address):  # the controller owns the aliases and the split while it runs
        _manual(config, set_, env, address, "promote", request_id, resolved)
        return
    info = reg.promote(cfg.name, resolved)
    typer.echo(f"{cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}")


@app.command("rollback")
def rollback_cmd(
    config: ConfigArg,
    request_id: Annotated[Optional[str], typer.Option("--request-id", help="Idempotency key.")] = None,  # noqa: UP045
    set_: SetOpt = None, env: EnvOpt = None,
    address: AddressOpt = None,
) -> None:
    """Roll back: the canary in progress (through the controller), else the `previous` champion returns."""
    from raymlops.registry.models import ModelRegistry

    cfg = _load(config, set_, env)
    if _controller_running(cfg, address):
        _manual(config, set_, env, address, "rollback", request_id)
        return
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.rollback(cfg.name)
    typer.echo(f"rolled back: {cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}")


def _controller_running(cfg, address: str | None) -> bool:
    """Whether a controller of ``cfg`` runs on the cluster at --address / $RAY_ADDRESS (no cluster: False)."""
    env_address = cfg.environments[cfg.environment].address if cfg.environment else None
    if not (address or env_address or os.environ.get("RAY_ADDRESS")):
        return False
    from raymlops.control.actor import get_controller

    _connect_cluster(address, cfg)
    return get_controller(cfg) is not None


@app.command("demo")
def demo_cmd(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="Config to run the demo with. Default: the embedded defaults."),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data, fewer epochs, shorter canary windows "
                                        "(what CI runs).")] = False,
    bad_model: Annotated[bool, typer.Option("--bad-model/--no-bad-model", help="Land a partition with "
                                            "inverted labels so that v3 is rolled back on live labels.")] = True,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """The whole loop on a laptop, in a sandbox under {storage_uri}/demo, narrated as a timeline.

    Data lands and is validated → the controller trains v1 and serves it → simulated clients send traffic and
    labels → drifted data lands → the controller retrains → v2 goes on canary and is promoted → a partition
    with inverted labels lands → v3 goes on canary and is rolled back on the clients' labels. About 4 minutes
    on 2 cores.
    """
    import socket

    from raymlops.demo import DEMO_OVERRIDES, QUICK_OVERRIDES, demo_config, run_demo

    cfg = _load(config, [*DEMO_OVERRIDES, *(QUICK_OVERRIDES if quick else []), *(set_ or [])])
    with socket.socket() as sock:  # the configured port, or any free one when it is taken
        try:
            sock.bind((cfg.serving.host, cfg.serving.port))
            port = cfg.serving.port
        except OSError:
            sock.bind((cfg.serving.host, 0))
            port = sock.getsockname()[1]
    init_ray(address)
    where = run_demo(demo_config(cfg, port), say=typer.echo, quick=quick, bad_model=bad_model)
    typer.echo("\nwhere to look:")
    for what, uri in where.items():
        typer.echo(f"  {what:<20} {uri}")


@app.command("predict")
def predict_cmd(
    config: ConfigArg,
    input_uri: Annotated[str, typer.Option("--input", help="Rows to score: file, glob, directory or URI (parquet, csv).")],
    output_uri: Annotated[str, typer.Option("--output", help="Output directory or URI: parquet files + _SUCCESS.")],
    version: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--version", help="Model version number (3, v3) or alias. Default: champion."),
    ] = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Score a dataset with a registered model version on Ray Data (same package and transform as serving)."""
    cfg = _load(config, set_)
    init_ray(address)
    from raymlops.serve.batch import predict_batch

    result = predict_batch(cfg, input_uri, output_uri, version=version, progress=_say)
    typer.echo(f"wrote {result.rows:,} predictions of {cfg.name} v{result.version} to {result.output_uri}")


# ------------------------------------------------------------------------------------------------ config
@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the pipeline config."""
    from raymlops.config import config_json_schema

    typer.echo(json.dumps(config_json_schema(), indent=2))


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None) -> None:
    """Print the fully resolved config (defaults, environment, overrides and ${ENV} filled in) as YAML."""
    import yaml

    cfg = _load(config, set_, env)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# ------------------------------------------------------------------------------------------------ serving
serve_app = typer.Typer(help="Inspect and steer the running serving app.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

WeightsOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--weights", help="Traffic split in percent per version (number or alias), summing to 100: "
                 "--weights 3=90,4=10. Default: champion, plus challenger at serving.challenger_weight_pct."),
]
ShadowOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--shadow", help="Version (number or alias) that receives mirrored traffic, never answered."),
]
ShadowPctOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--shadow-pct", min=0, max=100, help="Percent of requests mirrored to --shadow "
                 "(default: serving.shadow_pct)."),
]


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version, sep, pct = part.partition("=")
        try:
            if not sep or not version.strip():
                raise ValueError
            weights[version.strip()] = float(pct)
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not VERSION=PERCENT; write e.g. --weights 3=90,4=10",
                                     param_hint="--weights") from None
    if not weights:
        raise typer.BadParameter("no VERSION=PERCENT pairs; write e.g. --weights 3=90,4=10", param_hint="--weights")
    return weights


def _echo_deploy(info) -> None:
    split = ", ".join(f"v{v} {w:g}%" for v, w in info.weights.items())
    shadow = f"; shadow v{info.shadow} mirrors {info.shadow_pct:g}%" if info.shadow else ""
    typer.echo(f"serving app '{info.app_name}' at {info.url} ({split}{shadow})")
    for url in info.direct_urls:
        typer.echo(f"  direct (replica port): {url}")


def _connect(address: str | None) -> None:
    """Connect to the cluster that runs Serve: --address, $RAY_ADDRESS, else a local `ray start` cluster."""
    init_ray(address or os.environ.get("RAY_ADDRESS") or "auto")


@app.command("deploy")
def deploy_cmd(
    config: ConfigArg,
    weights: WeightsOpt = None,
    shadow: ShadowOpt = None,
    shadow_pct: ShadowPctOpt = None,
    direct_ingress: Annotated[
        bool, typer.Option("--direct-ingress/--no-direct-ingress",
                           help="Also serve on each replica's own port (30000+), skipping Serve's proxy.")
    ] = True,
    set_: SetOpt = None, env: EnvOpt = None,
    address: AddressOpt = None,
) -> None:
    """(Re)deploy the serving app from the registry's aliases; a running app is reconfigured in place.

    Without --address or $RAY_ADDRESS, Ray runs in this process: the command keeps serving until Ctrl-C.
    """
    cfg = _load(config, set_, env)
    local = not (address or os.environ.get("RAY_ADDRESS"))
    init_ray(address)
    from raymlops.serve.deploy import deploy, undeploy

    info = deploy(cfg, weights=_parse_weights(weights), shadow=shadow, shadow_pct=shadow_pct,
                  direct_ingress=direct_ingress)
    _echo_deploy(info)
    if local:
        import time

        _say("serving from this process's Ray; press Ctrl-C to stop (use --address to deploy to a cluster)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            undeploy(cfg)  # replicas drain their prediction logs on shutdown
            _say("stopped")


@app.command("undeploy")
def undeploy_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None) -> None:
    """Delete the serving app (its replicas drain their prediction logs first)."""
    cfg = _load(config, set_, env)
    _connect(address)
    from raymlops.serve.deploy import app_name, undeploy

    name = app_name(cfg)
    typer.echo(f"deleted serving app '{name}'" if undeploy(cfg) else f"serving app '{name}' was not deployed")


@serve_app.command("status")
def serve_status_cmd(config: ConfigArg, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Serve's view of the app plus the app's own model info (versions, weights, roles, counters) as JSON."""
    cfg = _load(config, set_)
    _connect(address)
    from raymlops.serve.deploy import status

    typer.echo(json.dumps(status(cfg), indent=2, default=str))


@serve_app.command("weights")
def serve_weights_cmd(
    config: ConfigArg,
    weights: Annotated[str, typer.Argument(help="Split in percent per version: 3=90,4=10 (sums to 100).")],
    shadow: ShadowOpt = None,
    shadow_pct: ShadowPctOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Change the live split (and shadow) of the RUNNING app in place: no replica restarts, no dropped request."""
    cfg = _load(config, set_)
    _connect(address)
    from raymlops.serve.deploy import set_weights

    _echo_deploy(set_weights(cfg, _parse_weights(weights) or {}, shadow=shadow, shadow_pct=shadow_pct))


# --------------------------------------------------------------------------------------------- controller
controller_app = typer.Typer(help="The detached controller that runs the loop: triggers, retraining, canary "
                             "analysis, promotion and rollback.", no_args_is_help=True)
app.add_typer(controller_app, name="controller")
RequestOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--request-id", help="Idempotency key: a retried command with the same id counts once."),
]


def _connect_cluster(address: str | None, cfg=None) -> None:
    """Join the cluster where the controller runs: --address, the environment's address, or $RAY_ADDRESS."""
    from raymlops.errors import ControllerError

    env_address = cfg.environments[cfg.environment].address if cfg is not None and cfg.environment else None
    address = address or env_address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ControllerError("give the cluster the controller runs on: --address HOST:PORT or $RAY_ADDRESS (start "
                              "one with `ray start --head`; `raymlops controller start` without them runs it in "
                              "the foreground)")
    try:
        init_ray(address)
    except ConnectionError as err:
        raise ControllerError(f"cannot reach the Ray cluster at {address}: {err}; check --address / $RAY_ADDRESS") \
            from None


def _echo_event(e: dict) -> None:
    import datetime as dt

    at = dt.datetime.fromtimestamp(e["at"]).isoformat(sep=" ", timespec="seconds")
    typer.echo(f"{e['seq']:>5}  {at}  {e['kind']:<20} {e['message']}")


@controller_app.command("start")
def controller_start_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None) -> None:
    """Start the controller of CONFIG (a detached Ray actor; it resumes from its persisted state).

    With --address or $RAY_ADDRESS it runs on that cluster and this command returns. Without, Ray runs in this
    process and the controller with it: events are printed until Ctrl-C.
    """
    import time

    from raymlops.control.actor import call, start_controller, stop_controller

    cfg = _load(config, set_, env)
    address = address or (cfg.environments[cfg.environment].address if cfg.environment else None)
    local = not (address or os.environ.get("RAY_ADDRESS"))
    init_ray(address)
    _, started = start_controller(cfg)
    s = call(cfg, "status")
    typer.echo(f"controller of {cfg.name!r} {'started' if started else 'already running'}: champion "
               f"{s['champion'] or '-'}, rollout {s['rollout']['phase']}, run "
               f"{(s['run'] or {}).get('run_id') or '-'}")
    if not local:
        return
    _say("the controller runs in this process's Ray; press Ctrl-C to stop it (use --address for a cluster)")
    seen = s["last_event"]["seq"] if s["last_event"] else 0
    try:
        while True:
            for e in call(cfg, "events", seen):
                _echo_event(e)
                seen = e["seq"]
            time.sleep(1.0)
    except KeyboardInterrupt:
        stop_controller(cfg)
        _say("controller stopped; its state is kept and the next start resumes it")


@controller_app.command("stop")
def controller_stop_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None) -> None:
    """Stop the controller (serving keeps running; its state is kept for the next start)."""
    from raymlops.control.actor import stop_controller

    cfg = _load(config, set_, env)
    _connect_cluster(address, cfg)
    typer.echo("controller stopped" if stop_controller(cfg) else f"no controller of {cfg.name!r} was running")


@controller_app.command("status")
def controller_status_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None) -> None:
    """The live controller's state as JSON: run in flight, queue, rollout, weights, last monitor pass."""
    from raymlops.control.actor import call

    cfg = _load(config, set_, env)
    _connect_cluster(address, cfg)
    typer.echo(json.dumps(call(cfg, "status"), indent=2, default=str))


def _manual(config: Path, set_: list[str] | None, env: str | None, address: str | None, command: str,
            request_id: str | None, version: str | None = None) -> None:
    from raymlops.control.actor import call
    from raymlops.errors import ControllerError

    cfg = _load(config, set_, env)
    _connect_cluster(address, cfg)
    entry = call(cfg, "command", command, request_id, version)
    if entry is None:
        typer.echo(f"{command}: nothing to do")
        return
    if entry["kind"] == "rejected":
        raise ControllerError(entry["message"])
    typer.echo(f"{entry['kind']}: {entry['message']}")


@controller_app.command("pause")
def controller_pause_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                         address: AddressOpt = None) -> None:
    """Pause: no new runs start and no canary decision is taken (the split stays as it is)."""
    _manual(config, set_, env, address, "pause", request_id)


@controller_app.command("resume")
def controller_resume_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                          address: AddressOpt = None) -> None:
    """Resume after `pause`: queued runs and waiting canaries go on."""
    _manual(config, set_, env, address, "resume", request_id)


@app.command("trigger")
def trigger_cmd(config: ConfigArg, request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None,
                address: AddressOpt = None) -> None:
    """Ask the controller for a pipeline run now (queued behind a run in flight)."""
    from raymlops.control.actor import call

    cfg = _load(config, set_, env)
    _connect_cluster(address, cfg)
    rid = call(cfg, "trigger", request_id)
    s = call(cfg, "status")
    run = (s["run"] or {}).get("run_id")
    typer.echo(f"trigger {rid} accepted: " + (f"run {run} in flight" if run else "queued") +
               "; follow it with `raymlops events CONFIG --follow`")


@app.command("approve")
def approve_cmd(
    config: ConfigArg,
    version: Annotated[Optional[str], typer.Argument(help="The canary version (checked if given).")] = None,  # noqa: UP045
    request_id: RequestOpt = None, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
) -> None:
    """Promote the canary waiting at its last step (canary.require_approval: true)."""
    _manual(config, set_, env, address, "approve", request_id, version)


@app.command("events")
def events_cmd(
    config: ConfigArg,
    since: Annotated[int, typer.Option("--since", help="Only events after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (the newest).")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    set_: SetOpt = None, env: EnvOpt = None,
) -> None:
    """The controller's event log: triggers, runs, canary decisions with their checks, promotions, rollbacks.

    Read from the controller's state in storage, so it works with the controller stopped and without Ray.
    """
    import time

    from raymlops import storage
    from raymlops.control.ports import state_uri

    cfg = _load(config, set_, env)
    uri = state_uri(cfg)

    def read() -> list[dict]:
        if not storage.exists(uri):
            return []
        return json.loads(storage.read_text(uri))["state"]["events"]

    if not storage.exists(uri) and not follow:
        typer.echo(f"no controller events for {cfg.name!r} yet ({uri} does not exist); start one with "
                   "`raymlops controller start CONFIG`")
        return
    shown = [e for e in read() if e["seq"] > since][-limit:]
    try:
        while True:
            for e in shown:
                typer.echo(json.dumps(e, default=str)) if as_json else _echo_event(e)
                since = e["seq"]
            if not follow:
                return
            time.sleep(1.0)
            shown = [e for e in read() if e["seq"] > since]
    except KeyboardInterrupt:
        return


@app.command("status")
def status_cmd(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Everything as one JSON document.")] = False,
    set_: SetOpt = None, env: EnvOpt = None,
) -> None:
    """Where the loop stands: model versions and aliases, controller rollout and run, live serving, monitoring."""
    from raymlops.control.status import gather_status, render_status

    cfg = _load(config, set_, env)
    doc = gather_status(cfg)
    typer.echo(json.dumps(doc, indent=2, default=str) if as_json else render_status(doc))


# ----------------------------------------------------------------------------------------------- pipeline
pipeline_app = typer.Typer(help="Deliver the pipeline's own code: package, pre-flight, deploy per environment, "
                           "promote, roll back.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
RequiredEnvOpt = Annotated[str, typer.Option("--env", help="The environment (`environments:` in the config).")]


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
    from raymlops.pipeline import delivery

    cfg = _load(config, set_, env)
    impl = delivery.package_implementation(cfg, source)
    typer.echo(f"packaged {delivery.describe(impl)}")
    if not skip_preflight:
        init_ray(address or cfg.environments[env].address)
        problems = delivery.preflight(cfg, impl, progress=_say)
        if problems:
            from raymlops.errors import GateError

            raise GateError(f"pre-flight of {impl.short} failed; not deployed to {env}:\n  - " + "\n  - ".join(problems))
    delivery.deploy_implementation(cfg, impl, f"deployed by `raymlops pipeline deploy` from {impl.source}")
    typer.echo(f"{env}: pipeline implementation {impl.short} deployed; the next triggered run uses it")


@pipeline_app.command("list")
def pipeline_list_cmd(config: ConfigArg, set_: SetOpt = None) -> None:
    """Implementations deployed to each environment: current, history, runs and blessed models per implementation."""
    import datetime as dt

    from raymlops.pipeline import delivery

    base = _load(config, set_)
    if not base.environments:
        typer.echo("no environments in the config; add `environments:` (see configs/churn.yaml)")
        return
    for name in base.environments:
        cfg = _load(config, set_, name)
        state = delivery.env_state(cfg)
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
    from raymlops.errors import PipelineError
    from raymlops.pipeline import delivery

    source = _load(config, set_, source_env)
    state = delivery.env_state(source)
    if state.current is None:
        raise PipelineError(f"environment {source_env!r} has no deployed implementation to promote")
    delivery.promote_implementation(source, env, state.current, f"promoted from {source_env} by an operator")
    typer.echo(f"{env}: pipeline implementation {state.current[:12]} (from {source_env}) deployed")


@pipeline_app.command("approve")
def pipeline_approve_cmd(config: ConfigArg, env: RequiredEnvOpt, set_: SetOpt = None) -> None:
    """Approve the promotion into ENV of the implementation that earned it (promotion.require_approval)."""
    from raymlops.errors import PipelineError
    from raymlops.pipeline import delivery

    cfg = _load(config, set_, env)
    sources = [n for n, e in cfg.environments.items() if e.promote_to == env]
    if not sources:
        raise PipelineError(f"no environment promotes into {env!r} (set `promote_to: {env}` on one)")
    impl = delivery.approve_promotion(cfg, sources[0])
    typer.echo(f"{env}: pipeline implementation {impl.short} (from {sources[0]}) approved and deployed")


@pipeline_app.command("rollback")
def pipeline_rollback_cmd(config: ConfigArg, env: RequiredEnvOpt, set_: SetOpt = None) -> None:
    """Return ENV to the implementation deployed before the current one."""
    from raymlops.pipeline import delivery

    impl = delivery.rollback_implementation(_load(config, set_, env))
    typer.echo(f"{env}: pipeline implementation rolled back to {impl.short}")


# ----------------------------------------------------------------------------------------------- features
from raymlops.features.cli import features_app  # noqa: E402 - registered last, beside its peers

app.add_typer(features_app, name="features")


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and turn raymlops errors into messages and exit codes."""
    import logging

    # Schema migrations and the like are not news; MLflow sets its own level when imported, hence the env var.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        # standalone_mode=False: click hands us exit codes and errors instead of calling sys.exit itself.
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except RaymlopsError as err:
        _say(f"error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
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
        _say(f"unexpected error: {type(err).__name__}: {err}\n(set RAYMLOPS_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
