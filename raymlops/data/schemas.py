"""Schema versions: every accepted schema is kept as ``{storage_uri}/schemas/{name}/vN.yaml`` beside its reference
statistics ``vN.reference.json``; validation uses the latest (or the one ``validation.schema_uri`` pins).
"""

from __future__ import annotations

import re
import shlex

from raymlops import storage
from raymlops.config import Config
from raymlops.core.schema import Schema

__all__ = ["accept_hint", "latest_schema_version", "schema_dir", "schema_versions"]

_VERSION_FILE = re.compile(r"(?:^|/)v(\d+)\.yaml$")


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
