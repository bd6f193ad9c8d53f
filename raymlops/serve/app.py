"""The HTTP inference API on Ray Serve: one ingress deployment that co-hosts every live model version.

Each replica of ``ModelServer`` loads the package of every live version in-process and answers a request
without any further Serve hop: route (``core.routing``, sticky on ``X-Routing-Key``) → validate
(``core.request_validation``, against the champion's frozen schema) → predict (``LoadedModel.predict``) → log
(``PredictionLog``) → answer. A handle hop to per-version deployments would cost about half the throughput
(measured on 2 cores: proxy → router → model 150 QPS against 260 QPS for a single deployment), and a Serve
deployment cannot pick a version per request by itself anyway.

Routes (relative to the app's route prefix): ``POST /v1/models/{name}:predict``, ``POST
/v1/models/{name}:feedback``, ``GET /v1/models/{name}``, ``GET /healthz``; beside them, version and alias pins
(``/v1/models/{name}/versions/{v}:predict``, ``/aliases/{alias}:predict``), the Open Inference Protocol V2
(``/v2/health/*``, ``/v2/models/{name}[/versions/{v}][/ready|/infer]``) and MLflow's ``POST /invocations`` +
``GET /ping``, each translated by ``core.protocols`` into the native request (one validation, split, shadow and
log; the table of routes and their permission scopes is ``core.protocols.match_route``). Every error is JSON
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from raymlops import storage
from raymlops.core.auth import Identity, RateLimiter, RequestIdSigner, TokenSet, bearer_token
from raymlops.core.package_trust import PackagePolicy
from raymlops.core.protocols import (
    Route,
    check_outputs,
    is_oip_path,
    match_route,
    mlflow_instances,
    native_body,
    oip_error_body,
    oip_instances,
    oip_metadata,
    oip_response,
    parse_infer_request,
    resolve_pin,
)
from raymlops.core.request_validation import (
    DEFAULT_MAX_STRING_LENGTH,
    ParsedRequest,
    RequestError,
    RequestValidator,
)
from raymlops.core.routing import RoutingTable, pick_version, should_shadow
from raymlops.core.schema import Schema
from raymlops.errors import FeatureStoreUnavailable, ServingError
from raymlops.model.package import LoadedModel, load_package
from raymlops.serve.auth import serving_secret
from raymlops.serve.gauges import GaugeSampler, Sample
from raymlops.serve.json_errors import error_body
from raymlops.serve.predlog import FeedbackLog, PredictionLog

__all__ = ["ModelServer"]

logger = logging.getLogger("ray.serve")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_ROUTING_KEY = 256
_LATENCY_WINDOW = 2048  # recent requests per version behind the p50/p99 in GET /v1/models/{name}
_LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
_RETRY_AFTER_S = "1"
# (predictions, served version, request id) -> the answer's JSON document, for a protocol other than the native one
_Render = Callable[[list[dict[str, Any]], str, str], dict[str, Any]]
_PROBES = frozenset(("health", "ping", "live", "ready", "model_ready", "server_metadata"))


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
    body_timeout_s: float = 10.0
    # serving.auth: None when off. With it on, ids are issued and signed by ``signer`` (see core.auth).
    tokens: TokenSet | None = None
    signer: RequestIdSigner | None = None


@dataclass(frozen=True)
class _Protocols:
    """What the standard protocols need of a routing state: the request inputs in order, the task, OIP metadata."""

    state: _State
    inputs: list[str]
    task: str
    metadata: dict[str, Any]


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
        self._protocol_cache: _Protocols | None = None
        self._generation = 0
        self._reconfiguring = asyncio.Lock()
        self._stats: dict[str, _Stats] = {}
        self._client_errors: Counter[str] = Counter()
        self._internal_errors = 0
        writer = f"{self.replica_id}-{uuid.uuid4().hex[:6]}"  # unique even if a replica id were reused
        self._storage_uri = storage_uri
        self._limiter: RateLimiter | None = None  # per-key feedback buckets, kept across reconfigures
        self._secret: bytes | None = None  # the request-id key, read once (serve.auth.serving_secret)
        limits = {k: log[k] for k in ("flush_rows", "flush_interval_s", "buffer_rows", "buffer_bytes") if k in log}
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
            auth = config.get("auth") or {}
            tokens = TokenSet(auth.get("tokens", [])) if auth.get("enabled") else None
            if tokens is not None and self._secret is None:
                self._secret = await asyncio.to_thread(serving_secret, self._storage_uri, self.name)
            rate = (float(auth.get("feedback_rate_per_s", 100.0)), int(auth.get("feedback_burst", 1000)))
            if self._limiter is None or (self._limiter.rate_per_s, self._limiter.burst) != rate:
                self._limiter = RateLimiter(*rate)
            self._state = _State(
                champion=champion,
                versions=versions,
                table=RoutingTable(dict(config["weights"]), config.get("shadow"), float(config.get("shadow_pct", 0))),
                validator=validator,
                max_body_bytes=limits["max_body_bytes"],
                max_instances=limits["max_instances"],
                revision=str(config.get("revision", "")),
                applied_at=_now(),
                body_timeout_s=float(limits.get("body_timeout_s", 10.0)),
                tokens=tokens,
                signer=RequestIdSigner(self._secret, self.name) if tokens is not None and self._secret else None,
            )
            self.num_replicas = config.get("num_replicas")
            self._generation += 1
            for v in versions:
                self._stats.setdefault(v, _Stats())
            logger.info("routing generation %d: weights %s, shadow %s", self._generation,
                        config["weights"], config.get("shadow"))
            await asyncio.to_thread(self._drain)

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown (replica stop, serve.delete): make the logs durable, and stop
        # the gauge thread (it holds this server).
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.gauges.stop()
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
            return self._json(500, error_body("internal_error", f"internal error while serving request "
                                               f"{request_id}; the replica log has the traceback"), request_id)

    async def _dispatch(self, request: Request, request_id: str) -> Response:
        path = _relative_path(request.scope)
        if not is_oip_path(path):
            return await self._route(request, path, request_id)
        try:
            return await self._route(request, path, request_id)
        except RequestError as err:  # OIP clients read "error" as a string: same code and details, OIP's shape
            return self._client_error(err.status, err.code, err.message, err.details, request_id, oip=True)
        except _HTTPError as err:
            return self._client_error(err.status, err.code, err.message, [], request_id, err.headers, oip=True)

    async def _route(self, request: Request, path: str, request_id: str) -> Response:
        # Every protocol is translated into the native body and shares _predict: one validation, split, shadow,
        # log and error contract. ``route.scope`` names the permission each route needs.
        method = request.method
        route = match_route(path, self.name)
        _allow(method, route.method)
        if route.model is not None and route.model != self.name:
            raise _HTTPError(404, "unknown_model", f"model '{route.model}' is not served here; this app "
                             f"serves '{self.name}'")
        if route.action in _PROBES:
            return self._probe(route, request_id)
        who = self._authorize(request, route)
        if route.action == "info":
            # Paths and pids are for operators: with auth on, only the admin scope sees them.
            auth_off = self._state is not None and self._state.tokens is None
            return self._json(200, self.info(full=auth_off or (who is not None and who.allows("admin"))),
                              request_id)
        state = self._state
        if state is None:
            raise _HTTPError(503, "no_version", "no model version is loaded yet; retry shortly",
                             {"Retry-After": _RETRY_AFTER_S})
        pin = resolve_pin(_roles(state), state.champion, version=route.version, alias=route.alias)
        if route.action == "metadata":
            return self._json(200, self._protocols(state).metadata, request_id)
        if route.action == "feedback":
            self._rate_limit(request, who)  # before the body is read: a flood costs as little as possible
        body = await _read_body(request, state.max_body_bytes, state.body_timeout_s)
        if route.action == "feedback":
            return self._record_feedback(state, body, request_id)
        key = request.headers.get("x-routing-key") or None
        if route.action == "predict":
            return await self._predict(state, body, key, request_id, pin=pin)
        proto = self._protocols(state)
        if route.action == "infer":
            infer = parse_infer_request(body, request.headers.get("inference-header-content-length"))
            check_outputs(infer, proto.task)
            rows = oip_instances(infer, proto.inputs)

            def render(predictions: list[dict[str, Any]], version: str, rid: str) -> dict[str, Any]:
                return oip_response(self.name, version, rid, infer, proto.task, predictions)
        else:  # /invocations: MLflow's scoring protocol
            rows = mlflow_instances(body, request.headers.get("content-type"), proto.inputs)

            def render(predictions: list[dict[str, Any]], version: str, rid: str) -> dict[str, Any]:
                return {"predictions": predictions}
        return await self._predict(state, native_body(rows, state.max_body_bytes), key, request_id, pin=pin,
                                   render=render)

    def _authorize(self, request: Request, route: Route) -> Identity | None:
        """The caller under ``serving.auth`` (None when auth is off): 401 without a valid bearer token, 403 when
        its scopes lack ``route.scope`` (``GET /v1/models/{name}`` takes any token and shows more to ``admin``)."""
        state = self._state
        tokens = state.tokens if state is not None else None
        if tokens is None or route.scope is None:
            return None
        header = request.headers.get("authorization")
        who = tokens.authenticate(bearer_token(header))
        if who is None:
            challenge = 'Bearer realm="raymlops"' + (', error="invalid_token"' if header else "")
            raise _HTTPError(401, "unauthorized", "this route needs a valid token: send 'Authorization: Bearer "
                             "<token>' (tokens are configured in serving.auth)" if header is None else
                             "the bearer token is not valid here; check it against serving.auth.tokens",
                             {"WWW-Authenticate": challenge})
        if route.action != "info" and not who.allows(route.scope):
            raise _HTTPError(403, "forbidden", f"token '{who.name}' has scopes {sorted(who.scopes)} but this route "
                             f"needs '{route.scope}'; use a token with that scope")
        return who

    def _rate_limit(self, request: Request, who: Identity | None) -> None:
        """429 when the caller's feedback bucket is empty (keyed by token, or client address without auth)."""
        limiter = self._limiter
        if limiter is None:
            return
        key = f"token:{who.name}" if who is not None else f"addr:{request.client.host if request.client else '-'}"
        wait = limiter.take(key, time.monotonic())
        if wait:
            raise _HTTPError(429, "rate_limited", f"too many feedback requests from {key.split(':', 1)[0]} "
                             f"'{key.split(':', 1)[1]}' (serving.auth.feedback_rate_per_s={limiter.rate_per_s:g}, "
                             f"burst {limiter.burst}); retry after the Retry-After seconds",
                             {"Retry-After": RateLimiter.retry_after(wait)})

    def _probe(self, route: Route, request_id: str) -> Response:
        """Liveness and readiness in each protocol's words (no body is read, no permission needed)."""
        if route.action == "live":
            return self._json(200, {"live": True}, request_id)
        if route.action == "server_metadata":
            return self._json(200, {"name": "raymlops", "version": _package_version(),
                                    "extensions": ["binary_tensor_data"]}, request_id)
        if route.action in ("health", "ping"):
            return self._health(request_id)
        state = self._state
        if state is None or not state.table.versions:
            return self._json(503, error_body("no_version", "no model version can serve yet"), request_id,
                              {"Retry-After": _RETRY_AFTER_S})
        if route.action == "ready":
            return self._json(200, {"ready": True}, request_id)
        version = resolve_pin(_roles(state), state.champion, version=route.version)  # model_ready
        return self._json(200, {"name": self.name, "version": version or state.champion, "ready": True},
                          request_id)

    def _protocols(self, state: _State) -> _Protocols:
        """The champion's request inputs and OIP metadata, computed once per routing state."""
        cached = self._protocol_cache
        if cached is not None and cached.state is state:
            return cached
        champion = state.versions[state.champion]
        schema = Schema.from_yaml(champion.model.schema_yaml, f"schema of version {state.champion}")
        task = champion.model.transform.task
        # With a feature service, clients send entity keys instead of the store-served features.
        validator = state.validator
        metadata = oip_metadata(self.name, sorted(state.versions, key=_version_order), schema, task,
                                champion.classes, served=list(getattr(validator, "served", None) or ()),
                                keys=getattr(validator, "keys", None))
        cached = _Protocols(state, [i["name"] for i in metadata["inputs"]], task, metadata)
        self._protocol_cache = cached
        return cached

    # ------------------------------------------------------------------------------------------ predict
    async def _predict(self, state: _State, body: bytes, key: str | None, request_id: str, *,
                       pin: str | None = None, render: _Render | None = None) -> Response:
        """Validate, route (unless ``pin`` names the version), predict, log and answer; ``render`` shapes the
        answer for a standard protocol (default: the native document)."""
        t0 = time.perf_counter()
        if key is not None and len(key) > _MAX_ROUTING_KEY:
            raise _HTTPError(400, "invalid_routing_key", f"X-Routing-Key has {len(key)} characters, over "
                             f"{_MAX_ROUTING_KEY}; send a shorter key (e.g. a user id or its hash)")
        # A validator that fetches online features does its I/O off the loop, under a deadline; the plain one is
        # pure CPU work and stays on the loop (a thread hop would cost more than it does).
        fetching = getattr(state.validator, "validate_async", None)
        parsed = await fetching(body) if fetching is not None else state.validator.validate(body)
        # With auth on, the id is ours and signed with its instance count (what :feedback checks); the client's
        # X-Request-Id stays a correlation id, logged beside it.
        correlation = request_id if state.signer is not None else None
        request_id = state.signer.issue(parsed.n) if state.signer is not None else request_id
        version = pin or pick_version(state.table, key, random.random())
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
        logged = (len(body), correlation)
        # A pinned request (/versions/{v}, /aliases/{a}) was not routed by the split: logged as "pinned", so a
        # client cannot aim traffic and labels at the canary and weigh in on its analysis (or the monitor's).
        role = "pinned" if pin is not None else "primary"
        self._append_log(parsed, predictions, request_id, version, role, key, ts, latency_ms, logged)
        background = None
        if should_shadow(state.table, request_id, random.random()) and version != state.table.shadow:
            background = BackgroundTask(self._shadow, state, parsed, request_id, key, ts, logged)
        doc = (render(predictions, version, request_id) if render is not None else
               {"predictions": predictions, "model_version": version, "request_id": request_id})
        # The issued id in a header too: a standard protocol's body (/invocations, OIP) may have no place for it.
        return self._json(200, doc, correlation or request_id,
                          {"X-Model-Version": version, "X-Raymlops-Request-Id": request_id}, background)

    async def _shadow(self, state: _State, parsed: ParsedRequest, request_id: str, key: str | None,
                      ts: float, logged: tuple[int, str | None] = (0, None)) -> None:
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
        self._append_log(parsed, predictions, request_id, version, "shadow", key, ts, latency_ms, logged)

    def _append_log(self, parsed: ParsedRequest, predictions: list[dict[str, Any]], request_id: str,
                    version: str, role: str, key: str | None, ts: float, latency_ms: float,
                    logged: tuple[int, str | None] = (0, None)) -> None:
        """``logged``: the request body's size (what the rows weigh in the log's byte bound) and the client's
        correlation id (None when it is the request id)."""
        if self._log is None:
            return
        nbytes, correlation = logged
        self._log.append([
            {"request_id": request_id, "row": i, "ts": ts, "model_version": version, "role": role,
             "routing_key": key, "features": instance, "outputs": out, "latency_ms": latency_ms, "status": "ok",
             "correlation_id": correlation}
            for i, (instance, out) in enumerate(zip(parsed.instances, predictions, strict=True))
        ], nbytes)

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
        if state.signer is not None:  # auth on: only ids this service issued, with one label per instance
            n = state.signer.verify(rid)
            if n is None:
                raise RequestError(422, "unknown_request_id", "request_id was not issued by this service; send the "
                                   "request_id field of the prediction's answer",
                                   [{"row": None, "field": "request_id", "code": "unknown_request_id",
                                     "message": f"got {json.dumps(rid)[:60]}"}])
            if len(labels) != n:
                raise RequestError(422, "invalid_feedback", f"labels has {len(labels)} entries but the prediction "
                                   f"had {n} instance(s); send one label per instance (null for an unlabelled one)",
                                   [{"row": None, "field": "labels", "code": "wrong_label_count",
                                     "message": f"{len(labels)} labels for {n} instances"}])
        champion = state.versions[state.champion]
        bad = _check_labels(labels, champion.model.transform.task, champion.classes)
        if bad:
            raise RequestError(422, "invalid_feedback", f"{len(bad)} label(s) cannot be used; fix them", bad)
        self._feedback.append([{"request_id": rid, "ts": time.time(), "labels": labels}], len(body))
        return self._json(202, {"request_id": rid, "accepted": len(labels)}, request_id)

    # ------------------------------------------------------------------------------------------ status
    def _health(self, request_id: str) -> Response:
        state = self._state
        if state is None or not state.table.versions:
            return self._json(503, error_body("no_version", "no model version can serve yet"), request_id,
                         {"Retry-After": _RETRY_AFTER_S})
        return self._json(200, {"status": "ok", "model": self.name, "versions": state.table.versions}, request_id)

    def info(self, full: bool = True) -> dict[str, Any]:
        """Versions with roles, weights and live counters; this replica's identity; log counters. Without
        ``full`` (a caller without the admin scope) no filesystem path and no pid is shown."""
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
            "auth": state is not None and state.tokens is not None,
        } | ({} if full else _redacted(versions, self.replica_id, self.started_at, self.num_replicas))

    def _json(self, status: int, doc: dict[str, Any], request_id: str, headers: dict[str, str] | None = None,
              background: BackgroundTask | None = None) -> Response:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_json_default).encode()
        extra = {"X-Request-Id": request_id} if self._echo_request_id else {}
        return Response(body, status_code=status, media_type="application/json",
                        headers={**extra, **(headers or {})}, background=background)

    def _client_error(self, status: int, code: str, message: str, details: list[dict[str, Any]],
                      request_id: str, headers: dict[str, str] | None = None, *, oip: bool = False) -> Response:
        self._client_errors[code] += 1
        if self._metrics:
            self._metrics.failed("none", status, code)
        body = oip_error_body(code, message, details) if oip else error_body(code, message, details)
        return self._json(status, body, request_id, headers)


