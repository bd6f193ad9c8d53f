"""`raymlops init DIR`: a starter project (pipeline config, feature repo, example data) to run the commands on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raymlops.cli._common import JsonOpt, app, emit


@app.command("init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Project directory (created if missing).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite the starter files if they exist.")] = False,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Example rows per day (3 days).")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Write a starter project: pipeline.yaml (the example churn config, data pointed at the project), features.yaml
    (a feature repo) and small example data under data/. Refuses to overwrite files without --force."""
    from raymlops.data.starter import CONFIG_NAME, FEATURES_NAME, write_starter

    project = write_starter(directory, force=force, rows_per_day=rows)

    def text() -> str:
        return "\n".join([
            f"wrote {project.config}, {project.feature_repo} and {project.rows:,} example rows under "
            f"{directory / 'data'}", "next:", f"  cd {directory}",
            f"  raymlops validate {CONFIG_NAME}          # profile the example data, freeze its schema",
            f"  raymlops run {CONFIG_NAME}               # train, evaluate, bless and register a model",
            f"  raymlops features list --repo {FEATURES_NAME}",
        ])

    emit(project, as_json, text)
