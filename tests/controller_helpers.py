"""A fast stand-in for the CT pipeline, plugged into the controller with ``controller.pipeline``.

It builds a real package (transform fitted on synthetic rows, a model with a fixed seed; no Ray Train, so a run
takes about a second) and registers it in the real MLflow registry, exactly once per run id: the package holds
the run id, so its digest, and the registry's idempotent ``register`` returns the same version on a repeat. The
seed comes from ``{storage_uri}/fake-pipeline-seed`` when the test writes one: a different seed is a different,
worse model for labels that follow the seed-1 model.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from raymlops import storage
from raymlops.config import Config
from raymlops.registry.models import ModelRegistry
from tests.serving_helpers import build_package


@dataclass
class FakeResult:
    run_id: str
    status: str
    version: int | None
    error: str | None = None


def seed_file(cfg: Config) -> Path:
    return Path(cfg.storage_uri) / "fake-pipeline-seed"


def extra_feature_file(cfg: Config) -> Path:
    """When it exists, the next package needs a feature the clients never send (it fails its contract test)."""
    return Path(cfg.storage_uri) / "fake-pipeline-extra-feature"


def fake_pipeline(cfg: Config, *, run_id: str | None = None, resume_run_id: str | None = None,
                  progress=print) -> FakeResult:
    run_id = resume_run_id or run_id or f"fake-{uuid.uuid4().hex[:8]}"
    # Through the storage layer, not Path: on a cluster storage_uri is s3://... (tests/cluster).
    seed_uri, extra_uri = (storage.join(cfg.storage_uri, f.name) for f in (seed_file(cfg), extra_feature_file(cfg)))
    seed = int(storage.read_text(seed_uri)) if storage.exists(seed_uri) else 1
    progress(f"fake run {run_id}: seed {seed}")
    time.sleep(0.5)  # a kill can land while the run is in flight
    storage.makedirs(storage.join(cfg.storage_uri, "fake-packages"))
    out = storage.join(cfg.storage_uri, "fake-packages", run_id)
    extra = storage.read_text(extra_uri).strip() if storage.exists(extra_uri) else None
    info = build_package(cfg, out, seed=seed, metrics={"run_id": run_id}, extra_feature=extra)
    version = ModelRegistry(cfg.tracking_uri).register(cfg.name, info.uri, run_id=None, digest=info.digest,
                                                       tags={"pipeline_run_id": run_id}).version
    progress(f"fake run {run_id}: registered version {version}")
    return FakeResult(run_id, "completed", version)
