"""Schema versions: every accepted schema is kept as ``{storage_uri}/schemas/{name}/vN.yaml`` beside its reference
statistics ``vN.reference.json``; validation uses the latest (or the one ``validation.schema_uri`` pins).

The first accepted dataset freezes v1 (``raymlops validate``). Later versions come from ``raymlops schema accept``:
from a validation report's anomalies (``propose_from_report``) or from a YAML file the user edited. A new version's
reference statistics are the profile of the data in the report it was accepted from (that data has the new shape,
so its types and categories match the new schema); an edited file accepted without a report carries the previous
version's reference. Versions are never overwritten or deleted.

A version that would drop a feature the champion model needs is refused (``SchemaError``, exit code 2): the
champion serves on those columns, so they cannot leave the data while it is live.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops import storage
from raymlops.config import Config
from raymlops.core.schema import Schema
from raymlops.core.schema_evolution import (
    SchemaChange,
    SchemaProposal,
    missing_features,
    propose_schema,
    schema_diff,
)
from raymlops.core.sketches import DatasetProfile
from raymlops.core.validation import ValidationReport
from raymlops.errors import DataError, SchemaError

if TYPE_CHECKING:
    from raymlops.registry.models import ModelVersionInfo

__all__ = [
    "AcceptedSchema",
    "FrozenSchema",
    "SchemaPlan",
    "accept_hint",
    "accept_schema",
    "champion_version",
    "freeze_schema",
    "latest_schema_version",
    "load_frozen_schema",
    "load_report",
    "load_schema_version",
    "plan_from_file",
    "propose_from_report",
    "read_profile",
    "reference_uri_of",
    "schema_dir",
    "schema_versions",
]

_VERSION_FILE = re.compile(r"(?:^|/)v(\d+)\.yaml$")


@dataclass
class FrozenSchema:
    """A schema version as validation uses it: the schema, its reference statistics (if any) and its URI."""

    schema: Schema
    reference: DatasetProfile | None
    uri: str


@dataclass
class SchemaPlan:
    """A candidate next version: what it is based on, the changes, and the reference statistics it would carry."""

    base: FrozenSchema
    proposal: SchemaProposal
    reference_uri: str | None  # profile to freeze with the new version; None carries the base's
    notes: list[str] = field(default_factory=list)

    @property
    def schema(self) -> Schema:
        return self.proposal.schema


@dataclass
class AcceptedSchema:
    """A version written by ``accept_schema``."""

    version: int
    uri: str
    reference_uri: str | None
    changes: list[SchemaChange]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ versions
def schema_dir(cfg: Config) -> str:
    """Where the versions of this pipeline's schema live."""
    return storage.join(cfg.storage_uri, "schemas", cfg.name)


def schema_versions(cfg: Config) -> dict[int, str]:
    """Version number -> URI of every schema version kept for this pipeline (empty when none is frozen yet)."""
    return {
        int(m.group(1)): f
        for f in storage.list_files(schema_dir(cfg), (".yaml",))
        if (m := _VERSION_FILE.search(f))
    }


def latest_schema_version(cfg: Config) -> int | None:
    """The version number validation judges new data against now; None before any schema is frozen.

    With ``validation.schema_uri`` set, the pinned file's version; otherwise the highest ``vN.yaml`` kept. A caller
    that parks data blocked by validation retries it once this number grows (a new version was accepted).
    """
    pinned = cfg.validation.schema_uri
    if pinned is not None:
        if not storage.exists(pinned):
            return None
        return Schema.from_yaml(storage.read_text(pinned), source=pinned).version
    versions = schema_versions(cfg)
    return max(versions) if versions else None


def accept_hint(report_uri: str, config_path: str | None = None) -> str:
    """The command that turns a STOP report's anomalies into the next schema version (after review).

    ``config_path`` is the config file the user runs with; without it the text says ``CONFIG``. Review first with
    ``raymlops schema diff`` (same arguments); anomalies that are bad data rather than a legitimate change (NaN,
    all-null columns, a missing feature) are fixed at the source instead.
    """
    config = shlex.quote(config_path) if config_path else "CONFIG"
    return f"raymlops schema accept {config} --from-report {shlex.quote(report_uri)}"


def reference_uri_of(schema_uri: str) -> str:
    """The reference statistics kept beside a schema version file."""
    return re.sub(r"\.yaml$", ".reference.json", schema_uri)


def read_profile(uri: str) -> DatasetProfile:
    """Statistics JSON (a ``DatasetProfile``) at ``uri``; ``SchemaError`` when it is missing or unreadable."""
    if not storage.exists(uri):
        raise SchemaError(f"reference statistics {uri} do not exist; fix the path (validation.reference_uri or "
                          "the model version's reference_uri tag) or remove it")
    try:
        return DatasetProfile.from_dict(json.loads(storage.read_text(uri)))
    except (ValueError, KeyError, TypeError) as err:
        raise SchemaError(f"reference statistics {uri} are unreadable ({err}); delete the file to re-freeze from "
                          "the next accepted dataset") from None


