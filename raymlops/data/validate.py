"""Data validation step: ingest → profile (Ray Data) → compare with the frozen schema and reference → report.

The first accepted dataset freezes the schema (YAML, human-editable) and its statistics under
``{storage_uri}/schemas/{name}/`` (see ``raymlops.data.schemas`` for versions); every later dataset is judged
against the latest version. Drift is measured against the champion's training data (the statistics recorded with
the model version, tag ``reference_uri``), else against the statistics frozen with the schema; an explicit
``validation.reference_uri`` wins over both. The report names the reference it used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

from raymlops import storage
from raymlops.config import Config
from raymlops.core.report_html import render_report
from raymlops.core.schema import Schema, infer_schema
from raymlops.core.sketches import DatasetProfile, reference_edges
from raymlops.core.validation import ReferenceSource, ValidationPolicy, ValidationReport, validate
from raymlops.data.ingest import IngestResult, ingest_data
from raymlops.data.profile import profile_dataset
from raymlops.data.schemas import (  # noqa: F401 - FrozenSchema, freeze_schema: kept importable here
    FrozenSchema,
    champion_version,
    freeze_schema,
    load_frozen_schema,
    read_profile,
    reference_uri_of,
    schema_dir,
)

REFERENCE_TAG = "reference_uri"  # model version tag: statistics of the data the version was trained on


@dataclass
class ValidationOutcome:
    """What a validation run decided and where it wrote its report (and the profile of the data, for
    ``raymlops schema accept``)."""

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
    profile_uri: str = ""
    reference_source: ReferenceSource | None = None

    @property
    def decision(self) -> str:
        return self.report.decision


def reference_source(cfg: Config, frozen: FrozenSchema, progress=print) -> ReferenceSource | None:
    """Which drift reference data judged against ``frozen`` is compared with: ``validation.reference_uri`` when
    set, else the champion's training statistics, else those frozen with the schema version; None when none."""
    configured = cfg.validation.reference_uri
    if configured:
        return ReferenceSource("configured", configured)
    champ = champion_version(cfg)
    if champ is not None:
        uri = champ.tags.get(REFERENCE_TAG)
        if uri and storage.exists(uri):
            return ReferenceSource("champion", uri, champ.version)
        why = f"its {REFERENCE_TAG} {uri} is gone" if uri else f"it has no {REFERENCE_TAG} tag (registered earlier)"
        progress(f"champion v{champ.version} has no reference statistics ({why}): drift is measured against the "
                 "frozen schema's")
    if frozen.reference is None:
        return None
    return ReferenceSource("frozen", reference_uri_of(frozen.uri), frozen.schema.version)


def _quiet(_message: str) -> None:
    pass


def validation_params(cfg: Config) -> dict[str, str]:
    """What, beside the data and the config, decides a validation: the schema version and the drift reference.

    The CT pipeline passes these as the validate step's parameters, so a cached validation is reused only while
    both are unchanged (a newly accepted schema version or a new champion validates the same data again).
    """
    frozen = load_frozen_schema(cfg)
    if frozen is None:
        # This validation freezes v1 (with its reference) unless it stops: name what the next run will then see,
        # so an unchanged rerun is a cache hit.
        first = storage.join(schema_dir(cfg), "v1.yaml")
        return {"schema_version": "v1", "reference": ReferenceSource("frozen", reference_uri_of(first), 1).describe()}
    source = reference_source(cfg, frozen, progress=_quiet)
    return {"schema_version": f"v{frozen.schema.version}", "reference": source.describe() if source else ""}


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
        enforce_ranges=v.enforce_ranges if isinstance(v.enforce_ranges, bool) else frozenset(v.enforce_ranges),
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
    source_of_reference = None
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
        schema = frozen.schema
        # The reference is chosen before profiling: the data's histograms are computed on its bin edges.
        source_of_reference = reference_source(cfg, frozen, progress)
        reference = (frozen.reference if source_of_reference is None or source_of_reference.kind == "frozen"
                     else read_profile(source_of_reference.uri))
        edges = reference_edges(reference, cfg.validation.histogram_bins) if reference else None
        ranges = {c.name: (c.min, c.max) for c in schema.columns
                  if c.kind == "numeric" and (c.min is not None or c.max is not None)}
        progress(f"profiling against schema v{schema.version} ({frozen.uri})"
                 + (f", drift reference: {source_of_reference.describe()}" if source_of_reference else ""))
        profile = profile_dataset(ingested.dataset, categorical=categorical, skip=skip, edges=edges,
                                  ranges=ranges or None)
    progress(f"  profiled in {time.perf_counter() - t0:.1f}s")

    report = validate(schema, reference, profile, policy_from_config(cfg),
                      observed_dtypes={f.name: str(f.type) for f in ingested.schema},
                      reference_source=source_of_reference)
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
    outcome = ValidationOutcome(
        report=report,
        report_uri="",
        html_uri="",
        schema=schema,
        schema_uri=schema_uri,
        profile=profile,
        reference=reference,
        frozen_now=frozen_now,
        source=source,
        files=ingested.files,
        reference_source=source_of_reference,
    )
    return keep_report(cfg, outcome, out)


def keep_report(cfg: Config, outcome: ValidationOutcome, out: str) -> ValidationOutcome:
    """Write the report (JSON, HTML) and the data's profile under ``out``; the outcome with their URIs.

    The profile lies beside the report because ``raymlops schema accept`` builds the next version (complete
    domains, new ranges) and its reference statistics from it.
    """
    report_uri, html_uri = storage.join(out, "report.json"), storage.join(out, "report.html")
    profile_uri = storage.join(out, "profile.json")
    storage.atomic_write_text(profile_uri, json.dumps(outcome.profile.to_dict()))
    doc = outcome.report.to_dict() | {"source": outcome.source, "files": outcome.files,
                                      "schema_uri": outcome.schema_uri, "profile_uri": profile_uri}
    storage.atomic_write_text(report_uri, json.dumps(doc, indent=2, default=str))
    reference = outcome.reference if not outcome.frozen_now else None
    storage.atomic_write_text(
        html_uri, render_report(outcome.report, reference, outcome.profile, title=f"{cfg.name}: {outcome.source}")
    )
    return replace(outcome, report_uri=report_uri, html_uri=html_uri, profile_uri=profile_uri)
