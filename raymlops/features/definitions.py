"""Feature definitions: entities, feature views and feature services, in one YAML "feature repo" file.

```yaml
project: churn
online_store: {type: sqlite, path: ./.raymlops/features/online.sqlite}   # or {type: redis, url: redis://...}
entities:
  customer: {join_keys: {customer_id: string}, description: A paying customer}
feature_views:
  customer_usage:
    entity: customer
    source: {uri: ./.raymlops/feature-data/customer_usage, format: parquet}
    event_timestamp: event_ts
    created_timestamp: created_ts      # optional: among equal event times the latest created wins
    ttl_s: 2592000                     # optional: older values are not served (null); null = no limit
    features: {usage_gb: {type: float64}, support_calls: {type: int64}}
    description: ..., owner: ..., tags: {team: growth}
feature_services:
  churn_model: {features: [customer_profile, "customer_usage:usage_gb"]}   # a whole view, or view:feature
```

Feast's spellings are accepted too, so a Feast user's habits carry over (each maps onto the key above; giving
both spellings with different values is an error naming both): named lists (``entities: [{name: customer, ...}]``,
likewise ``feature_views`` and ``feature_services``); an entity's ``join_keys: [customer_id]`` with ``value_type:
STRING``; a view's ``entities: [customer]`` (one entity), ``ttl`` (seconds, or ``3d``, ``12h``, ``1d12h``),
``schema: [{name: usage_gb, dtype: Float32}]`` (Float32/Float64, Int32/Int64, String, Bool) and a source's
``path``, ``file_format``, ``timestamp_field`` and ``created_timestamp_column``; ``provider: local`` and
``offline_store: {type: file}`` (what raymlops does).

Relative paths are relative to the working directory, like every raymlops config. The validated document has a
content digest (``FeatureRepo.digest``): a training set, a materialisation and a served model record the digest
of the definitions they used, and ``save_copy`` keeps that exact document under the storage root.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raymlops import storage
from raymlops.core.fingerprint import digest_bytes
from raymlops.core.safe_yaml import load_bounded
from raymlops.errors import ConfigError

__all__ = ["FeatureRepo", "ResolvedView", "load_feature_repo", "parse_feature_repo"]

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
Name = Annotated[str, Field(pattern=_NAME)]
FeatureType = Literal["int64", "float64", "string", "bool"]
KeyType = Literal["string", "int64"]


class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------ Feast's spellings
_FEAST_DTYPES = {"float32": "float64", "float64": "float64", "int32": "int64", "int64": "int64",
                 "string": "string", "bool": "bool"}
_FEAST_KEY_TYPES = {"string": "string", "int32": "int64", "int64": "int64"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNIT_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def _take(data: dict[str, Any], ours: str, feast: str, convert: Callable[[Any], Any] = lambda v: v,
          shown: str | None = None) -> dict[str, Any]:
    """``data`` with Feast's key renamed to ours (converted); both spellings with different values is an error."""
    if feast not in data:
        return data
    data = dict(data)
    value = convert(data.pop(feast))
    if ours in data and data[ours] != value:
        raise ValueError(f"both `{ours}` and `{shown or feast}` (Feast's name for it) are set, to different "
                         "values; keep one of them")
    data[ours] = value
    return data


def _named(items: Any, key: str) -> Any:
    """Feast's list of ``{name: ..., ...}`` as our mapping of name -> definition (anything else unchanged)."""
    if not isinstance(items, list):
        return items
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"{key}[{i}]: a list entry needs `name:` (or write {key} as a mapping of name -> "
                             "definition)")
        name = item["name"]
        if name in out:
            raise ValueError(f"{key}: '{name}' is defined twice; rename or remove one")
        out[name] = {k: v for k, v in item.items() if k != "name"}
    return out


def _ttl_s(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # a number of seconds (or null), validated as ttl_s
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"`ttl` {value!r} is not a duration; write seconds (259200) or units: 3d, 12h, 1d12h, 90m")
    return float(sum(float(n) * _UNIT_S[u] for n, u in parts))


def _entity_name(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"`entities` {value}: a raymlops feature view has one entity; define one entity whose "
                             "join_keys hold all the keys of the view")
        return value[0]
    return value


