"""Pure logic of the pre-exposure tests of a model service (``raymlops.control.preexposure`` runs them over HTTP).

* ``bad_input_cases``: the requests of the HTTP error contract (``core.request_validation`` and ``serve.app``)
  built for one schema, each with the status, error code and (for 422) the detail it must get back;
  ``check_error_response`` judges one answer against its case.
* ``check_predictions``: a 200 answer against the model's signature (binary: probability in [0, 1] and label;
  multiclass: probabilities and label; regression: value), one problem line per defect.
* ``synthetic_instances`` (valid rows made from the schema alone) and ``as_request_instance`` (a data row as a
  JSON client sends it).
* ``load_figures`` and ``load_gate``: QPS and latency quantiles of a bounded load, and the gates on them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymlops.core.outputs import PREDICTION_FIELDS
from raymlops.core.schema import ColumnSpec, Schema

__all__ = [
    "DEFAULT_OUTPUTS",
    "UNKNOWN_FEATURE",
    "UNKNOWN_MODEL",
    "BadInputCase",
    "LoadFigures",
    "LoadGate",
    "as_request_instance",
    "bad_input_cases",
    "check_error_response",
    "check_predictions",
    "expected_outputs",
    "load_figures",
    "interleaved_blocks",
    "interleaved_figures",
    "load_gate",
    "summarize_error_details",
    "synthetic_instances",
]

DEFAULT_OUTPUTS = PREDICTION_FIELDS
UNKNOWN_FEATURE = "__preexposure_unknown_feature__"
UNKNOWN_MODEL = "__preexposure_unknown_model__"
_MAX_LINES = 5  # problems listed per kind; the rest are counted, so a detail stays readable
_PROB_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------- bad inputs
@dataclass(frozen=True)
class BadInputCase:
    """One request of the error contract and the answer it must get.

    ``model`` is the model name in the path (``UNKNOWN_MODEL`` for the 404 case); ``detail`` is the
    ``(field, code)`` that must appear among the 422 ``details``.
    """

    name: str
    body: bytes
    status: int
    code: str
    model: str
    detail: tuple[str, str] | None = None


def _body(instances: Any, *, allow_nan: bool = False) -> bytes:
    return json.dumps({"instances": instances}, allow_nan=allow_nan, separators=(",", ":")).encode()


def _first(columns: Iterable[ColumnSpec], kind: str | None = None, *, required: bool = False) -> ColumnSpec | None:
    return next((c for c in columns if (kind is None or c.kind == kind) and (not required or not c.nullable)),
                None)


def bad_input_cases(schema: Schema, *, model: str, max_body_bytes: int, max_instances: int) -> list[BadInputCase]:
    """The bad requests of the error contract for ``schema``, each with its expected status and error code.

    Every case starts from one valid synthetic instance, so exactly one thing is wrong in it. Cases that the
    schema cannot express (no required feature to leave out, no numeric feature for a NaN) are left out.
    """
    good = synthetic_instances(schema, 1)[0]
    features = schema.features
    cases = [
        BadInputCase("malformed_json", b'{"instances": [{', 400, "malformed_json", model),
        BadInputCase("not_an_object", b"[]", 400, "invalid_body", model),
        BadInputCase("empty_instances", _body([]), 422, "empty_instances", model),
        BadInputCase("unknown_feature", _body([{**good, UNKNOWN_FEATURE: 1.0}]), 422, "schema_violation", model,
                     (UNKNOWN_FEATURE, "unknown_feature")),
        BadInputCase("unknown_model", _body([good]), 404, "unknown_model", UNKNOWN_MODEL),
    ]
    required = _first(features, required=True)
    if required is not None:
        missing = {k: v for k, v in good.items() if k != required.name}
        cases.append(BadInputCase("missing_feature", _body([missing]), 422, "schema_violation", model,
                                  (required.name, "missing_feature")))
    numeric = _first(features, "numeric")
    typed = numeric or _first(features)
    if typed is not None:
        # A string is never a number; an object is never a category or a scalar.
        wrong = "not-a-number" if typed.kind == "numeric" else {"not": "a value"}
        cases.append(BadInputCase("wrong_type", _body([{**good, typed.name: wrong}]), 422, "schema_violation",
                                  model, (typed.name, "wrong_type")))
    if numeric is not None:
        nan = _body([{**good, numeric.name: math.nan}], allow_nan=True)  # json writes the bare NaN literal
        cases.append(BadInputCase("nan_literal", nan, 422, "schema_violation", model, (numeric.name, "non_finite")))
    if schema.label_name:
        cases.append(BadInputCase("label_sent", _body([{**good, schema.label_name: 0}]), 422, "schema_violation",
                                  model, (schema.label_name, "label_not_allowed")))
    too_many = _body([good] * (max_instances + 1))
    if len(too_many) <= max_body_bytes:  # else the body limit answers first, which the next case covers
        cases.append(BadInputCase("too_many_instances", too_many, 422, "too_many_instances", model))
    base = _body([good])
    # JSON allows trailing whitespace: the body stays valid and is refused for its size alone.
    padded = base + b" " * max(0, max_body_bytes + 1 - len(base))
    cases.append(BadInputCase("body_too_large", padded, 413, "body_too_large", model))
    return cases


def _error_doc(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
            and isinstance(error.get("details", []), list)):
        return None
    return error


def check_error_response(case: BadInputCase, status: int, body: bytes) -> list[str]:
    """Problems with the answer to ``case`` (empty when it got its status, a JSON error body and its code)."""
    error = _error_doc(body)
    got = f"{status} {error['code']}" if error else f"{status} {body[:80]!r}"
    want = f"{case.status} {case.code}"
    if status >= 500:
        return [f"{case.name}: a client mistake got a server error ({got}, want {want}); the service must "
                "validate this input and answer 4xx, see the replica log for the traceback"]
    if error is None:
        return [f"{case.name}: got {got}, not a JSON error body {{\"error\": {{\"code\", \"message\", "
                f"\"details\"}}}} (want {want})"]
    if status != case.status or error["code"] != case.code:
        return [f"{case.name}: got {got}, want {want}"]
    if case.detail is not None:
        fields = {(d.get("field"), d.get("code")) for d in error.get("details", []) if isinstance(d, dict)}
        if case.detail not in fields:
            return [f"{case.name}: got {got} but no detail {case.detail[1]} for field '{case.detail[0]}' "
                    f"(details: {summarize_error_details(error.get('details', []))})"]
    return []


def summarize_error_details(details: Sequence[Any]) -> str:
    """``code: field, field; code: field`` over the distinct (code, field) pairs of an error's details."""
    by_code: dict[str, list[str]] = {}
    for d in details:
        if isinstance(d, dict):
            names = by_code.setdefault(str(d.get("code")), [])
            name = str(d.get("field"))
            if name not in names:
                names.append(name)
    return "; ".join(f"{code}: {', '.join(names)}" for code, names in by_code.items()) or "none"


