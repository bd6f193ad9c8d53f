"""The read side of the Python API: a pipeline's runs and a model version's lineage, as typed objects.

```python
import raymlops
for run in raymlops.runs("configs/churn.yaml"):
    print(run.pipeline_run_id, run.status, run.steps)
print(raymlops.lineage("configs/churn.yaml", "champion").render())
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raymlops.registry.models import ModelRegistry
from raymlops.registry.tracking import Lineage, MetadataStore, RunSummary

__all__ = ["lineage", "runs"]


def _config(config: Any):
    from raymlops.config import Config, load_config

    return config if isinstance(config, Config) else load_config(Path(config) if config else None, [])


def runs(config: Any = None, *, limit: int = 20) -> list[RunSummary]:
    """The latest pipeline runs of ``config`` (a Config, a YAML path, or None for the defaults), newest first."""
    cfg = _config(config)
    return MetadataStore(cfg.tracking_uri).list_runs(cfg.name, limit)


def lineage(config: Any, version: str | int) -> Lineage:
    """Model version (number or alias) → pipeline run → steps, artifacts and data snapshot."""
    cfg = _config(config)
    v = ModelRegistry(cfg.tracking_uri).resolve(cfg.name, str(version)).version
    return MetadataStore(cfg.tracking_uri).lineage(cfg.name, v)
