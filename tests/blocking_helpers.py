"""A CT pipeline cut down to its real ``validate`` step, plugged into the controller with ``controller.pipeline``.

The step is the one ``raymlops run`` executes (ingest, profile, validate against the schema version in force, keep
the report of a STOP and raise ``DataValidationError``), with the same parameters as the CT pipeline; the steps
after it are left out, so a run takes seconds and registers nothing.
"""

from __future__ import annotations

from raymlops.config import Config
from raymlops.ct import validate
from raymlops.data.ingest import snapshot
from raymlops.data.validate import validation_params
from raymlops.pipeline.component import Pipeline, Step
from raymlops.pipeline.runner import PipelineResult, run_pipeline


def validating_pipeline(cfg: Config, *, run_id: str | None = None, resume_run_id: str | None = None,
                        progress=print) -> PipelineResult:
    params = {"validate.data_digest": snapshot(cfg.data.source, cfg.data.format)[1]}
    params |= {f"validate.{k}": v for k, v in validation_params(cfg).items()}
    return run_pipeline(Pipeline(f"{cfg.name}-validate", [Step(validate)]), storage_uri=cfg.storage_uri,
                        tracking_uri=None, config=cfg, params=params, resume_run_id=resume_run_id, run_id=run_id,
                        progress=progress)
