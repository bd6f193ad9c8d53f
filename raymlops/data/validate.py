"""Data validation step: ingest → profile (Ray Data) → compare with the frozen schema and reference → report.

The first accepted dataset freezes the schema (YAML, human-editable) and its statistics as the drift reference under
``{storage_uri}/schemas/{name}/``; every later dataset is judged against the latest frozen version.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from raymlops import storage
from raymlops.config import Config
from raymlops.core.report_html import render_report
from raymlops.core.schema import Schema, infer_schema
from raymlops.core.sketches import DatasetProfile, reference_edges
from raymlops.core.validation import ValidationPolicy, ValidationReport, validate
from raymlops.data.ingest import IngestResult, ingest_data
from raymlops.data.profile import profile_dataset
from raymlops.errors import SchemaError

_VERSION_FILE = re.compile(r"v(\d+)\.yaml$")


@dataclass
class FrozenSchema:
    schema: Schema
    reference: DatasetProfile | None
    uri: str


@dataclass
class ValidationOutcome:
    """What a validation run decided and where it wrote its report."""

    report: ValidationReport
    report_uri: str
    html_uri: str
    schema: Schema
    schema_uri: str
    profile: DatasetProfile
    reference: DatasetProfile | None
    frozen_now: bool
    source: str
    files: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str:
        return self.report.decision


def schema_dir(cfg: Config) -> str:
    return storage.join(cfg.storage_uri, "schemas", cfg.name)


def load_frozen_schema(cfg: Config) -> FrozenSchema | None:
    """The schema named by `validation.schema_uri`, else the latest frozen version; None if nothing is frozen."""
    uri = cfg.validation.schema_uri
    if uri is None:
        versions = [
            (int(m.group(1)), f)
            for f in storage.list_files(schema_dir(cfg), (".yaml",))
            if (m := _VERSION_FILE.search(f))
        ]
        if not versions:
            return None
        uri = max(versions)[1]
    elif not storage.exists(uri):
        raise SchemaError(f"validation.schema_uri {uri} does not exist; fix the path or remove the key to infer one")
    schema = Schema.from_yaml(storage.read_text(uri))
    ref_uri = cfg.validation.reference_uri or re.sub(r"\.yaml$", ".reference.json", uri)
    reference = None
    if storage.exists(ref_uri):
        try:
            reference = DatasetProfile.from_dict(json.loads(storage.read_text(ref_uri)))
        except (ValueError, KeyError, TypeError) as err:
            raise SchemaError(f"reference statistics {ref_uri} are unreadable ({err}); delete the file to "
                              "re-freeze from the next accepted dataset") from None
    return FrozenSchema(schema, reference, uri)


def freeze_schema(cfg: Config, schema: Schema, reference: DatasetProfile) -> str:
    """Write the schema (YAML) and its reference statistics (JSON) as the next version; returns the schema URI."""
    base = schema_dir(cfg)
    uri = storage.join(base, f"v{schema.version}.yaml")
    # Reference first: a schema file without its reference would look frozen but could not judge drift.
    storage.atomic_write_text(storage.join(base, f"v{schema.version}.reference.json"), json.dumps(reference.to_dict()))
    storage.atomic_write_text(uri, schema.to_yaml())
    return uri


def policy_from_config(cfg: Config) -> ValidationPolicy:
    v = cfg.validation
    return ValidationPolicy(
        max_null_pct=v.max_null_pct,
        max_unseen_category_pct=v.max_unseen_category_pct,
        max_out_of_range_pct=v.max_out_of_range_pct,
        numeric_rule=(v.drift.numeric.metric, v.drift.numeric.threshold),
        categorical_rule=(v.drift.categorical.metric, v.drift.categorical.threshold),
        feature_rules={k: (r.metric, r.threshold) for k, r in v.drift.features.items()},
        stop_on_drift=v.stop_on_drift,
        histogram_bins=v.histogram_bins,
    )


def profile_columns(cfg: Config) -> tuple[set[str] | None, set[str]]:
    """(columns forced categorical, columns not profiled) for this config."""
    categorical = set(cfg.data.categorical) if cfg.data.categorical is not None else None
    if cfg.data.task != "regression":
        categorical = (categorical or set()) | {cfg.data.label}
    skip = set(cfg.data.id_columns) | ({cfg.data.timestamp} if cfg.data.timestamp else set())
    return categorical, skip


def validate_data(
    cfg: Config,
    *,
    data_uri: str | None = None,
    ingested: IngestResult | None = None,
    report_dir: str | None = None,
    progress=print,
) -> ValidationOutcome:
    """Validate a dataset against the frozen schema and reference, freezing them from it if none exist yet."""
    source = data_uri or cfg.data.source
    if ingested is None:
        progress(f"ingesting {source}")
        ingested = ingest_data(cfg.data, source, local=True)
    progress(f"  {ingested.rows:,} rows in {len(ingested.files)} file(s)")
    categorical, skip = profile_columns(cfg)
    frozen = load_frozen_schema(cfg)
    t0 = time.perf_counter()
    if frozen is None:
        progress("profiling (no frozen schema yet: this dataset will define it)")
        profile = profile_dataset(ingested.dataset, categorical=categorical, skip=skip)
        schema = infer_schema(
            profile,
            name=cfg.name,
            task=cfg.data.task,
            label=cfg.data.label,
            timestamp=cfg.data.timestamp,
            id_columns=cfg.data.id_columns,
            features=cfg.data.features,
            categorical=cfg.data.categorical,
            range_margin_pct=cfg.validation.range_margin_pct,
            version=1,
        )
        reference = None
    else:
        schema, reference = frozen.schema, frozen.reference
        edges = reference_edges(reference, cfg.validation.histogram_bins) if reference else None
        progress(f"profiling against schema v{schema.version} ({frozen.uri})")
        profile = profile_dataset(ingested.dataset, categorical=categorical, skip=skip, edges=edges)
    progress(f"  profiled in {time.perf_counter() - t0:.1f}s")

    report = validate(schema, reference, profile, policy_from_config(cfg), observed_dtypes={f.name: str(f.type) for f in ingested.schema})
    frozen_now = False
    if frozen is None and report.decision != "STOP":
        schema_uri = freeze_schema(cfg, schema, profile)
        reference, frozen_now = profile, True
        progress(f"froze schema v{schema.version} and reference statistics at {schema_uri}")
    else:
        schema_uri = frozen.uri if frozen else ""

    out = report_dir or storage.join(
        cfg.storage_uri, "reports", cfg.name, "validation", time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
    )
    report_uri, html_uri = storage.join(out, "report.json"), storage.join(out, "report.html")
    doc = report.to_dict() | {"source": source, "files": ingested.files, "schema_uri": schema_uri}
    storage.atomic_write_text(report_uri, json.dumps(doc, indent=2, default=str))
    storage.atomic_write_text(
        html_uri, render_report(report, reference if not frozen_now else None, profile, title=f"{cfg.name}: {source}")
    )
    return ValidationOutcome(
        report=report,
        report_uri=report_uri,
        html_uri=html_uri,
        schema=schema,
        schema_uri=schema_uri,
        profile=profile,
        reference=reference,
        frozen_now=frozen_now,
        source=source,
        files=ingested.files,
    )
