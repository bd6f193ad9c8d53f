"""Online features in the serving ingress: a client sends entity keys (plus request-time features) only.

``serving_spec(cfg)`` (driver) resolves the pipeline's feature service into a JSON-safe document that travels in
the deployment's ``user_config``; each replica builds an ``OnlineRequestValidator`` from it, a drop-in for
``RequestValidator``: it validates the request against the model's schema minus the features the store serves,
then fetches those by entity key and adds them to the columns (and to the logged instances, so monitoring sees
what the model saw). Decisions:

* A request that sends a feature the store serves gets 422 ``served_by_feature_store`` naming the field and row:
  the request's value is never silently overridden, nor silently overrides the store.
* A row without its entity key, or with a key of the wrong JSON type, gets 422 ``missing_entity_key`` /
  ``wrong_type``. A key the store does not know is NOT an error: its features are null and the transform imputes
  them as it did in training (a new customer still gets a prediction).
* Only features of the model's schema are fetched; service features the model does not use are ignored.
* The lookup runs off the replica's event loop (``validate_async``: a small thread pool) under a deadline of
  ``online_store.connect_timeout_s + read_timeout_s``; a store that misses it, or times out itself, raises
  ``FeatureStoreUnavailable``, which the app answers 503 with ``Retry-After``. A stalled store thus costs a
  request a fraction of a second, and never blocks the other requests of the replica.
* The spec carries no secret: a Redis URL travels without its password (``user_config`` is visible in the Ray
  dashboard and Serve's logs); the replica reads the password from the variable ``password_env`` names.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from raymlops.core.redact import redact_url
from raymlops.core.request_validation import (
    DEFAULT_MAX_STRING_LENGTH,
    ParsedRequest,
    RequestError,
    RequestValidator,
)
from raymlops.core.schema import ColumnSpec, Schema
from raymlops.core.sketches import as_category_strings
from raymlops.errors import ConfigError, FeatureStoreUnavailable
from raymlops.features.definitions import ResolvedView, load_feature_repo
from raymlops.features.online import OnlineFeatures
from raymlops.features.stores import open_online_store

__all__ = ["OnlineRequestValidator", "serving_spec"]

_KEY_SPEC = {"string": ("string", "string"), "int64": ("numeric", "int64")}
# Lookups run here, not in the loop's default executor (which loads packages during a reconfigure): a stalled
# store then occupies at most these threads, each for at most its socket timeout, and starves nothing else.
_FETCH_THREADS = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fetch_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="raymlops-online-store")
        return _pool


def serving_spec(cfg: Any) -> dict[str, Any] | None:
    """What replicas need to fetch the pipeline's feature service (None when ``features`` is unset or off)."""
    fc = getattr(cfg, "features", None)
    if fc is None or not fc.serve_online:
        return None
    repo = load_feature_repo(fc.repo)
    store = repo.online_store.model_dump()
    if store.get("url"):
        url = store["url"]
        if redact_url(url) != url:
            raise ConfigError(
                f"online_store.url of {fc.repo} carries a password ({redact_url(url)}), which would travel in "
                "Serve's user_config (shown by the Ray dashboard); remove it from the URL, set "
                "online_store.password_env: REDIS_PASSWORD (any name) in the feature repo, and export that "
                "variable before `ray start` on every node")
    return {"project": repo.project, "service": fc.service, "digest": repo.digest, "online_store": store,
            "views": [v.to_dict() for v in repo.service(fc.service)]}


