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
AddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--address", help="Ray cluster address. Default: $RAY_ADDRESS, else a local Ray."),
]


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _load(config: Path | None, overrides: list[str] | None):
    from raymlops.config import load_config

    return load_config(config, overrides or [])


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
    address: AddressOpt = None,
) -> None:
    """Profile a dataset and check it against the frozen schema (schema skew → exit 3) and reference (drift)."""
    cfg = _load(config, set_)
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
    set_: SetOpt = None,
    resume: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--resume", help="Resume a failed run: only steps that did not complete run again."),
    ] = None,
    address: AddressOpt = None,
) -> None:
    """Run the continuous-training pipeline: validate → prepare → train (+tune) → evaluate → bless → register."""
    cfg = _load(config, set_)
    init_ray(address)
    from raymlops.pipeline.ct import run_ct_pipeline

    result = run_ct_pipeline(cfg, resume_run_id=resume, progress=_say)
    typer.echo(result.summary())
    result.raise_for_status()


@app.command("runs")
def runs_cmd(
    config: ConfigArg,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs, newest first.")] = 20,
    set_: SetOpt = None,
) -> None:
    """List pipeline runs with their status and step states."""
    import datetime as dt

    from raymlops.registry.tracking import MetadataStore

    cfg = _load(config, set_)
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
    set_: SetOpt = None,
) -> None:
    """Walk from a model version back to its pipeline run, steps, artifacts and data."""
    from raymlops.registry.models import ModelRegistry
    from raymlops.registry.tracking import MetadataStore

    cfg = _load(config, set_)
    v = ModelRegistry(cfg.tracking_uri).resolve(cfg.name, version).version
    typer.echo(MetadataStore(cfg.tracking_uri).lineage(cfg.name, v).render())


@app.command("promote")
def promote_cmd(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="Version number or alias to make the champion.")],
    set_: SetOpt = None,
) -> None:
    """Make a version the champion (the old champion is kept as `previous` for rollback)."""
    from raymlops.registry.models import ModelRegistry

    cfg = _load(config, set_)
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.promote(cfg.name, reg.resolve(cfg.name, version).version)
    typer.echo(f"{cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}")


@app.command("rollback")
def rollback_cmd(config: ConfigArg, set_: SetOpt = None) -> None:
    """Make the `previous` champion the champion again."""
    from raymlops.registry.models import ModelRegistry

    cfg = _load(config, set_)
    reg = ModelRegistry(cfg.tracking_uri)
    info = reg.rollback(cfg.name)
    typer.echo(f"rolled back: {cfg.name} v{info.version} is the champion; aliases: {reg.aliases(cfg.name)}")


@app.command("demo")
def demo_cmd(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="Config to run the demo with. Default: the embedded defaults."),
    ] = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Generate data, validate it (clean, drifted, broken), then run the CT pipeline; prints a timeline."""
    cfg = _load(config, set_)
    init_ray(address)
    from raymlops.demo import run_demo

    where = run_demo(cfg, say=typer.echo)
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
def config_show(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the fully resolved config (defaults, overrides and ${ENV} filled in) as YAML."""
    import yaml

    cfg = _load(config, set_)
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
    set_: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """(Re)deploy the serving app from the registry's aliases; a running app is reconfigured in place.

    Without --address or $RAY_ADDRESS, Ray runs in this process: the command keeps serving until Ctrl-C.
    """
    cfg = _load(config, set_)
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
def undeploy_cmd(config: ConfigArg, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Delete the serving app (its replicas drain their prediction logs first)."""
    cfg = _load(config, set_)
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
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            return err.exit_code
        if isinstance(err, click.exceptions.Abort):
            return 1
        if os.environ.get("RAYMLOPS_DEBUG"):
            traceback.print_exc()
        _say(f"unexpected error: {type(err).__name__}: {err}\n(set RAYMLOPS_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
