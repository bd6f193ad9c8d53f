"""`raymlops demo`: the loop on embedded defaults, narrated as a timeline."""

from __future__ import annotations

import time
from collections.abc import Callable

from raymlops import storage
from raymlops.config import Config


class Timeline:
    """Prints each step with the time since the demo started."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.say(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}")


def run_demo(cfg: Config, say: Callable[[str], None] = print, *, train: bool = True) -> dict[str, str]:
    """Generate data, validate it, land drifted and broken days, prepare, and (with `train`) run the pipeline."""
    from raymlops.data.synthetic import DriftSpec, generate
    from raymlops.data.validate import validate_data

    tl = Timeline(say)
    quiet = lambda _msg: None  # noqa: E731 - the timeline narrates; step chatter stays out of it
    landing = cfg.data.source
    tl(f"generating 7 days of churn data into {landing}")
    generate(landing, rows_per_day=2000, days=7, seed=0)

    out = validate_data(cfg, progress=quiet)
    tl(f"validated {out.report.rows:,} rows: {out.decision}"
       + (f"; froze schema v{out.schema.version} at {out.schema_uri}" if out.frozen_now else ""))
    where = {"schema": out.schema_uri, "clean report": out.html_uri}

    scratch = storage.join(cfg.storage_uri, "demo")
    drifted = storage.join(scratch, "drifted")
    generate(drifted, rows_per_day=2000, days=1, start_date="2026-01-08", seed=7,
             drift=DriftSpec(features={"monthly_charges": (15.0, 1.0)}, from_day=0))
    out = validate_data(cfg, data_uri=drifted, progress=quiet)
    fired = [d.feature for d in out.report.drift if d.drifted]
    tl(f"a drifted day: {out.decision} on {', '.join(fired) or 'nothing'}")
    where["drift report"] = out.html_uri

    broken = storage.join(scratch, "broken")
    generate(broken, rows_per_day=2000, days=1, start_date="2026-01-09", seed=8, schema_change=["rename_column"])
    out = validate_data(cfg, data_uri=broken, progress=quiet)
    tl(f"a day with a renamed column: {out.decision} ({len(out.report.anomalies)} anomalies) — "
       "the pipeline would refuse to train on it")
    where["schema-skew report"] = out.html_uri

    if train:
        from raymlops.pipeline.ct import run_ct_pipeline

        tl("running the continuous-training pipeline on the clean data")
        result = run_ct_pipeline(cfg, progress=lambda m: tl(f"  {m}"))
        tl(result.summary())
        if result.version is not None:
            from raymlops.registry.models import ModelRegistry

            reg = ModelRegistry(cfg.tracking_uri)
            if reg.get_by_alias(cfg.name, "champion") is None:
                # The controller promotes after a canary; with no champion yet there is nothing to compare with.
                reg.promote(cfg.name, result.version)
                tl(f"no champion yet: promoted v{result.version} to champion")
            where["lineage"] = f"raymlops lineage configs/churn.yaml {result.version}"
        where["runs"] = "raymlops runs configs/churn.yaml"
        where["MLflow"] = f"mlflow ui --backend-store-uri {cfg.tracking_uri}"
    return where