def _read_schema(uri: str) -> Schema:
    return Schema.from_yaml(storage.read_text(uri), source=uri)


def load_frozen_schema(cfg: Config) -> FrozenSchema | None:
    """The schema named by `validation.schema_uri`, else the latest frozen version; None if nothing is frozen."""
    uri = cfg.validation.schema_uri
    if uri is None:
        versions = schema_versions(cfg)
        if not versions:
            return None
        uri = versions[max(versions)]
    elif not storage.exists(uri):
        raise SchemaError(f"validation.schema_uri {uri} does not exist; fix the path or remove the key to infer one")
    ref_uri = reference_uri_of(uri)
    reference = read_profile(ref_uri) if storage.exists(ref_uri) else None
    return FrozenSchema(_read_schema(uri), reference, uri)


def load_schema_version(cfg: Config, version: int | None = None) -> FrozenSchema:
    """Version ``version`` (None: the one validation uses now); ``SchemaError`` naming the versions there are."""
    if version is None:
        frozen = load_frozen_schema(cfg)
        if frozen is None:
            raise SchemaError(f"no schema is frozen yet for '{cfg.name}' under {schema_dir(cfg)}; run "
                              "`raymlops validate CONFIG` on data you accept to freeze v1")
        return frozen
    versions = schema_versions(cfg)
    if version not in versions:
        have = ", ".join(f"v{v}" for v in sorted(versions)) or "none"
        raise SchemaError(f"schema version {version} of '{cfg.name}' does not exist (versions: {have}); pass one "
                          "of them to --version")
    ref_uri = reference_uri_of(versions[version])
    return FrozenSchema(_read_schema(versions[version]), read_profile(ref_uri) if storage.exists(ref_uri) else None,
                        versions[version])


def freeze_schema(cfg: Config, schema: Schema, reference: DatasetProfile | None) -> str:
    """Write ``schema`` (YAML) and its reference statistics (JSON) as version ``schema.version``; returns its URI.

    Refuses (``SchemaError``) to overwrite a version that exists: every version is kept as it was accepted.
    """
    base = schema_dir(cfg)
    uri = storage.join(base, f"v{schema.version}.yaml")
    if storage.exists(uri):
        raise SchemaError(f"schema version {schema.version} already exists at {uri}; versions are never "
                          "overwritten, so accept again to write the next one")
    if reference is not None:
        # Reference first: a schema file without its reference would look frozen but could not judge drift.
        storage.atomic_write_text(reference_uri_of(uri), json.dumps(reference.to_dict()))
    storage.atomic_write_text(uri, schema.to_yaml())
    return uri


# ------------------------------------------------------------------------------------------------ champion
def _registry_exists(tracking_uri: str) -> bool:
    # A SQLite registry that was never created holds no champion; opening it would create the file (and its
    # directory must exist), a side effect `raymlops validate` on fresh storage must not have.
    prefix = "sqlite:///"
    return not tracking_uri.startswith(prefix) or Path(tracking_uri[len(prefix):]).exists()


def champion_version(cfg: Config) -> ModelVersionInfo | None:
    """The model version behind the ``champion`` alias of ``cfg.name``; None before any promotion."""
    if not _registry_exists(cfg.tracking_uri):
        return None
    # MLflow takes seconds to import: only when there is a registry to ask.
    from raymlops.registry.models import ModelRegistry

    return ModelRegistry(cfg.tracking_uri).get_by_alias(cfg.name, "champion")


def _champion_features(cfg: Config) -> tuple[int, list[str]] | None:
    info = champion_version(cfg)
    if info is None:
        return None
    uri = storage.join(info.package_uri, "schema.yaml")
    try:
        return info.version, _read_schema(uri).feature_names
    except DataError:
        raise SchemaError(f"the champion (v{info.version}) package has no readable schema at {uri}; restore the "
                          "package or promote another version before changing the schema") from None


def _check_champion(cfg: Config, candidate: Schema) -> None:
    found = _champion_features(cfg)
    if found is None:
        return
    version, features = found
    lost = missing_features(candidate, features)
    if lost:
        raise SchemaError(
            f"schema v{candidate.version} would drop features {lost} that the champion (model v{version}) needs; "
            "nothing was written. Restore the columns at the source, or keep them in the schema (edit the YAML "
            "and accept it with --file); retire them only after a champion that does not use them is promoted"
        )


# ------------------------------------------------------------------------------------------------ reports
def _report_json(report_uri: str) -> str:
    if storage.exists(storage.join(report_uri, "report.json")):  # the report's directory was given
        return storage.join(report_uri, "report.json")
    return report_uri