class OnlineRequestValidator:
    """``RequestValidator`` for key-only requests (see the module docstring); build one per model schema."""

    def __init__(self, spec: dict[str, Any], schema: Schema, *, max_body_bytes: int, max_instances: int,
                 max_string_length: int = DEFAULT_MAX_STRING_LENGTH):
        model_features = set(schema.feature_names)
        views = []
        for doc in spec["views"]:
            view = ResolvedView.from_dict(doc)
            used = {f: t for f, t in view.features.items() if f in model_features}
            if used:
                views.append(ResolvedView(view.name, view.entity, view.join_keys, view.source_uri,
                                          view.source_format, view.event_timestamp, view.created_timestamp,
                                          view.ttl, used))
        self.keys: dict[str, str] = {k: t for v in views for k, t in v.join_keys.items()}
        self.served = {f: schema.column(f) for v in views for f in v.features}
        if not self.served:
            raise ConfigError(f"feature service '{spec['service']}' serves none of the model's features "
                              f"{schema.feature_names}; point features.service at the service the model was "
                              "trained on")
        store = spec["online_store"]
        self.online = OnlineFeatures(open_online_store(store, spec["project"], serving=True), views)
        self.deadline_s = float(store.get("connect_timeout_s") or 0.2) + float(store.get("read_timeout_s") or 0.5)
        self.max_body_bytes, self.max_instances = max_body_bytes, max_instances
        self._inner = RequestValidator(self._request_schema(schema), max_body_bytes=max_body_bytes,
                                       max_instances=max_instances, max_string_length=max_string_length)

    def _request_schema(self, schema: Schema) -> Schema:
        # Served features become "ignored": accepted by the inner validator, then refused here by name (a clearer
        # 422 than "unknown feature"); entity keys are id columns (passed through, never model inputs).
        out = copy.deepcopy(schema)
        for col in out.columns:
            if col.name in self.served:
                col.role = "ignored"
        for key, kind in self.keys.items():
            if out.column(key) is None:
                k, dtype = _KEY_SPEC[kind]
                out.columns.append(ColumnSpec(key, "id", k, dtype, nullable=True))
        return out

    def validate(self, body: bytes) -> ParsedRequest:
        """Validate the request, then add the store's features by entity key (``RequestError`` on mistakes).

        Blocks the calling thread for the lookup (bounded by the store's own timeouts); on an event loop use
        ``validate_async``."""
        parsed, key_columns = self._check(body)
        return self._merge(parsed, self.online.get(key_columns))

    async def validate_async(self, body: bytes) -> ParsedRequest:
        """``validate`` with the lookup in a worker thread under ``deadline_s`` (``FeatureStoreUnavailable``)."""
        parsed, key_columns = self._check(body)
        future = asyncio.get_running_loop().run_in_executor(_fetch_pool(), self.online.get, key_columns)
        try:
            fetched = await asyncio.wait_for(future, self.deadline_s)
        except asyncio.TimeoutError:
            # The thread itself ends at the store's socket/busy timeout; this request does not wait for it.
            raise FeatureStoreUnavailable(
                f"the online store did not answer within {self.deadline_s:g}s (online_store.connect_timeout_s + "
                "read_timeout_s); retry shortly") from None
        return self._merge(parsed, fetched)

    def _check(self, body: bytes) -> tuple[ParsedRequest, dict[str, list[Any]]]:
        parsed = self._inner.validate(body)
        bad: list[dict[str, Any]] = []
        key_columns: dict[str, list[Any]] = {k: [] for k in self.keys}
        for i, row in enumerate(parsed.instances):
            for name in row:
                if name in self.served:
                    bad.append(_detail(i, name, "served_by_feature_store", f"'{name}' is served by the feature "
                                       "store for this model; remove it from the instance (send only entity keys "
                                       "and request-time features)"))
            for key, kind in self.keys.items():
                value = row.get(key)
                ok = isinstance(value, str) if kind == "string" else (
                    isinstance(value, int) and not isinstance(value, bool))
                if value is None:
                    bad.append(_detail(i, key, "missing_entity_key", f"entity key '{key}' is missing; send it so "
                                       "the server can fetch this row's features"))
                elif not ok:
                    bad.append(_detail(i, key, "wrong_type", f"entity key '{key}' must be a JSON "
                                       f"{'string' if kind == 'string' else 'integer'}"))
                key_columns[key].append(value)
        if bad:
            raise RequestError(422, "schema_violation", f"{len(bad)} problem(s) with entity keys or store-served "
                               "features; fix the listed fields", bad[:100])
        return parsed, key_columns

    def _merge(self, parsed: ParsedRequest, fetched: dict[str, list[Any]]) -> ParsedRequest:
        for name, spec in self.served.items():
            values = fetched[name]
            if spec.kind == "numeric":
                parsed.columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            else:  # category strings, exactly as the request validator gives them
                parsed.columns[name] = as_category_strings(pa.array(values)).to_pylist()
        parsed.instances = [{**row, **{n: fetched[n][i] for n in self.served}}
                            for i, row in enumerate(parsed.instances)]
        return parsed


def _detail(row: int, name: str, code: str, message: str) -> dict[str, Any]:
    return {"row": row, "field": name, "code": code, "message": message}