# ----------------------------------------------------------------------------------------- predictions
def expected_outputs(task: str, signature: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Output keys of one prediction: the signature's ``outputs`` when it lists them, else the task's default."""
    listed = (signature or {}).get("outputs")
    if isinstance(listed, list) and listed and all(isinstance(x, str) for x in listed):
        return tuple(listed)
    return DEFAULT_OUTPUTS.get(task, ())


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _probability(v: Any) -> bool:
    return _is_number(v) and -_PROB_TOLERANCE <= v <= 1 + _PROB_TOLERANCE


def _label_problem(label: Any, classes: Sequence[Any]) -> str | None:
    if label is None or isinstance(label, (list, dict)):
        return f"label {json.dumps(label)[:40]} is not a single class value"
    if classes and json.dumps(label) not in {json.dumps(c) for c in classes}:
        return f"label {json.dumps(label)[:40]} is not one of the classes {list(classes)[:10]}"
    return None


def _prediction_problems(p: Any, task: str, outputs: Sequence[str], classes: Sequence[Any]) -> list[str]:
    if not isinstance(p, dict):
        return [f"is a JSON {type(p).__name__}, not an object"]
    out = [f"lacks '{k}'" for k in outputs if k not in p]
    if task == "binary" and "probability" in p and not _probability(p["probability"]):
        out.append(f"probability {p['probability']!r} is not a number in [0, 1]")
    if task == "multiclass" and "probabilities" in p:
        probs = p["probabilities"]
        if not (isinstance(probs, list) and probs and all(_probability(x) for x in probs)):
            out.append(f"probabilities {str(probs)[:60]} is not a list of numbers in [0, 1]")
        elif classes and len(probs) != len(classes):
            out.append(f"probabilities has {len(probs)} entries for {len(classes)} classes")
        elif abs(sum(probs) - 1.0) > 1e-3:
            out.append(f"probabilities sum to {sum(probs):.4f}, not 1")
    if task == "regression" and "value" in p and not _is_number(p["value"]):
        out.append(f"value {p['value']!r} is not a finite number")
    if task in ("binary", "multiclass") and "label" in p:
        problem = _label_problem(p["label"], classes)
        if problem:
            out.append(problem)
    return out


def check_predictions(doc: Any, *, n: int, version: str, task: str, outputs: Sequence[str],
                      classes: Sequence[Any] = ()) -> list[str]:
    """Problems with a 200 body ``{"predictions", "model_version", "request_id"}`` for ``n`` instances."""
    if not isinstance(doc, dict):
        return [f"the body is a JSON {type(doc).__name__}, not an object with 'predictions'"]
    problems = []
    if str(doc.get("model_version")) != version:
        problems.append(f"model_version is {doc.get('model_version')!r}, not {version!r}")
    if not isinstance(doc.get("request_id"), str) or not doc["request_id"]:
        problems.append("request_id is missing or not a string")
    preds = doc.get("predictions")
    if not isinstance(preds, list):
        return [*problems, f"predictions is a JSON {type(preds).__name__}, not a list"]
    if len(preds) != n:
        problems.append(f"{len(preds)} predictions for {n} instances")
    bad = [(i, msg) for i, p in enumerate(preds) for msg in _prediction_problems(p, task, outputs, classes)]
    problems += [f"prediction {i} {msg}" for i, msg in bad[:_MAX_LINES]]
    if len(bad) > _MAX_LINES:
        problems.append(f"... and {len(bad) - _MAX_LINES} more prediction problems")
    return problems


# ---------------------------------------------------------------------------------------------- inputs
def _synthetic_value(c: ColumnSpec, i: int, n: int) -> Any:
    if c.kind == "numeric":
        lo = 0.0 if c.min is None else float(c.min)
        hi = lo + 1.0 if c.max is None else float(c.max)
        return lo + (hi - lo) * (i + 0.5) / n  # spread inside the frozen range: nothing out of range
    if c.kind == "categorical":
        return c.domain[i % len(c.domain)] if c.domain else "preexposure"  # a string is always a category
    if c.kind == "timestamp":
        return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).isoformat()
    return "preexposure"


def synthetic_instances(schema: Schema, n: int) -> list[dict[str, Any]]:
    """``n`` valid instances made from the schema alone (numbers inside the frozen range, known categories)."""
    return [{c.name: _synthetic_value(c, i, n) for c in schema.features} for i in range(n)]


def _json_value(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # a missing value in a data file; JSON has null for it
    return v


def as_request_instance(row: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A data row as a JSON client sends it: only ``names`` (features and ids), JSON-ready values."""
    return {k: _json_value(row[k]) for k in names if k in row}


# ------------------------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class LoadFigures:
    """One bounded load: requests sent, answered 200, failed; QPS of the 200s; latency quantiles of the 200s."""

    requests: int
    ok: int
    errors: int
    duration_s: float
    qps: float
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)  # status code (0: no answer) -> count, errors only