def _schema(value: Any) -> Any:
    if not isinstance(value, list):
        raise ValueError("`schema` must be a list of {name:, dtype:} fields (Feast's Field)")
    out: dict[str, Any] = {}
    for i, field in enumerate(value):
        if not isinstance(field, dict) or "name" not in field:
            raise ValueError(f"schema[{i}]: a field needs `name:` and `dtype:`")
        field = dict(field)
        name, dtype = field.pop("name"), field.pop("dtype", None)
        ours = _FEAST_DTYPES.get(str(dtype).lower())
        if ours is None:
            raise ValueError(f"schema[{i}] '{name}': dtype {dtype!r} is not supported; use one of Float32, Float64, "
                             "Int32, Int64, String, Bool")
        out[name] = {"type": ours, **field}
    return out


def _join_keys(data: dict[str, Any]) -> dict[str, Any]:
    keys = data.get("join_keys")
    if "value_type" not in data and not isinstance(keys, list):
        return data
    data = dict(data)
    value_type = data.pop("value_type", None)
    if not isinstance(keys, list):
        raise ValueError("`value_type` (Feast) types a `join_keys` list; with a mapping give each key its type "
                         "(join_keys: {customer_id: string})")
    kind = _FEAST_KEY_TYPES.get(str(value_type).lower())
    if kind is None:
        raise ValueError(f"`join_keys` {keys} as a list needs `value_type: STRING` or `INT64` (got {value_type!r}), "
                         "or write a mapping of key -> type (join_keys: {customer_id: string})")
    data["join_keys"] = {k: kind for k in keys}
    return data


def _feast_view(data: dict[str, Any]) -> dict[str, Any]:
    data = _take(data, "entity", "entities", _entity_name)
    data = _take(data, "ttl_s", "ttl", _ttl_s)
    data = _take(data, "features", "schema", _schema)
    source = data.get("source")
    if isinstance(source, dict):
        source = _take(_take(source, "uri", "path", shown="source.path"), "format", "file_format",
                       shown="source.file_format")
        for feast, ours in (("timestamp_field", "event_timestamp"), ("created_timestamp_column", "created_timestamp")):
            if feast in source:
                data = _take({**data, feast: source[feast]}, ours, feast, shown=f"source.{feast}")
                source = {k: v for k, v in source.items() if k != feast}
        data = {**data, "source": source}
    return data


_FEAST_ONLY = {
    "registry": "raymlops keeps no registry file: this YAML is the registry (its digest is recorded with each "
                "training set and materialisation); remove `registry`",
    "entity_key_serialization_version": "raymlops encodes entity keys one way; remove "
                                        "`entity_key_serialization_version`",
}


def _feast_repo(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for key, why in _FEAST_ONLY.items():
        if key in data:
            raise ValueError(why)
    if "provider" in data:
        if data["provider"] != "local":
            raise ValueError(f"provider {data['provider']!r}: raymlops reads sources through pyarrow filesystems "
                             "and runs on Ray wherever it is; remove `provider` (or write local)")
        del data["provider"]
    if "offline_store" in data:
        if data["offline_store"] not in ({"type": "file"}, "file"):
            raise ValueError("offline_store: raymlops reads each view's source files (parquet/csv) itself; remove "
                             "`offline_store` (or write {type: file})")
        del data["offline_store"]
    for key in ("entities", "feature_views", "feature_services"):
        if key in data:
            data[key] = _named(data[key], key)
    return data


class OnlineStoreDef(_Def):
    type: Literal["sqlite", "redis"] = Field("sqlite", description="sqlite (embedded, default) or redis.")
    path: str = Field("./.raymlops/features/online.sqlite", description="SQLite file (local path).")
    url: str | None = Field(None, description="Redis URL, e.g. redis://localhost:6379/0 (type redis); put no "
                            "password in it when serving: use password_env.")
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = Field(
        None, description="Environment variable holding the Redis password, read where the store is opened (each "
        "serving replica's node, the materialiser), so the password stays out of files and Serve's user_config.")
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        0.2, description="Serving path: Redis connect timeout (s).")
    read_timeout_s: Annotated[float, Field(gt=0, le=60)] = Field(
        0.5, description="Serving path: Redis socket timeout and SQLite busy timeout (s). A request's lookup "
        "slower than connect_timeout_s + read_timeout_s is answered 503 with Retry-After.")

    @model_validator(mode="before")
    @classmethod
    def _feast(cls, data: Any) -> Any:
        if isinstance(data, dict) and "connection_string" in data:
            raise ValueError("`connection_string` is Feast's; write url: redis://host:6379/0 and put the password "
                             "in the variable password_env names")
        return data

    @model_validator(mode="after")
    def _complete(self) -> OnlineStoreDef:
        if self.type == "redis" and not self.url:
            raise ValueError("type 'redis' needs `url`, e.g. redis://localhost:6379/0")
        if self.type == "sqlite" and "://" in self.path:
            raise ValueError(f"path {self.path!r}: SQLite needs a local file path; use type redis for a shared store")
        return self


