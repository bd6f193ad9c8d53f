"""`raymlops data generate` and `raymlops validate`: synthetic data, and a dataset checked against its schema."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from raymlops._ray import init_ray_later
from raymlops.cli._common import AddressOpt, ConfigArg, EnvOpt, JsonOpt, SetOpt, app, emit, load, progress

data_app = typer.Typer(help="Synthetic data for demos, tests and benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


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
    as_json: JsonOpt = False,
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
    emit({"out": out, "rows": result.rows, "files": result.files}, as_json,
         f"wrote {result.rows:,} rows in {len(result.files)} files under {out}")


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
    as_json: JsonOpt = False,
) -> None:
    """Profile a dataset and check it against the frozen schema (schema skew → exit 3) and reference (drift).

    Parquet data of at most data.local_max_rows rows is validated in this process without starting Ray.
    """
    cfg = load(config, set_, env)
    init_ray_later(address)  # Ray starts only if the data is too big to validate here (data.local_max_rows)
    from raymlops.data.validate import validate_data

    with progress("validating", enabled=not as_json) as step:
        outcome = validate_data(cfg, data_uri=data, progress=step)
    emit({"decision": outcome.decision, "source": outcome.source, "schema_version": outcome.schema.version,
          "schema_uri": outcome.schema_uri, "frozen_now": outcome.frozen_now, "report_uri": outcome.report_uri,
          "html_uri": outcome.html_uri, "report": outcome.report.to_dict()}, as_json,
         f"{outcome.report.summary()}\nreport: {outcome.report_uri}\nhtml:   {outcome.html_uri}")
    if outcome.decision == "STOP":
        raise typer.Exit(3)


