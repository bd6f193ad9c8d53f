"""Standard inference protocols beside the native API: pure translation to and from the native request.

The serving app speaks three protocols on one ingress; each is translated here into the native body
``{"instances": [{feature: value, ...}, ...]}`` and then goes through the one ``RequestValidator``, the one
routing, logging and prediction path, so validation and the error contract are the same for every route:

* **Open Inference Protocol V2** (KServe / Triton; ``parse_infer_request``, ``oip_instances``,
  ``oip_response``, ``oip_metadata``): one input tensor per feature column (shape ``[n]`` or ``[n, 1]``), or one
  2-D tensor ``[n, k]`` whose columns are the schema's features in order (practical only when every feature
  has the tensor's datatype). Tensor data may be JSON or Triton's binary tensor extension (the default of
  ``tritonclient``: ``Inference-Header-Content-Length`` plus raw little-endian buffers); outputs are always
  JSON (a client asking for binary outputs reads JSON ones just as well).
* **MLflow scoring** (``mlflow_instances``): ``dataframe_split``, ``dataframe_records``, ``instances`` and
  ``inputs``, answered ``{"predictions": [...]}`` with one record per row as MLflow serves a DataFrame.
* **Version and alias pins** (``match_route``, ``resolve_pin``): ``/v1/models/{name}/versions/{v}:predict``,
  ``/v1/models/{name}/aliases/{alias}:predict`` and OIP's ``/versions/{v}``.

Protocol mistakes (shape, datatype, data length, unknown keys) are ``RequestError`` 400s whose detail names the
tensor or key; what the data says about the features (types, nulls, domains) is left to the validator (422).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymlops.core.outputs import PREDICTION_FIELDS
from raymlops.core.request_validation import RequestError
from raymlops.core.schema import ColumnSpec, Schema

__all__ = ["OIP_DATATYPES", "InferRequest", "Route", "Tensor", "check_outputs", "match_route", "mlflow_instances",
           "is_oip_path", "native_body", "oip_datatype", "oip_error_body", "oip_instances", "oip_metadata", "oip_response", "parse_infer_request",
           "pin_aliases", "resolve_pin"]

# OIP datatype -> little-endian numpy dtype of its binary form (BYTES: 4-byte length + bytes per element).
OIP_DATATYPES: dict[str, str | None] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BYTES": None,
}
_ARROW_TO_OIP = {"bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
                 "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "halffloat": "FP16",
                 "float16": "FP16", "float": "FP32", "float32": "FP32", "double": "FP64", "float64": "FP64"}
_MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_SEGMENT = r"[^/:]+"


# ------------------------------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class Route:
    """A matched request path: its protocol action, the one method it takes, and what it names.

    ``scope`` is the permission a caller needs (``predict``, ``feedback``, ``admin``) or None for probes, so
    authentication can wrap every route from one table.
    """

    action: str  # health | info | predict | feedback | live | ready | metadata | model_ready | infer | ping | invocations
    method: str
    scope: str | None
    model: str | None = None
    version: str | None = None
    alias: str | None = None


_V1 = re.compile(rf"/v1/models/(?P<model>{_SEGMENT})(?:/versions/(?P<version>{_SEGMENT})|/aliases/(?P<alias>"
                 rf"{_SEGMENT}))?(?::(?P<verb>[^/]*))?")
_V2 = re.compile(rf"/v2/models/(?P<model>{_SEGMENT})(?:/versions/(?P<version>{_SEGMENT}))?(?:/(?P<verb>ready|infer))?")
_FIXED = {
    "/healthz": Route("health", "GET", None), "/ping": Route("ping", "GET", None),
    "/invocations": Route("invocations", "POST", "predict"), "/v2/health/live": Route("live", "GET", None),
    "/v2/health/ready": Route("ready", "GET", None), "/v2": Route("server_metadata", "GET", None),
}


def match_route(path: str, model: str) -> Route:
    """The route of ``path`` (relative to the app's prefix); ``RequestError`` 404 naming the routes otherwise."""
    fixed = _FIXED.get(path)
    if fixed is not None:
        return fixed
    m = _V1.fullmatch(path)
    if m is not None:
        verb, pinned = m.group("verb"), m.group("version") or m.group("alias")
        if verb not in (None, "predict", "feedback") or (pinned and verb != "predict"):
            allowed = ":predict" if pinned else ":predict or :feedback"
            raise RequestError(404, "unknown_route", f"unknown action ':{verb or ''}' on {path}; use {allowed}")
        if verb is None:
            return Route("info", "GET", "admin", m.group("model"))
        return Route(verb, "POST", verb, m.group("model"), m.group("version"), m.group("alias"))
    m = _V2.fullmatch(path)
    if m is not None:
        verb = m.group("verb")
        action, method, scope = {None: ("metadata", "GET", "predict"), "ready": ("model_ready", "GET", None),
                                 "infer": ("infer", "POST", "predict")}[verb]
        return Route(action, method, scope, m.group("model"), m.group("version"))
    raise RequestError(404, "unknown_route", f"no route {path}; use POST /v1/models/{model}:predict (or "
                       f"/v1/models/{model}/versions/V:predict, /aliases/A:predict), POST /v1/models/{model}:feedback, "
                       f"GET /v1/models/{model}, GET /healthz, POST /v2/models/{model}/infer, GET /v2/models/{model}, "
                       "GET /v2/health/live|ready, POST /invocations or GET /ping")


def pin_aliases(roles: Mapping[str, str], champion: str) -> dict[str, str]:
    """The aliases a serving app knows from its versions' roles.

    ``champion``; ``canary`` when exactly one version has live weight beside the champion; ``shadow``; and
    ``challenger`` for the canary, or else the shadow (the registry's challenger is deployed as one of them).
    """
    out = {"champion": champion}
    canaries = [v for v, role in roles.items() if role == "canary"]
    shadows = [v for v, role in roles.items() if role == "shadow"]
    if len(canaries) == 1:
        out["canary"] = canaries[0]
    if shadows:
        out["shadow"] = shadows[0]
    challenger = out.get("canary") or out.get("shadow")
    if challenger is not None:
        out["challenger"] = challenger
    return out


def resolve_pin(roles: Mapping[str, str], champion: str, *, version: str | None = None,
                alias: str | None = None) -> str | None:
    """The loaded version a route pins (``"3"`` or ``"v3"``, or an alias), None when unpinned; 404 otherwise."""
    loaded = sorted(roles, key=lambda v: (len(v), v))
    if version is not None:
        v = version[1:] if version[:1] in ("v", "V") and version[1:].isdigit() else version
        if v not in roles:
            raise RequestError(404, "unknown_version", f"version {version} is not loaded in this app; loaded "
                               f"versions: {loaded} (deploy it with `raymlops serve set-weights` or pick one "
                               "of these)")
        return v
    if alias is not None:
        aliases = pin_aliases(roles, champion)
        if alias not in aliases:
            raise RequestError(404, "unknown_alias", f"alias '{alias}' names no version loaded in this app; known "
                               f"aliases: {aliases}, loaded versions: {loaded}")
        return aliases[alias]
    return None


# ------------------------------------------------------------------------------------------------- OIP
@dataclass(frozen=True)
class Tensor:
    """One OIP input tensor, its data flattened (row-major) to Python values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any]


@dataclass(frozen=True)
class InferRequest:
    """An OIP ``/infer`` request: the client's ``id``, the inputs and the requested output names (None: all)."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None


def _bad(message: str, name: str | None = None, code: str = "invalid_tensor", *, status: int = 400,
         top: str = "invalid_tensor") -> RequestError:
    details = [] if name is None else [{"row": None, "field": name, "code": code, "message": message}]
    return RequestError(status, top, message, details)


def _load_json(text: bytes, hint: str, nan: Any = math.nan) -> Any:
    try:
        return json.loads(text, parse_constant=lambda c: nan if c == "NaN" else float(c))
    except RecursionError:
        raise RequestError(400, "malformed_json", f"the body nests too deeply; send {hint}") from None
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, "malformed_json", f"the body is not valid UTF-8 JSON ({err}); send {hint}") from None


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse an OIP ``/infer`` body, with binary tensor data when ``Inference-Header-Content-Length`` is given."""
    hint = '{"inputs": [{"name": feature, "datatype": "FP64", "shape": [n], "data": [...]}, ...]}'
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, "invalid_body", f"Inference-Header-Content-Length {header_length!r} is not a "
                               f"byte count within the {len(body)}-byte body")
        split = int(header_length)
        doc, binary = _load_json(body[:split], hint), memoryview(body)[split:]
    else:
        doc, binary = _load_json(body, hint), memoryview(b"")
    if not isinstance(doc, dict):
        raise RequestError(400, "invalid_body", f"the body is not a JSON object; send {hint}")
    extra = sorted(set(doc) - {"id", "inputs", "outputs", "parameters"})
    if extra:
        raise RequestError(400, "invalid_body", f"unknown key(s) {extra}; an infer request takes id, inputs, "
                           "outputs and parameters")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad('"id" must be a string', "id", "wrong_type", top="invalid_body")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "invalid_body", f'"inputs" must be a non-empty list of tensors; send {hint}')
    tensors, offset = [], 0
    for i, spec in enumerate(inputs):
        tensor, offset = _tensor(spec, i, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise RequestError(400, "invalid_body", f"{len(binary) - offset} byte(s) of binary data follow the "
                           "tensors that declare binary_data_size; send exactly the declared bytes")
    names = [t.name for t in tensors]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _bad(f"input tensor(s) {dup} are sent more than once; send one tensor per feature", dup[0])
    return InferRequest(rid, tensors, _requested_outputs(doc.get("outputs")))


def _tensor(spec: Any, i: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _bad(f"input {i} is not a tensor object with a string name", f"inputs[{i}]")
    name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
    if datatype not in OIP_DATATYPES:
        raise _bad(f"tensor '{name}' has datatype {json.dumps(datatype)}; use one of {sorted(OIP_DATATYPES)}",
                   name, "unknown_datatype")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(f"tensor '{name}' has shape {json.dumps(shape)}; use [n] or [n, k] (n rows)", name, "bad_shape")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise _bad(f"tensor '{name}' declares binary_data_size {size!r} but {len(binary) - offset} byte(s) "
                       "are left in the body", name, "bad_binary_size")
        data = _from_binary(name, datatype, binary[offset:offset + size], count)
        offset += size
    else:
        if "data" not in spec:
            raise _bad(f"tensor '{name}' has no data; send \"data\" (or binary data with binary_data_size)", name,
                       "missing_data")
        data = _flatten(spec["data"], name)
        _check_json_types(name, datatype, data)
    if len(data) != count:
        raise _bad(f"tensor '{name}' has {len(data)} value(s) but its shape {shape} holds {count}", name,
                   "shape_mismatch")
    return Tensor(name, datatype, tuple(shape), data), offset


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:  # row-major; OIP allows nested rows
        if isinstance(x, list) and any(isinstance(y, list) for y in x):
            raise _bad(f"tensor '{name}' nests its data more than two levels; send [n] or [n, k]", name, "bad_shape")
        out.extend(x if isinstance(x, list) else [x])
    return out


def _check_json_types(name: str, datatype: str, data: list[Any]) -> None:
    if datatype == "BOOL":
        ok, want = (lambda v: type(v) is bool), "true/false"
    elif datatype == "BYTES":
        ok, want = (lambda v: type(v) is str), "strings"
    elif datatype.startswith(("INT", "UINT")):
        ok, want = (lambda v: type(v) is int), "integers"
    else:
        ok, want = (lambda v: type(v) in (int, float)), "numbers"
    for j, v in enumerate(data):
        if v is not None and not ok(v):  # null: a missing value (JSON only), judged by the validator
            raise _bad(f"tensor '{name}' is {datatype} but element {j} is {json.dumps(v)[:40]}; send {want} or "
                       "the datatype that fits the values", name, "wrong_datatype")


def _from_binary(name: str, datatype: str, raw: memoryview, count: int) -> list[Any]:
    dtype = OIP_DATATYPES[datatype]
    if dtype is not None:
        width = np.dtype(dtype).itemsize
        if len(raw) != count * width:
            raise _bad(f"tensor '{name}' has {len(raw)} binary byte(s) but {count} {datatype} value(s) take "
                       f"{count * width}", name, "shape_mismatch")
        return np.frombuffer(raw, dtype=dtype).tolist()
    out, pos = [], 0
    while pos < len(raw):  # BYTES: a little-endian uint32 length, then the bytes, per element
        if pos + 4 > len(raw):
            raise _bad(f"tensor '{name}' ends inside an element length", name, "bad_binary_size")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise _bad(f"tensor '{name}' element {len(out)} declares {n} bytes past the tensor's end", name,
                       "bad_binary_size")
        try:
            out.append(bytes(raw[pos + 4:pos + 4 + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"tensor '{name}' element {len(out)} is not UTF-8 text", name, "wrong_datatype") from None
        pos += 4 + n
    return out


def _requested_outputs(outputs: Any) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise RequestError(400, "invalid_body", '"outputs" must be a list of {"name": output} objects')
    return [o["name"] for o in outputs]


def check_outputs(request: InferRequest, task: str) -> None:
    """Refuse (400) requested outputs the model does not produce, before anything is predicted."""
    known = PREDICTION_FIELDS[task]
    for name in request.outputs or ():
        if name not in known:
            raise _bad(f"output '{name}' is not produced by this model; request one of {list(known)}", name,
                       "unknown_output", top="unknown_output")


def oip_instances(request: InferRequest, features: Sequence[str]) -> list[dict[str, Any]]:
    """The request's rows as native instances: tensors named by column, or one ``[n, k]`` tensor of features."""
    inputs = request.inputs
    first = inputs[0]
    if len(inputs) == 1 and len(first.shape) == 2 and (first.name not in features or first.shape[1] > 1):
        if first.shape[1] != len(features):
            raise _bad(f"tensor '{first.name}' has {first.shape[1]} column(s) but the model takes "
                       f"{len(features)} features, in this order: {list(features)}; send one column per feature, "
                       "or one tensor per feature", first.name, "shape_mismatch")
        k = first.shape[1]
        return [dict(zip(features, first.data[r * k:(r + 1) * k], strict=True)) for r in range(first.shape[0])]
    n = first.shape[0]
    for t in inputs:
        if len(t.shape) == 2 and t.shape[1] != 1:
            raise _bad(f"tensor '{t.name}' has shape {list(t.shape)}; a feature column is [n] or [n, 1]", t.name,
                       "bad_shape")
        if t.shape[0] != n:
            raise _bad(f"tensor '{t.name}' has {t.shape[0]} row(s) but '{first.name}' has {n}; send the same "
                       "rows in every tensor", t.name, "shape_mismatch")
    columns = [(t.name, t.data) for t in inputs]
    return [{name: data[r] for name, data in columns} for r in range(n)]


