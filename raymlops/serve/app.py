"""The HTTP inference API on Ray Serve: one ingress deployment that co-hosts every live model version.

Each replica of ``ModelServer`` loads the package of every live version in-process and answers a request
without any further Serve hop: route (``core.routing``, sticky on ``X-Routing-Key``) → validate
(``core.request_validation``, against the champion's frozen schema) → predict (``LoadedModel.predict``) → log
(``PredictionLog``) → answer. A handle hop to per-version deployments would cost about half the throughput
(measured on 2 cores: proxy → router → model 150 QPS against 260 QPS for a single deployment), and a Serve
deployment cannot pick a version per request by itself anyway.

Routes (relative to the app's route prefix): ``POST /v1/models/{name}:predict``, ``POST
/v1/models/{name}:feedback``, ``GET /v1/models/{name}``, ``GET /healthz``. Every error is JSON
``{"error": {"code", "message", "details"}}``; a client mistake is a 4xx, and nothing a client sends can raise out
of the handler (so it can never fail or restart the replica); an internal failure is a JSON 500 that names the
request id.

Live changes arrive as ``user_config`` (see ``raymlops.serve.deploy.plan``): ``reconfigure`` loads new packages
first (in a thread, so requests keep flowing), then swaps one immutable ``_State`` (a request uses the state it
started with, never a mix), then drops the versions no longer listed and drains the logs. Shadow predictions run
after the response has been sent (a Starlette background task), are logged with role ``shadow``, and a failure
is only counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from raymlops import storage
from raymlops.core.package_trust import PackagePolicy
from raymlops.core.request_validation import ParsedRequest, RequestError, RequestValidator
from raymlops.core.routing import RoutingTable, pick_version, should_shadow
from raymlops.core.schema import Schema
from raymlops.errors import FeatureStoreUnavailable, ServingError
from raymlops.model.package import LoadedModel, load_package
from raymlops.serve.gauges import GaugeSampler, Sample
from raymlops.serve.predlog import FeedbackLog, PredictionLog

__all__ = ["ModelServer"]

logger = logging.getLogger("ray.serve")

_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?::(?P<verb>[^/]*))?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_ROUTING_KEY = 256
_LATENCY_WINDOW = 2048  # recent requests per version behind the p50/p99 in GET /v1/models/{name}
_LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
_RETRY_AFTER_S = "1"


@dataclass(frozen=True)
class _Version:
    version: str
    role: str  # champion | canary | shadow
    uri: str
    digest: str
    model: LoadedModel
    classes: list[Any]


@dataclass(frozen=True)
class _State:
    """Everything a request needs, swapped as one object by ``reconfigure``."""

    champion: str
    versions: dict[str, _Version]
    table: RoutingTable
    validator: RequestValidator
    max_body_bytes: int
    max_instances: int
    revision: str
    applied_at: str


@dataclass
class _Stats:
    requests: int = 0
    errors: int = 0
    shadow_requests: int = 0
    shadow_errors: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))

    def summary(self) -> dict[str, Any]:
        lat = np.fromiter(self.latencies_ms, dtype=np.float64)
        p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else (None, None)
        return {"requests": self.requests, "errors": self.errors, "shadow_requests": self.shadow_requests,
                "shadow_errors": self.shadow_errors,
                "latency_ms": {"p50": p50, "p99": p99, "window": int(lat.size)}}


class _HTTPError(Exception):
    """A response to send instead of an answer (routing and protocol errors; validation uses RequestError)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Metrics:
    """Per-version request, error and latency metrics through ``ray.util.metrics`` (Prometheus export), and
    gauges sampled from ``server`` (``raymlops.serve.gauges``): the live weight of each version and the
    prediction and feedback logs' counters (``dropped`` + ``lost`` is what the log lost)."""

    COUNTERS = {"raymlops_serve_requests": "Prediction requests by version and HTTP status.",
                "raymlops_serve_errors": "Failed requests by version and error code."}
    HISTOGRAMS = {"raymlops_serve_latency_ms": "Prediction latency in the replica (ms)."}
    GAUGES = {
        "raymlops_serve_weight_pct": ("Live traffic weight of each version in this replica (percent).",
                                      ("model", "version", "role")),
        "raymlops_serve_log": ("Counters of the prediction and feedback logs in this replica (written, dropped, "
                               "pending, flushes, errors, invalid, lost).", ("model", "log", "counter")),
    }

    def __init__(self, model: str, server: ModelServer | None = None):
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Histogram

        self.model = model
        self.requests = RayCounter("raymlops_serve_requests", self.COUNTERS["raymlops_serve_requests"],
                                   tag_keys=("model", "version", "status"))
        self.errors = RayCounter("raymlops_serve_errors", self.COUNTERS["raymlops_serve_errors"],
                                 tag_keys=("model", "version", "code"))
        self.latency = Histogram("raymlops_serve_latency_ms", self.HISTOGRAMS["raymlops_serve_latency_ms"],
                                 boundaries=_LATENCY_BOUNDARIES_MS, tag_keys=("model", "version"))
        self.gauges = GaugeSampler(self.GAUGES, lambda: self._sample(server), name=f"raymlops-gauges-{model}").start()

    def _sample(self, server: ModelServer | None) -> list[Sample]:
        out: list[Sample] = []
        state = server._state if server is not None else None
        if state is not None:
            for v, spec in state.versions.items():
                out.append(("raymlops_serve_weight_pct", {"model": self.model, "version": v, "role": spec.role},
                            state.table.weights.get(v, 0.0)))
        for log_name, log in (("predictions", getattr(server, "_log", None)),
                              ("feedback", getattr(server, "_feedback", None))):
            for counter, value in (log.stats() if log is not None else {}).items():
                out.append(("raymlops_serve_log", {"model": self.model, "log": log_name, "counter": counter}, value))
        return out

    def served(self, version: str, latency_ms: float) -> None:
        self.requests.inc(1, {"model": self.model, "version": version, "status": "200"})
        self.latency.observe(latency_ms, {"model": self.model, "version": version})

    def failed(self, version: str, status: int, code: str) -> None:
        self.requests.inc(1, {"model": self.model, "version": version, "status": str(status)})
        self.errors.inc(1, {"model": self.model, "version": version, "code": code})


