"""Pipelines of components on Ray: declare steps, run them as Ray tasks with caching, resume and lineage.

```python
from raymlops.pipeline import Pipeline, Step, component, run_pipeline

@component(outputs=("data",))
def make(ctx, rows: int):
    path = ctx.path("data.csv")
    ...  # write `rows` rows to path
    return {"data": ctx.artifact("data.csv", kind="dataset")}

@component
def count(ctx, data):
    return sum(1 for _ in open(data.uri)) - 1

pipe = Pipeline("demo", [Step(make, params={"rows": 10}), Step(count, inputs={"data": "make.data"})])
result = run_pipeline(pipe, storage_uri="./.raymlops", tracking_uri="sqlite:///./.raymlops/mlflow.db")
```
"""

from raymlops.pipeline.component import (
    Artifact,
    Component,
    Pipeline,
    Step,
    StepContext,
    component,
    digest_uri,
)
from raymlops.pipeline.runner import PipelineResult, StepResult, run_pipeline

__all__ = [
    "Artifact",
    "Component",
    "Pipeline",
    "PipelineResult",
    "Step",
    "StepContext",
    "StepResult",
    "component",
    "digest_uri",
    "run_pipeline",
]