# --------------------------------------------------------------------------------------------- helpers
def _validator(schema: Schema, limits: dict[str, Any], features: dict[str, Any] | None) -> Any:
    """The request validator; with a feature service, one that fetches store-served features by entity key."""
    if not features:
        return RequestValidator(schema, max_body_bytes=limits["max_body_bytes"], max_instances=limits["max_instances"],
                                max_string_length=limits.get("max_string_length", DEFAULT_MAX_STRING_LENGTH))
    from raymlops.features.serving import OnlineRequestValidator

    return OnlineRequestValidator(features, schema, max_body_bytes=limits["max_body_bytes"],
                                  max_instances=limits["max_instances"],
                                  max_string_length=limits.get("max_string_length", DEFAULT_MAX_STRING_LENGTH))


def _rows(version: _Version, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON-ready prediction per instance, labels decoded to class values (``LoadedModel.predict_decoded``,
    which MLflow's pyfunc loader answers with too)."""
    out = version.model.predict_decoded(columns)
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def _redacted(versions: list[dict[str, Any]], replica_id: str, started_at: str,
              configured: int | None) -> dict[str, Any]:
    """The parts of ``info`` that differ for a caller without the admin scope: no package paths, no pid."""
    return {"versions": [{k: v for k, v in d.items() if k != "package_uri"} for d in versions],
            "replica": {"id": replica_id, "started_at": started_at, "configured_replicas": configured}}


def _roles(state: _State) -> dict[str, str]:
    return {v: spec.role for v, spec in state.versions.items()}


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raymlops")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


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


async def _read_body(request: Request, limit: int, timeout_s: float = 10.0) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before it is read whole, and (408) a body not
    received within ``timeout_s``: a slow client must not hold a replica's request slot for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _HTTPError(400, "invalid_content_length", f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise RequestError(413, "body_too_large", f"the request body has {declared} bytes, over the limit of "
                               f"{limit}; send fewer instances per request")
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"the request body is over the limit of {limit} "
                                   "bytes; send fewer instances per request")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)  # not asyncio.timeout: Python 3.10 is supported
    except asyncio.TimeoutError:
        raise _HTTPError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s "
                         f"(serving.body_timeout_s; {size} bytes received); send it at once",
                         {"Connection": "close"}) from None
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