class ModelServer:
    """The ingress deployment's class (``raymlops.serve.deploy`` wraps it with ``serve.deployment``).

    ``log`` holds ``serving.prediction_log`` (enabled, flush_rows, flush_interval_s, buffer_rows).
    """

    def __init__(self, name: str, storage_uri: str, log: dict[str, Any]):
        self.name = name
        self.num_replicas: int | None = None
        self.replica_id, self.started_at = _replica_id(), _now()
        # Serve's request-id middleware (proxy and direct ingress) echoes X-Request-Id itself; a second copy from
        # us would make the header a list. Outside Serve (tests driving the class directly) we send it.
        self._echo_request_id = self.replica_id.startswith("local-")
        self.pid = os.getpid()
        self._state: _State | None = None
        self._generation = 0
        self._reconfiguring = asyncio.Lock()
        self._stats: dict[str, _Stats] = {}
        self._client_errors: Counter[str] = Counter()
        self._internal_errors = 0
        writer = f"{self.replica_id}-{uuid.uuid4().hex[:6]}"  # unique even if a replica id were reused
        limits = {k: log[k] for k in ("flush_rows", "flush_interval_s", "buffer_rows")}
        self._log = (PredictionLog(storage.join(storage_uri, "predictions", name), writer_id=writer, **limits)
                     if log.get("enabled", True) else None)
        self._feedback = FeedbackLog(storage.join(storage_uri, "feedback", name), writer_id=writer, **limits)
        try:
            self._metrics: _Metrics | None = _Metrics(name, self)
        except Exception:  # outside a Ray worker (a unit test): no Prometheus export
            self._metrics = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a ``user_config`` (see ``deploy.plan``): load new packages, then switch, then drop and drain."""
        async with self._reconfiguring:
            old = self._state
            versions: dict[str, _Version] = {}
            for v, spec in config["versions"].items():
                have = old.versions.get(v) if old else None
                if have is not None and have.digest == spec["digest"] and have.uri == spec["uri"]:
                    versions[v] = _Version(v, spec["role"], have.uri, have.digest, have.model, have.classes)
                    continue
                # In a thread: loading takes long enough that blocking the loop would stall live requests.
                model = await asyncio.to_thread(load_package, spec["uri"], spec["digest"], version=v,
                                                policy=PackagePolicy.from_dict(config.get("package_policy")))
                versions[v] = _Version(v, spec["role"], spec["uri"], spec["digest"], model,
                                       list(model.transform.classes))
            champion = config["champion"]
            if champion not in versions:
                raise ServingError(f"user_config names champion {champion} but does not list its package; "
                                   "redeploy with `raymlops deploy CONFIG`")
            limits = config["limits"]
            schema = Schema.from_yaml(versions[champion].model.schema_yaml, f"schema of version {champion}")
            # In a thread: a validator with a feature service opens the online store (a connection, a ping).
            validator = await asyncio.to_thread(_validator, schema, limits, config.get("features"))
            self._state = _State(
                champion=champion,
                versions=versions,
                table=RoutingTable(dict(config["weights"]), config.get("shadow"), float(config.get("shadow_pct", 0))),
                validator=validator,
                max_body_bytes=limits["max_body_bytes"],
                max_instances=limits["max_instances"],
                revision=str(config.get("revision", "")),
                applied_at=_now(),
            )
            self.num_replicas = config.get("num_replicas")
            self._generation += 1
            for v in versions:
                self._stats.setdefault(v, _Stats())
            logger.info("routing generation %d: weights %s, shadow %s", self._generation,
                        config["weights"], config.get("shadow"))
            await asyncio.to_thread(self._drain)

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown (replica stop, serve.delete): make the logs durable.
        for log in (getattr(self, "_log", None), getattr(self, "_feedback", None)):
            if log is not None:
                log.close()

    def _drain(self) -> None:
        for log in (self._log, self._feedback):
            if log is not None:
                log.drain()

    # ------------------------------------------------------------------------------------------ dispatch
    async def __call__(self, request: Request) -> Response:
        # Serve's middleware puts the request id (the client's X-Request-Id, or a fresh UUID) in the headers.
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        try:
            if not _REQUEST_ID.fullmatch(request_id):
                raise _HTTPError(400, "invalid_request_id", "X-Request-Id must be 1-128 letters, digits, '.', '_', "
                                 "':' or '-'; send a unique id such as a UUID, or none")
            return await self._dispatch(request, request_id)
        except RequestError as err:
            return self._client_error(err.status, err.code, err.message, err.details, request_id)
        except _HTTPError as err:
            return self._client_error(err.status, err.code, err.message, [], request_id, err.headers)
        except FeatureStoreUnavailable as err:
            # A stalled or locked online store is transient: 503 + Retry-After (never a 500 with a traceback).
            return self._client_error(503, "feature_store_unavailable", str(err), [], request_id,
                                      {"Retry-After": str(err.retry_after_s)})
        except Exception:
            self._internal_errors += 1
            logger.exception("request %s failed inside the server", request_id)
            return self._json(500, _error_body("internal_error", f"internal error while serving request "
                                               f"{request_id}; the replica log has the traceback"), request_id)

    async def _dispatch(self, request: Request, request_id: str) -> Response:
        method, path = request.method, _relative_path(request.scope)
        if path == "/healthz":
            _allow(method, "GET")
            return self._health(request_id)
        m = _ROUTE.fullmatch(path)
        if m is None:
            raise _HTTPError(404, "unknown_route", f"no route {path}; use POST /v1/models/{self.name}:predict, "
                             f"POST /v1/models/{self.name}:feedback, GET /v1/models/{self.name} or GET /healthz")
        verb = m.group("verb")
        if verb not in (None, "predict", "feedback"):
            raise _HTTPError(404, "unknown_route", f"unknown action ':{verb}'; use :predict or :feedback")
        _allow(method, "GET" if verb is None else "POST")
        if m.group("name") != self.name:
            raise _HTTPError(404, "unknown_model", f"model '{m.group('name')}' is not served here; this app "
                             f"serves '{self.name}'")
        if verb is None:
            return self._json(200, self.info(), request_id)
        state = self._state
        if state is None:
            raise _HTTPError(503, "no_version", "no model version is loaded yet; retry shortly",
                             {"Retry-After": _RETRY_AFTER_S})
        body = await _read_body(request, state.max_body_bytes)
        if verb == "predict":
            return await self._predict(state, body, request.headers.get("x-routing-key") or None, request_id)
        return self._record_feedback(state, body, request_id)

    # ------------------------------------------------------------------------------------------ predict
    async def _predict(self, state: _State, body: bytes, key: str | None, request_id: str) -> Response:
        t0 = time.perf_counter()
        if key is not None and len(key) > _MAX_ROUTING_KEY:
            raise _HTTPError(400, "invalid_routing_key", f"X-Routing-Key has {len(key)} characters, over "
                             f"{_MAX_ROUTING_KEY}; send a shorter key (e.g. a user id or its hash)")
        # A validator that fetches online features does its I/O off the loop, under a deadline; the plain one is
        # pure CPU work and stays on the loop (a thread hop would cost more than it does).
        fetching = getattr(state.validator, "validate_async", None)
        parsed = await fetching(body) if fetching is not None else state.validator.validate(body)
        version = pick_version(state.table, key, random.random())
        served = state.versions[version]
        stats = self._stats[version]
        try:
            predictions = _rows(served, parsed.columns)
        except Exception:
            stats.requests += 1
            stats.errors += 1
            if self._metrics:
                self._metrics.failed(version, 500, "predict_failed")
            raise
        latency_ms = (time.perf_counter() - t0) * 1000
        stats.requests += 1
        stats.latencies_ms.append(latency_ms)
        if self._metrics:
            self._metrics.served(version, latency_ms)
        ts = time.time()
        self._append_log(parsed, predictions, request_id, version, "primary", key, ts, latency_ms)
        background = None
        if should_shadow(state.table, request_id, random.random()):
            background = BackgroundTask(self._shadow, state, parsed, request_id, key, ts)
        doc = {"predictions": predictions, "model_version": version, "request_id": request_id}
        return self._json(200, doc, request_id, {"X-Model-Version": version}, background)

    async def _shadow(self, state: _State, parsed: ParsedRequest, request_id: str, key: str | None,
                      ts: float) -> None:
        version = state.table.shadow
        if version is None:
            return
        stats = self._stats[version]
        stats.shadow_requests += 1
        t0 = time.perf_counter()
        try:
            predictions = _rows(state.versions[version], parsed.columns)
        except Exception:  # a shadow never affects clients: count it and log why
            stats.shadow_errors += 1
            if self._metrics:
                self._metrics.failed(version, 500, "shadow_failed")
            logger.exception("shadow version %s failed on request %s", version, request_id)
            return
        latency_ms = (time.perf_counter() - t0) * 1000
        stats.latencies_ms.append(latency_ms)
        self._append_log(parsed, predictions, request_id, version, "shadow", key, ts, latency_ms)

    def _append_log(self, parsed: ParsedRequest, predictions: list[dict[str, Any]], request_id: str,
                    version: str, role: str, key: str | None, ts: float, latency_ms: float) -> None:
        if self._log is None:
            return
        self._log.append([
            {"request_id": request_id, "row": i, "ts": ts, "model_version": version, "role": role,
             "routing_key": key, "features": instance, "outputs": out, "latency_ms": latency_ms, "status": "ok"}
            for i, (instance, out) in enumerate(zip(parsed.instances, predictions, strict=True))
        ])

    # ------------------------------------------------------------------------------------------ feedback
    def _record_feedback(self, state: _State, body: bytes, request_id: str) -> Response:
        doc = _parse_json_object(body)
        extra = sorted(set(doc) - {"request_id", "labels"})
        if extra:
            raise RequestError(400, "invalid_body", f"unknown key(s) {extra}; feedback takes "
                               '{"request_id": "...", "labels": [...]}')
        rid = doc.get("request_id")
        if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
            raise RequestError(422, "invalid_feedback", "request_id must be the id of a prediction (its "
                               "X-Request-Id header or request_id field)",
                               [{"row": None, "field": "request_id", "code": "invalid_request_id",
                                 "message": f"got {json.dumps(rid)[:60]}"}])
        labels = doc.get("labels")
        if not isinstance(labels, list) or not labels:
            raise RequestError(422, "invalid_feedback", 'labels must be a non-empty list, one label per instance '
                               "of the request (null for an unlabelled one)",
                               [{"row": None, "field": "labels", "code": "wrong_type", "message": "not a list"}])
        if len(labels) > state.max_instances:
            raise RequestError(422, "too_many_instances", f"labels has {len(labels)} entries, over the limit of "
                               f"{state.max_instances} instances per request")
        champion = state.versions[state.champion]
        bad = _check_labels(labels, champion.model.transform.task, champion.classes)
        if bad:
            raise RequestError(422, "invalid_feedback", f"{len(bad)} label(s) cannot be used; fix them", bad)
        self._feedback.append([{"request_id": rid, "ts": time.time(), "labels": labels}])
        return self._json(202, {"request_id": rid, "accepted": len(labels)}, request_id)

    # ------------------------------------------------------------------------------------------ status
    def _health(self, request_id: str) -> Response:
        state = self._state
        if state is None or not state.table.versions:
            return self._json(503, _error_body("no_version", "no model version can serve yet"), request_id,
                         {"Retry-After": _RETRY_AFTER_S})
        return self._json(200, {"status": "ok", "model": self.name, "versions": state.table.versions}, request_id)

    def info(self) -> dict[str, Any]:
        """Versions with roles, weights and live counters; this replica's identity; log counters."""
        state = self._state
        versions = []
        if state is not None:
            for v, spec in sorted(state.versions.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
                versions.append({"version": v, "role": spec.role, "weight": state.table.weights.get(v, 0.0),
                                 "digest": spec.digest, "package_uri": spec.uri, **self._stats[v].summary()})
        return {
            "model": self.name,
            "champion": state.champion if state else None,
            "weights": dict(state.table.weights) if state else {},
            "shadow": ({"version": state.table.shadow, "pct": state.table.shadow_pct}
                       if state and state.table.shadow else None),
            "versions": versions,
            "revision": state.revision if state else None,
            "generation": self._generation,
            "applied_at": state.applied_at if state else None,
            "replica": {"id": self.replica_id, "pid": self.pid, "started_at": self.started_at,
                        "configured_replicas": self.num_replicas},
            "metrics_exported": self._metrics is not None,
            "client_errors": dict(self._client_errors),
            "internal_errors": self._internal_errors,
            "prediction_log": self._log.stats() if self._log else None,
            "feedback_log": self._feedback.stats(),
        }

    def _json(self, status: int, doc: dict[str, Any], request_id: str, headers: dict[str, str] | None = None,
              background: BackgroundTask | None = None) -> Response:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_json_default).encode()
        extra = {"X-Request-Id": request_id} if self._echo_request_id else {}
        return Response(body, status_code=status, media_type="application/json",
                        headers={**extra, **(headers or {})}, background=background)

    def _client_error(self, status: int, code: str, message: str, details: list[dict[str, Any]],
                      request_id: str, headers: dict[str, str] | None = None) -> Response:
        self._client_errors[code] += 1
        if self._metrics:
            self._metrics.failed("none", status, code)
        return self._json(status, _error_body(code, message, details), request_id, headers)


