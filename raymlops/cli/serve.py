"""`raymlops deploy|undeploy|predict` and `raymlops serve ...`: the HTTP serving app and batch prediction."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from raymlops._ray import cluster_address, connect, init_ray
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


def _echo_deploy(info, as_json: bool = False) -> None:
    if as_json:
        emit(info, True)
        return
    split = ", ".join(f"v{v} {w:g}%" for v, w in info.weights.items())
    shadow = f"; shadow v{info.shadow} mirrors {info.shadow_pct:g}%" if info.shadow else ""
    typer.echo(f"serving app '{info.app_name}' at {info.url} ({split}{shadow}; ingress {info.ingress})")
    if info.ingress != "haproxy":  # behind HAProxy the one URL above balances over every replica already
        for url in info.direct_urls:
            typer.echo(f"  direct (replica port): {url}")


def _stop_on_sigterm() -> None:
    """SIGTERM (docker, systemd, Kubernetes) takes Ctrl-C's path: undeploy (drains in-flight requests and the
    prediction log), then exit 0, instead of dying with a stack dump."""
    import signal

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain short
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command("deploy")
def deploy_cmd(
    config: ConfigArg,
    weights: WeightsOpt = None,
    shadow: ShadowOpt = None,
    shadow_pct: ShadowPctOpt = None,
    ingress: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--ingress", help="auto, haproxy, direct or proxy (default serving.ingress; applies when Serve "
                     "starts): haproxy balances one URL over every replica's own port."),
    ] = None,
    set_: SetOpt = None, env: EnvOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """(Re)deploy the serving app from the registry's aliases; a running app is reconfigured in place.

    Without --address or $RAY_ADDRESS, Ray runs in this process: the command keeps serving until Ctrl-C or SIGTERM,
    then drains in-flight requests and the prediction log and exits 0.
    """
    from raymlops.control.operations import ensure_no_controller

    if ingress is not None:  # validated with the config: a bad value is named like any other key
        set_ = [*(set_ or []), f"serving.ingress={ingress}"]
    cfg = load(config, set_, env)
    ensure_no_controller(cfg, "deploy", address)
    address = cluster_address(cfg, address)
    init_ray(address)
    from raymlops.serve.deploy import deploy, undeploy

    if address is not None:  # deployed to a cluster: it keeps serving after this command
        _echo_deploy(deploy(cfg, weights=_parse_weights(weights), shadow=shadow, shadow_pct=shadow_pct), as_json)
        return
    import time

    _stop_on_sigterm()  # after init_ray, whose own SIGTERM handler would exit 1 without draining
    try:
        _echo_deploy(deploy(cfg, weights=_parse_weights(weights), shadow=shadow, shadow_pct=shadow_pct), as_json)
        say("serving from this process's Ray; press Ctrl-C to stop (use --address to deploy to a cluster)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        undeploy(cfg)  # replicas finish in-flight requests and drain their prediction logs
        say("stopped")


@app.command("undeploy")
def undeploy_cmd(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, address: AddressOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Delete the serving app (its replicas drain their prediction logs first)."""
    from raymlops.control.operations import ensure_no_controller

    cfg = load(config, set_, env)
    ensure_no_controller(cfg, "undeploy", address)
    connect(cfg, address)
    from raymlops.serve.deploy import app_name, undeploy

    name = app_name(cfg)
    deleted = undeploy(cfg)
    emit({"app_name": name, "deleted": deleted}, as_json,
         f"deleted serving app '{name}'" if deleted else f"serving app '{name}' was not deployed")


@serve_app.command("status")
def serve_status_cmd(config: ConfigArg, set_: SetOpt = None, address: AddressOpt = None,
                     as_json: JsonOpt = False) -> None:
    """Serve's view of the app plus the app's own model info (versions, weights, roles, counters) as JSON (either
    way; --json is accepted like everywhere)."""
    cfg = load(config, set_)
    connect(cfg, address)
    from raymlops.serve.deploy import status

    emit(status(cfg), True)


@serve_app.command("weights")
def serve_weights_cmd(
    config: ConfigArg,
    weights: Annotated[str, typer.Argument(help="Split in percent per version: 3=90,4=10 (sums to 100).")],
    shadow: ShadowOpt = None,
    shadow_pct: ShadowPctOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the live split (and shadow) of the RUNNING app in place: no replica restarts, no dropped request.

    Refused while a controller of CONFIG runs (it owns the split): use its commands instead.
    """
    from raymlops.control.operations import ensure_no_controller

    cfg = load(config, set_)
    ensure_no_controller(cfg, "serve weights", address)
    connect(cfg, address)
    from raymlops.serve.deploy import set_weights

    _echo_deploy(set_weights(cfg, _parse_weights(weights) or {}, shadow=shadow, shadow_pct=shadow_pct), as_json)



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
    as_json: JsonOpt = False,
) -> None:
    """Score a dataset with a registered model version on Ray Data (same package and transform as serving)."""
    cfg = load(config, set_)
    with progress("batch prediction", enabled=not as_json) as step:
        init_ray(address)
        from raymlops.serve.batch import predict_batch

        result = predict_batch(cfg, input_uri, output_uri, version=version, progress=step)
    emit(result, as_json, f"wrote {result.rows:,} predictions of {cfg.name} v{result.version} to {result.output_uri}")