def oip_datatype(spec: ColumnSpec) -> str:
    """The OIP datatype a client sends for a schema column (category strings travel as BYTES)."""
    dt = _ARROW_TO_OIP.get(spec.dtype)
    if dt is not None and (spec.kind == "numeric" or (spec.kind == "categorical" and dt in ("BOOL", "INT64",
                                                                                             "FP64", "FP32"))):
        return dt
    return "FP64" if spec.kind == "numeric" else "BYTES"


def _value_datatype(values: Sequence[Any]) -> str:
    types = {type(v) for v in values}
    if types == {bool}:
        return "BOOL"
    if types == {int}:
        return "INT64"
    if types and types <= {int, float}:
        return "FP64"
    return "BYTES"


def oip_metadata(name: str, versions: Sequence[str], schema: Schema, task: str, classes: Sequence[Any], *,
                 served: Sequence[str] = (), keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """OIP model metadata: one ``[-1]`` input per feature the client sends (``served`` features come from the
    feature store by entity ``keys``, name -> "string" | "int64"), and the prediction fields as outputs."""
    inputs = [{"name": c.name, "datatype": oip_datatype(c), "shape": [-1]} for c in schema.features
              if c.name not in served]
    inputs += [{"name": k, "datatype": "INT64" if kind == "int64" else "BYTES", "shape": [-1]}
               for k, kind in (keys or {}).items() if schema.column(k) is None or schema.column(k).role != "feature"]
    outputs = []
    for field in PREDICTION_FIELDS[task]:
        if field == "label":
            outputs.append({"name": field, "datatype": _value_datatype(list(classes)), "shape": [-1]})
        elif field == "probabilities":
            outputs.append({"name": field, "datatype": "FP64", "shape": [-1, len(classes)]})
        else:
            outputs.append({"name": field, "datatype": "FP64", "shape": [-1]})
    return {"name": name, "versions": list(versions), "platform": "raymlops", "inputs": inputs, "outputs": outputs}


def is_oip_path(path: str) -> bool:
    """Whether a (prefix-relative) path is an OIP V2 route, whose errors take ``oip_error_body``'s shape."""
    return path == "/v2" or path.startswith("/v2/")


def oip_error_body(code: str, message: str, details: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """An error as OIP clients read it (``{"error": "<text>"}``: tritonclient fails on anything but a string),
    with the native contract's ``code`` and ``details`` beside it; the text names the first offending fields,
    since that string is all such a client shows."""
    shown = [f"row {d.get('row')} '{d.get('field')}': {d.get('message')}" if d.get("row") is not None else
             f"'{d.get('field')}': {d.get('message')}" for d in list(details)[:3]]
    more = f" (+{len(details) - 3} more)" if len(details) > 3 else ""
    text = f"{code}: {message}" + (" — " + "; ".join(shown) + more if shown else "")
    return {"error": text, "code": code, "details": list(details)}


def oip_response(model: str, version: str, request_id: str, request: InferRequest, task: str,
                 predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The OIP answer: one output tensor per prediction field (``[n]``, or ``[n, k]`` for class probabilities).

    ``id`` echoes the client's id (the server's request id when none was sent); ``parameters.request_id`` is
    always the server's, the one ``:feedback`` takes.
    """
    n = len(predictions)
    outputs = []
    for field in request.outputs or PREDICTION_FIELDS[task]:
        values = [p[field] for p in predictions]
        if values and isinstance(values[0], list):
            k = len(values[0])
            outputs.append({"name": field, "datatype": "FP64", "shape": [n, k],
                            "data": [x for row in values for x in row]})
        else:
            dt = "FP64" if field != "label" else _value_datatype(values)
            outputs.append({"name": field, "datatype": dt, "shape": [n],
                            "data": values if dt != "BYTES" else [str(v) for v in values]})
    return {"model_name": model, "model_version": version, "id": request.id or request_id,
            "parameters": {"request_id": request_id}, "outputs": outputs}


# ------------------------------------------------------------------------------------------------- MLflow
def mlflow_instances(body: bytes, content_type: str | None, features: Sequence[str]) -> list[Any]:
    """MLflow scoring input (``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs``) as native
    instances; rows given as lists take the schema's feature order."""
    hint = ('{"dataframe_split": {"columns": [...], "data": [[...]]}}, {"dataframe_records": [{...}]}, '
            '{"instances": [...]} or {"inputs": {...}}')
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, "unsupported_media_type", f"Content-Type {media!r} is not accepted here; send "
                           f"application/json with one of {hint}")
    # pandas (and so MLflow's client) writes a missing value as NaN: it is null here, as in MLflow's server.
    doc = _load_json(body, hint, nan=None)
    if not isinstance(doc, dict):
        raise RequestError(400, "invalid_body", f"the body is not a JSON object; send {hint}")
    params = doc.get("params")
    if params not in (None, {}):
        raise _bad("this model takes no params; leave \"params\" out", "params", "unknown_key", top="invalid_body")
    extra = sorted(set(doc) - {*_MLFLOW_FORMATS, "params"})
    given = [k for k in _MLFLOW_FORMATS if k in doc]
    if extra or len(given) != 1:
        what = f"unknown key(s) {extra}" if extra else f"{len(given)} input formats {given}"
        raise RequestError(400, "invalid_body", f"{what}; send exactly one of {list(_MLFLOW_FORMATS)}")
    fmt = given[0]
    value = doc[fmt]
    if fmt == "dataframe_split":
        return _split_rows(value, features)
    if fmt == "dataframe_records":
        if not isinstance(value, list):
            raise _bad('"dataframe_records" must be a list of {column: value} objects', fmt, "wrong_type",
                       top="invalid_body")
        return value
    if isinstance(value, dict):
        return _columnar_rows(value, fmt)
    if not isinstance(value, list):
        raise _bad(f'"{fmt}" must be a list of rows or a {{column: [values]}} object', fmt, "wrong_type",
                   top="invalid_body")
    return [_row(r, features, fmt, i) if isinstance(r, list) else r for i, r in enumerate(value)]


def _split_rows(value: Any, features: Sequence[str]) -> list[Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise _bad('"dataframe_split" must be {"columns": [...], "data": [[...], ...]}', "dataframe_split",
                   "wrong_type", top="invalid_body")
    columns = value.get("columns", list(features))
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad('"dataframe_split.columns" must be a list of column names', "dataframe_split.columns",
                   "wrong_type", top="invalid_body")
    return [_row(r, columns, "dataframe_split.data", i) for i, r in enumerate(value["data"])]


def _row(row: Any, columns: Sequence[str], where: str, i: int) -> dict[str, Any]:
    if not isinstance(row, list) or len(row) != len(columns):
        got = f"{len(row)} values" if isinstance(row, list) else f"a JSON {type(row).__name__}"
        raise _bad(f"{where}[{i}] has {got} but there are {len(columns)} columns ({list(columns)[:20]}); send "
                   "one value per column", where, "shape_mismatch", top="invalid_body")
    return dict(zip(columns, row, strict=True))


def _columnar_rows(value: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    lengths = {}
    for name, col in value.items():
        if not isinstance(col, list):
            raise _bad(f'"{fmt}.{name}" must be a list of values, one per row', f"{fmt}.{name}", "wrong_type",
                       top="invalid_body")
        lengths[name] = len(col)
    if len(set(lengths.values())) > 1:
        raise _bad(f'the columns of "{fmt}" have different lengths {lengths}; send one value per row in each',
                   fmt, "shape_mismatch", top="invalid_body")
    n = next(iter(lengths.values()), 0)
    return [{name: col[r] for name, col in value.items()} for r in range(n)]


# ------------------------------------------------------------------------------------------------- native
def native_body(instances: list[Any], max_body_bytes: int) -> bytes:
    """The native request body for translated rows (non-finite floats written as NaN/Infinity literals, which
    the validator reports per field); 413 when the rows are over the body limit."""
    body = json.dumps({"instances": instances}, separators=(",", ":"), allow_nan=True).encode()
    if len(body) > max_body_bytes:
        raise RequestError(413, "body_too_large", f"the request's {len(instances)} rows take {len(body)} bytes as "
                           f"instances, over the limit of {max_body_bytes}; send fewer rows per request")
    return body