# --------------------------------------------------------------------------------------------- helpers
def _validator(schema: Schema, limits: dict[str, Any], features: dict[str, Any] | None) -> Any:
    """The request validator; with a feature service, one that fetches store-served features by entity key."""
    if not features:
        return RequestValidator(schema, max_body_bytes=limits["max_body_bytes"], max_instances=limits["max_instances"])
    from raymlops.features.serving import OnlineRequestValidator

    return OnlineRequestValidator(features, schema, max_body_bytes=limits["max_body_bytes"],
                                  max_instances=limits["max_instances"])


def _rows(version: _Version, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON-ready prediction per instance, labels decoded to class values."""
    out = version.model.predict(columns)
    task = version.model.transform.task
    if task == "regression":
        return [{"value": v} for v in out["value"].tolist()]
    classes = version.classes
    labels = [classes[i] for i in out["label"].tolist()]
    if task == "binary":
        return [{"probability": p, "label": c} for p, c in zip(out["probability"].tolist(), labels, strict=True)]
    return [{"probabilities": p, "label": c} for p, c in zip(out["probabilities"].tolist(), labels, strict=True)]


def _check_labels(labels: list[Any], task: str, classes: list[Any]) -> list[dict[str, Any]]:
    bad = []
    allowed = {json.dumps(c) for c in classes}
    for i, label in enumerate(labels):
        if label is None:
            continue
        if task == "regression":
            ok = type(label) in (int, float) and math.isfinite(label)
            hint = "a finite number"
        else:
            ok = not isinstance(label, (list, dict)) and json.dumps(label) in allowed
            hint = f"one of the classes {classes}"
        if not ok:
            bad.append({"row": i, "field": "labels", "code": "invalid_label",
                        "message": f"label {json.dumps(label)[:40]} is not {hint} (or null)"})
    return bad


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestError(400, "malformed_json", "the body nests too deeply; send a JSON object") from None
    except ValueError as err:
        raise RequestError(400, "malformed_json", f"the body is not valid UTF-8 JSON ({err})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "invalid_body", f"the body is a JSON {type(doc).__name__}, not an object")
    return doc


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number; send finite numbers or null")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before it is read whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _HTTPError(400, "invalid_content_length", f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise RequestError(413, "body_too_large", f"the request body has {declared} bytes, over the limit of "
                               f"{limit}; send fewer instances per request")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"the request body is over the limit of {limit} bytes; "
                                   "send fewer instances per request")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away mid-body: its mistake (or its timeout), not ours; nobody reads this answer.
        raise RequestError(400, "client_disconnected", "the client closed the connection before sending the "
                           "whole body") from None
    return b"".join(chunks)


def _relative_path(scope: dict[str, Any]) -> str:
    # Serve (proxy and direct ingress) sets root_path to the route prefix and keeps it in path.
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _HTTPError(405, "method_not_allowed", f"{method} is not allowed here; use {allowed}",
                         {"Allow": allowed})


def _error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}




def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a Serve replica (unit tests)
        return f"local-{os.getpid()}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