class EntityDef(_Def):
    join_keys: dict[Name, KeyType] = Field(min_length=1, description="Key column -> string | int64.")
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _feast(cls, data: Any) -> Any:
        return _join_keys(data) if isinstance(data, dict) else data


class SourceDef(_Def):
    uri: str = Field(description="A file or directory of files (local path or pyarrow URI).")
    format: Literal["auto", "parquet", "csv"] = "auto"


class FeatureDef(_Def):
    type: FeatureType
    description: str = ""


class FeatureViewDef(_Def):
    entity: Name = Field(description="Name of an entity in `entities`.")
    source: SourceDef
    event_timestamp: Name = Field(description="Column with the time each value became true.")
    created_timestamp: Name | None = Field(None, description="Column with the time a row was written (ties).")
    ttl_s: Annotated[float, Field(ge=0)] | None = Field(None, description="Max age of a served value; null/0: none.")
    features: dict[Name, FeatureDef] = Field(min_length=1)
    online: bool = Field(True, description="Materialise this view into the online store.")
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _feast(cls, data: Any) -> Any:
        return _feast_view(data) if isinstance(data, dict) else data


class FeatureServiceDef(_Def):
    features: list[str] = Field(min_length=1, description="View names, or `view:feature` for single features.")
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class FeatureRepo(_Def):
    """A validated feature repo (see the module docstring for the YAML layout)."""

    project: Name = "default"
    online_store: OnlineStoreDef = Field(default_factory=OnlineStoreDef)
    entities: dict[Name, EntityDef] = Field(min_length=1)
    feature_views: dict[Name, FeatureViewDef] = Field(min_length=1)
    feature_services: dict[Name, FeatureServiceDef] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _feast(cls, data: Any) -> Any:
        return _feast_repo(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _references(self) -> FeatureRepo:
        for name, view in self.feature_views.items():
            if view.entity not in self.entities:
                raise ValueError(f"feature_views.{name}.entity: unknown entity '{view.entity}'; define it under "
                                 f"`entities` (known: {sorted(self.entities)})")
            reserved = {*self.entities[view.entity].join_keys, view.event_timestamp, view.created_timestamp}
            clash = sorted(reserved & set(view.features))
            if clash:
                raise ValueError(f"feature_views.{name}.features: {clash} are keys or timestamps of the view, not "
                                 "features; remove them from `features`")
        for name, service in self.feature_services.items():
            try:
                self._choose(service.features)
            except ValueError as err:
                raise ValueError(f"feature_services.{name}.features: {err}") from None
        return self

    def _choose(self, refs: Sequence[str]) -> dict[str, list[str]]:
        """View -> chosen features for ``view`` / ``view:feature`` refs, in listed order (ValueError says why not)."""
        chosen: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for ref in refs:
            view_name, _, feature = str(ref).partition(":")
            view = self.feature_views.get(view_name)
            if view is None:
                raise ValueError(f"unknown view '{view_name}' in {ref!r}; use one of {sorted(self.feature_views)}")
            if feature and feature not in view.features:
                raise ValueError(f"view '{view_name}' has no feature '{feature}'; its features are "
                                 f"{sorted(view.features)}")
            names = chosen.setdefault(view_name, [])
            for f in [feature] if feature else view.features:
                if f in seen and seen[f] != view_name:
                    raise ValueError(f"feature '{f}' comes from both '{seen[f]}' and '{view_name}'; list only one "
                                     "of them")
                seen[f] = view_name
                if f not in names:
                    names.append(f)
        return chosen

    # ---------------------------------------------------------------------------------------------- use
    @property
    def digest(self) -> str:
        """``sha256:...`` of the canonical JSON of the validated definitions (formatting does not count)."""
        doc = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return digest_bytes(doc.encode())

    def to_yaml(self) -> str:
        """The validated definitions, defaults filled in, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save_copy(self, storage_uri: str) -> str:
        """Write the definitions under ``{storage_uri}/features/definitions/<digest>.yaml`` (atomic); its URI."""
        uri = storage.join(storage_uri, "features", "definitions", self.digest.split(":")[-1][:16] + ".yaml")
        if not storage.exists(uri):
            storage.atomic_write_text(uri, self.to_yaml())
        return uri

    def view(self, name: str) -> ResolvedView:
        """One feature view with every feature, resolved (raises ``ConfigError`` naming the known views)."""
        if name not in self.feature_views:
            raise ConfigError(f"unknown feature view '{name}'; known views: {sorted(self.feature_views)} "
                              "(see `raymlops features list`)")
        return self._resolve(name, list(self.feature_views[name].features))

    def service(self, name: str) -> list[ResolvedView]:
        """The views of a feature service, each limited to the features the service uses, in listed order."""
        if name not in self.feature_services:
            raise ConfigError(f"unknown feature service '{name}'; known services: {sorted(self.feature_services)} "
                              "(see `raymlops features list`)")
        return [self._resolve(v, fs) for v, fs in self._choose(self.feature_services[name].features).items()]

    def select(self, features: str | Sequence[str]) -> list[ResolvedView]:
        """The views for a feature service name, or for a list of ``view:feature`` (or whole ``view``) refs as
        Feast writes them; each view limited to the chosen features, in listed order (``ConfigError`` if unknown)."""
        if isinstance(features, str):
            return self.service(features)
        if not features:
            raise ConfigError("no features requested; pass at least one `view:feature` ref (see `raymlops features "
                              "list`) or a feature service name")
        try:
            chosen = self._choose(features)
        except ValueError as err:
            raise ConfigError(f"features {list(features)}: {err}") from None
        return [self._resolve(v, fs) for v, fs in chosen.items()]

    def _resolve(self, name: str, features: list[str]) -> ResolvedView:
        view = self.feature_views[name]
        ttl = dt.timedelta(seconds=view.ttl_s) if view.ttl_s else None
        return ResolvedView(
            name=name, entity=view.entity, join_keys=dict(self.entities[view.entity].join_keys),
            source_uri=view.source.uri, source_format=view.source.format, event_timestamp=view.event_timestamp,
            created_timestamp=view.created_timestamp, ttl=ttl,
            features={f: view.features[f].type for f in features},
        )


@dataclass(frozen=True)
class ResolvedView:
    """A feature view as retrieval and serving need it: keys with types, timestamps, TTL, typed features."""

    name: str
    entity: str
    join_keys: dict[str, str]
    source_uri: str
    source_format: str
    event_timestamp: str
    created_timestamp: str | None
    ttl: dt.timedelta | None
    features: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (travels to serving replicas in the deployment's user_config)."""
        return {"name": self.name, "entity": self.entity, "join_keys": self.join_keys,
                "source_uri": self.source_uri, "source_format": self.source_format,
                "event_timestamp": self.event_timestamp, "created_timestamp": self.created_timestamp,
                "ttl_s": self.ttl.total_seconds() if self.ttl else None, "features": self.features}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ResolvedView:
        """Inverse of ``to_dict``."""
        ttl = dt.timedelta(seconds=doc["ttl_s"]) if doc.get("ttl_s") else None
        return cls(doc["name"], doc["entity"], dict(doc["join_keys"]), doc["source_uri"], doc["source_format"],
                   doc["event_timestamp"], doc.get("created_timestamp"), ttl, dict(doc["features"]))


# ------------------------------------------------------------------------------------------------ loading
def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid feature definitions in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {path}: unknown key; check the spelling (see the layout in raymlops.features."
                         "definitions)")
            continue
        value = e.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_feature_repo(doc: Any, source: str = "<dict>") -> FeatureRepo:
    """Validate a feature repo document; ``ConfigError`` names each bad key path and the fix."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source} must hold a mapping (project:, entities:, feature_views:, ...), "
                          f"not {type(doc).__name__}")
    try:
        return FeatureRepo.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_feature_repo(path: str | Path) -> FeatureRepo:
    """Load and validate a feature repo YAML file (``ConfigError`` with the file, key path and fix)."""
    p = str(path)
    try:
        text = storage.read_text(p)
    except Exception:
        raise ConfigError(f"feature repo {p} cannot be read; pass a path like configs/features.yaml "
                          "(--repo, or features.repo in the pipeline config)") from None
    # The same bounds as a pipeline config: a feature repo may come from less-trusted hands (SECURITY.md).
    return parse_feature_repo(load_bounded(text, f"feature repo {p}"), p)
