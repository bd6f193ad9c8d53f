"""`raymlops config schema|show` and `raymlops demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from raymlops._ray import init_ray, log_under
from raymlops.cli._common import AddressOpt, ConfigArg, EnvOpt, JsonOpt, SetOpt, app, emit, load

config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("schema")
def config_schema(as_json: JsonOpt = False) -> None:
    """Print the JSON schema of the pipeline config (JSON either way; --json is accepted like everywhere)."""
    from raymlops.config import config_json_schema

    emit(config_json_schema(), True)


@config_app.command("show")
def config_show(config: ConfigArg, set_: SetOpt = None, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Print the fully resolved config (defaults, environment, overrides and ${ENV} filled in) as YAML or JSON."""
    import yaml

    doc = load(config, set_, env).model_dump(mode="json")
    emit(doc, as_json, lambda: yaml.safe_dump(doc, sort_keys=False))


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
    from raymlops.demo import DEMO_OVERRIDES, QUICK_OVERRIDES, demo_config, free_port, run_demo

    cfg = load(config, [*DEMO_OVERRIDES, *(QUICK_OVERRIDES if quick else []), *(set_ or [])])
    port = free_port(cfg.serving.host, cfg.serving.port)
    init_ray(address)
    where = run_demo(demo_config(cfg, port), say=typer.echo, quick=quick, bad_model=bad_model)
    log = log_under(cfg.storage_uri)  # None with -v: Ray's output was shown
    if log:
        where["Ray's own logs"] = log
    typer.echo("\nwhere to look:")
    for what, uri in where.items():
        typer.echo(f"  {what:<20} {uri}")
