"""Feature-store work as pipeline components (the one module of ``features`` that imports ``pipeline``).

```python
from raymlops.features.components import materialize_step
Pipeline("features", [Step(materialize_step, params={"full": False})])
```
"""

from __future__ import annotations

from raymlops.features.training import materialize_for_config
from raymlops.pipeline.component import component

__all__ = ["materialize_step"]


@component(outputs=("materialized",), executor="driver", config_keys=("features",))
def materialize_step(ctx, full: bool = False):
    """Materialise the config's feature service into the online store; logs rows and entities per view."""
    results = materialize_for_config(ctx.config, full=full)
    for r in results:
        ctx.progress(r.summary())
    ctx.log_metrics({f"{r.view}_entities": r.entities for r in results})
    return {"materialized": [r.to_dict() for r in results]}