def load_report(report_uri: str) -> tuple[ValidationReport, dict]:
    """A validation report (``report.json``, or its directory) and its JSON document; ``SchemaError`` (exit 2)
    when it does not exist or is not a report."""
    uri = _report_json(report_uri)
    if not storage.exists(uri):
        raise SchemaError(f"validation report {report_uri} does not exist; pass the report.json path that "
                          "`raymlops validate` printed (or a blocked run's report)")
    try:
        doc = json.loads(storage.read_text(uri))
        return ValidationReport.from_dict(doc), doc
    except (ValueError, KeyError, TypeError) as err:
        raise SchemaError(f"{uri} is not a validation report ({err}); pass the report.json that "
                          "`raymlops validate` wrote") from None


def _next_version(cfg: Config, base: Schema) -> int:
    versions = schema_versions(cfg)
    return max([base.version, *versions]) + 1


def propose_from_report(cfg: Config, report_uri: str) -> SchemaPlan:
    """The next version that would accept the data behind a validation report, checked against the champion.

    Based on the version validation uses now (a report made against an older version is re-based: each change
    is idempotent). ``SchemaError`` for a missing report, a report of another pipeline, or a proposal that
    drops a feature the champion needs.
    """
    report, doc = load_report(report_uri)
    base = load_schema_version(cfg)
    if report.schema_name and report.schema_name != base.schema.name:
        raise SchemaError(f"report {report_uri} was made against schema '{report.schema_name}', not "
                          f"'{base.schema.name}'; pass a report of this pipeline's data")
    notes = []
    if report.schema_version != base.schema.version:
        notes.append(f"the report was made against v{report.schema_version}; its changes are applied to "
                     f"v{base.schema.version}, the current version")
    profile_uri = doc.get("profile_uri")
    profile = read_profile(profile_uri) if profile_uri and storage.exists(profile_uri) else None
    if profile is None:
        notes.append("the report's data profile is not available: domains get only the categories the report "
                     "lists, and the new version carries the current reference statistics")
    proposal = propose_schema(base.schema, [*report.anomalies, *report.value_anomalies], profile,
                              version=_next_version(cfg, base.schema),
                              range_margin_pct=cfg.validation.range_margin_pct)
    _check_champion(cfg, proposal.schema)
    return SchemaPlan(base, proposal, profile_uri if profile is not None else None, notes)


def plan_from_file(cfg: Config, path: str, report_uri: str | None = None) -> SchemaPlan:
    """A user-edited schema YAML as the next version (its ``version`` key is set to the next number).

    With ``report_uri``, the new version's reference statistics are that report's data profile.
    """
    if not storage.exists(path):
        raise SchemaError(f"schema file {path} does not exist; write the edited YAML there (e.g. from "
                          "`raymlops schema diff CONFIG --from-report R --out FILE`)")
    edited = _read_schema(path)
    base = load_schema_version(cfg)
    if edited.name != base.schema.name or edited.task != base.schema.task:
        raise SchemaError(f"{path}: name/task {edited.name}/{edited.task} differ from the current schema's "
                          f"{base.schema.name}/{base.schema.task}; keep them (a new pipeline needs a new config name)")
    notes = []
    version = _next_version(cfg, base.schema)
    if edited.version != version:
        notes.append(f"{path} says version {edited.version}; it is accepted as v{version}")
    candidate = Schema(edited.name, version, edited.task, edited.columns)
    reference_uri = None
    if report_uri is not None:
        _, doc = load_report(report_uri)
        profile_uri = doc.get("profile_uri")
        if profile_uri and storage.exists(profile_uri):
            reference_uri = profile_uri
    _check_champion(cfg, candidate)
    return SchemaPlan(base, SchemaProposal(candidate, [SchemaChange("*", "edited", f"from {path}")]), reference_uri,
                      notes)


def accept_schema(cfg: Config, plan: SchemaPlan) -> AcceptedSchema:
    """Write ``plan`` as the next version, with its reference statistics; the previous versions stay as they are.

    ``SchemaError`` (nothing written) when ``validation.schema_uri`` pins a file (validation would not use the new
    version), when the plan changes nothing, or when that version number was taken meanwhile.
    """
    if cfg.validation.schema_uri is not None:
        raise SchemaError(f"validation.schema_uri pins {cfg.validation.schema_uri}, so validation would not use a "
                          "new version; remove the key to use the latest accepted version, or edit the pinned file")
    if not schema_diff(plan.base.schema, plan.schema):
        unresolved = ", ".join(f"{a.kind} on '{a.feature}'" for a in plan.proposal.unresolved)
        raise SchemaError(f"nothing to accept: the new version would equal v{plan.base.schema.version}"
                          + (f"; the report's anomalies ({unresolved}) are bad data, fix them at the source"
                             if unresolved else ""))
    if plan.reference_uri is not None:
        reference, ref_note = read_profile(plan.reference_uri), f"reference statistics from {plan.reference_uri}"
    else:
        reference = plan.base.reference
        ref_note = f"reference statistics carried from v{plan.base.schema.version}"
    uri = freeze_schema(cfg, plan.schema, reference)
    return AcceptedSchema(plan.schema.version, uri, reference_uri_of(uri) if reference is not None else None,
                          plan.proposal.changes, [*plan.notes, ref_note])