def load_figures(latencies_ms: Sequence[float], statuses: Sequence[int], duration_s: float) -> LoadFigures:
    """Figures of a load from each request's status (0 when it got no answer) and the latencies of the 200s."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    ok = sum(1 for s in statuses if s == 200)
    errors = Counter(str(s) for s in statuses if s != 200)
    p50, p99 = (float(np.quantile(lat, 0.5)), float(np.quantile(lat, 0.99))) if lat.size else (None, None)
    qps = ok / duration_s if duration_s > 0 else 0.0
    return LoadFigures(len(statuses), ok, sum(errors.values()), float(duration_s), float(qps), p50, p99,
                       dict(sorted(errors.items())))


def interleaved_blocks(versions: Sequence[str], requests: int, block: int) -> list[tuple[str, int, int]]:
    """The order of an interleaved load: ``(version, start, stop)`` blocks of the same ``requests`` bodies, the
    versions taking turns, first one way then back (A[0:b], B[0:b], B[b:2b], A[b:2b], ...: neither always goes
    first), so a burst from a neighbour lands on blocks of every version."""
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    order = list(versions)
    return [(v, start, min(start + block, requests))
            for i, start in enumerate(range(0, requests, block)) for v in (order if i % 2 == 0 else order[::-1])]


def interleaved_figures(samples: Iterable[tuple[str, int, float]],
                        seconds: Mapping[str, float]) -> dict[str, LoadFigures]:
    """Figures per version of one interleaved load: ``samples`` are (version, status, latency ms) of every request,
    ``seconds`` each version's wall time (the sum of its blocks; a block runs alone, so its QPS is its own)."""
    by_version: dict[str, tuple[list[float], list[int]]] = {}
    for version, status, ms in samples:
        ok, statuses = by_version.setdefault(version, ([], []))
        statuses.append(status)
        if status == 200:
            ok.append(ms)
    return {v: load_figures(ok, statuses, seconds.get(v, 0.0)) for v, (ok, statuses) in by_version.items()}


