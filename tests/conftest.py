"""Session-wide fixtures.

Unit tests must not start Ray: `tests/unit/conftest.py` makes `ray.init` fail. Integration and e2e tests share one
local Ray per session (`ray_session`), started lazily and small enough for a 2-core machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from raymlops._ray import apply_env_defaults
from tests.ci_guard import pytest_runtest_makereport  # noqa: F401 - the hook: under CI a skip is a failure

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray exports metrics every 10 s by default; the scrape test (test_metrics_scrape.py) would wait that long.
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
apply_env_defaults()  # the same settings as every local Ray of the CLI and the Python API


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (num_cpus=2, no dashboard, 256 MiB object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """A migrated MLflow SQLite database, created once per session and copied per test (migrations cost seconds)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return path


@pytest.fixture
def tracking_uri(_mlflow_template, tmp_path) -> str:
    """A fresh, already migrated MLflow SQLite tracking URI for one test."""
    dst = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, dst)
    return f"sqlite:///{dst}"
