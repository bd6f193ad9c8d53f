"""Feature-store data for the CT pipeline: the point-in-time training set, and materialisation for a config.

``build_training_source(cfg)`` joins ``features.label_source`` (entity rows with timestamps and labels)
point-in-time with ``features.service`` and writes the result as a parquet dataset under
``{storage_uri}/features/training/{name}/{digest}/``, where the digest covers the definitions, the service and
the (stat) digests of the label and feature sources. It returns that URI, which the CT pipeline's ``join_features``
step makes the run's dataset; the same inputs give the same directory, so a resumed run sees the same data. A ``_manifest.json`` beside the data records the
definitions digest and a copy of the definitions is kept under ``{storage_uri}/features/definitions/``.

``materialize_for_config(cfg)`` materialises the service's views into the online store (incrementally); the
pipeline component around it is ``raymlops.ct.materialize_step``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from raymlops import storage
from raymlops.core.fingerprint import digest_bytes, digest_tree
from raymlops.errors import ConfigError
from raymlops.features.definitions import load_feature_repo
from raymlops.features.materialize import MaterializeResult, materialize
from raymlops.features.offline import get_historical_features

__all__ = ["build_training_source", "materialize_for_config"]


def _source_digest(uri: str) -> str:
    fs, path = storage.resolve(uri)
    return digest_tree(fs, path, "stat")


def build_training_source(cfg: Any, progress: Callable[[str], None] = print) -> str:
    """The URI of the point-in-time training set of ``cfg`` (see the module docstring), built when missing."""
    fc = cfg.features
    if fc is None or not fc.label_source:
        raise ConfigError("a feature-store training set needs features.label_source and features.service")
    if not cfg.data.timestamp:
        raise ConfigError("features.label_source needs data.timestamp: the column of each label row's time")
    repo = load_feature_repo(fc.repo)
    views = repo.service(fc.service)
    keys = list(dict.fromkeys(k for v in views for k in v.join_keys))
    missing_ids = [k for k in keys if k not in cfg.data.id_columns]
    if missing_ids:
        raise ConfigError(f"data.id_columns must list the entity keys {missing_ids} of service '{fc.service}', so "
                          "they are kept as ids and never become features; add them")
    parts = [repo.digest, fc.service, cfg.data.timestamp, _source_digest(fc.label_source),
             *sorted(_source_digest(v.source_uri) for v in views)]
    digest = digest_bytes(json.dumps(parts).encode()).split(":")[-1][:16]
    out = storage.join(cfg.storage_uri, "features", "training", cfg.name, digest)
    if not storage.exists(storage.join(out, "_SUCCESS")):
        progress(f"[features] joining {fc.label_source} with service '{fc.service}' point-in-time "
                 f"({fc.partitions} partition(s))")
        table = get_historical_features(repo, fc.service, fc.label_source, timestamp=cfg.data.timestamp,
                                        partitions=fc.partitions)
        if cfg.data.label not in table.column_names:
            raise ConfigError(f"data.label '{cfg.data.label}' is not a column of features.label_source "
                              f"{fc.label_source} (columns: {table.column_names}); name the label column")
        definitions = repo.save_copy(cfg.storage_uri)
        manifest = {"definitions_digest": repo.digest, "definitions_uri": definitions, "service": fc.service,
                    "label_source": fc.label_source, "rows": table.num_rows}
        with storage.staged_dir(out) as tmp:
            fs, path = storage.resolve(tmp)
            fs.create_dir(path, recursive=True)
            pq.write_table(table, f"{path}/part-0.parquet", filesystem=fs)
            storage.atomic_write_text(storage.join(tmp, "_manifest.json"), json.dumps(manifest, indent=1))
            storage.atomic_write_text(storage.join(tmp, "_SUCCESS"), "")
        progress(f"[features] training set: {table.num_rows:,} rows at {out}")
    return out


def materialize_for_config(cfg: Any, *, full: bool = False) -> list[MaterializeResult]:
    """Materialise the views of the pipeline's feature service (incremental unless ``full``)."""
    fc = cfg.features
    if fc is None:
        raise ConfigError("materialisation needs a `features:` section (repo, service) in the pipeline config")
    repo = load_feature_repo(fc.repo)
    repo.save_copy(cfg.storage_uri)
    return materialize(repo, views=[v.name for v in repo.service(fc.service)], full=full)