@dataclass(frozen=True)
class LoadGate:
    """The load verdict: ``reasons`` block exposure, ``notes`` say which gate could not be applied and why."""

    passed: bool
    reasons: list[str]
    notes: list[str]
    p99_limit_ms: float | None
    p99_exceeded: bool = False  # the p99 gate is among the reasons (the one a noisy moment can fail)


def load_gate(challenger: LoadFigures, champion: LoadFigures | None, *, max_p99_increase_pct: float | None,
              min_qps: float | None) -> LoadGate:
    """Judge the challenger's load: no failed request, QPS >= ``min_qps``, p99 <= champion p99 x (1 + pct/100).

    The p99 gate applies only when the champion was measured with a p99 and ``max_p99_increase_pct`` is set.
    """
    reasons: list[str] = []
    notes: list[str] = []
    if challenger.errors:
        reasons.append(f"{challenger.errors} of {challenger.requests} requests failed (status: count "
                       f"{challenger.statuses}; 0 = no answer); fix the errors the contract check lists, or give "
                       "the service more capacity (serving.num_replicas, serving.max_queued_requests)")
    if min_qps is not None and challenger.qps < min_qps:
        reasons.append(f"throughput {challenger.qps:.1f} QPS is under pre_exposure.min_qps {min_qps:g}; add "
                       "replicas (serving.num_replicas), make the model smaller, or lower the gate")
    limit, exceeded = None, False
    if max_p99_increase_pct is None:
        notes.append("p99 gate off (pre_exposure.max_p99_increase_pct is null)")
    elif champion is None:
        notes.append("p99 gate not applied: no champion to compare with")
    elif champion.p99_ms is None or challenger.p99_ms is None:
        notes.append("p99 gate not applied: " + ("the champion" if champion.p99_ms is None else "the challenger")
                     + " answered no request with 200")
    else:
        limit = champion.p99_ms * (1 + max_p99_increase_pct / 100)
        if challenger.p99_ms > limit:
            exceeded = True
            reasons.append(f"p99 {challenger.p99_ms:.1f} ms is over the champion's {champion.p99_ms:.1f} ms + "
                           f"{max_p99_increase_pct:g}% = {limit:.1f} ms (pre_exposure.max_p99_increase_pct); make "
                           "the model faster or raise the gate")
    return LoadGate(not reasons, reasons, notes, limit, exceeded)
