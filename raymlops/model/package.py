"""The model package: a directory that holds everything needed to serve one trained model, and nothing pickled.

Layout::

    weights.safetensors   model state_dict (safetensors: no code is executed when it is read), or
    model.json            a gradient-boosted trees model in XGBoost's own JSON format (``train.model: xgboost``)
    model_spec.json       keyword arguments of ``raymlops.model.nets.build_model`` (``{"model": "xgboost", ...}``:
                          the booster's task, features and training parameters)
    transform.json        fitted ``Transform`` (``Transform.to_json()``)
    schema.yaml           the frozen input schema
    signature.json        inputs and outputs, for clients and the HTTP API
    metrics.json          offline evaluation metrics
    manifest.sig          HMAC-SHA256 of manifest.json, present when a signing key was configured at save
    manifest.json         sha256 of each file above, the package digest and lineage tags (written last)

The package digest is the sha256 of the lines ``"{sha256}  {name}\\n"`` sorted by name (the output of
``sha256sum`` over the six files), so it depends on the content only, never on paths, times or tags.
A package holds exactly one model file; torch packages keep manifest format 1 (so every raymlops reads them), and
booster packages are format 2, which a raymlops that predates boosters refuses by name.

``load_package`` is the single loading path used by evaluation, batch prediction and online serving, so
training-serving skew cannot come from two implementations.

Beside these files, registration adds MLflow's descriptor (``MLmodel``, its environment files and input example,
written by ``raymlops.registry.mlmodel``): MLflow reads them to load the package as a pyfunc model whose loader,
``raymlops.model.pyfunc``, calls ``load_package``. raymlops itself never reads them, and they are outside the digest.

Trust (see ``raymlops.core.package_trust`` and SECURITY.md): a package never chooses code. Its ``model_spec.json``
may name a built-in model (``mlp``, ``xgboost``) or a user factory that the *loading* side's ``PackagePolicy``
(``model.allowed_factories`` of its config) lists; anything else is refused before any import. When a signing key is
configured (``RAYMLOPS_SIGNING_KEY`` or ``RAYMLOPS_SIGNING_KEY_FILE``), ``save_package`` writes ``manifest.sig`` and
loading verifies it before reading anything but the manifest's bytes. The signature is not part of the digest, so
the digest of a package is the same signed or not.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
import yaml
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_torch

from raymlops import storage
from raymlops.core.package_trust import (
    KEY_ENV,
    KEY_FILE_ENV,
    SIGNATURE_FILE,
    PackagePolicy,
    check_factory,
    check_key,
    sign_manifest,
    verify_manifest,
)
from raymlops.core.transform import Transform, apply_transform
from raymlops.errors import DataError, PackageError
from raymlops.model.gbdt import BOOSTER_FILE, XGBOOST, BoosterPredictor
from raymlops.model.nets import build_model, predict_outputs

WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
_COMMON_FILES = ("model_spec.json", "transform.json", "schema.yaml", "signature.json", "metrics.json")
PACKAGE_FILES = (WEIGHTS, *_COMMON_FILES)  # a torch package
BOOSTER_PACKAGE_FILES = (BOOSTER_FILE, *_COMMON_FILES)  # a gradient-boosted trees package
FORMAT = "raymlops-model-package"
FORMAT_VERSION = 1  # torch packages
BOOSTER_FORMAT_VERSION = 2  # packages whose model file is model.json
_LAYOUTS = {FORMAT_VERSION: PACKAGE_FILES, BOOSTER_FORMAT_VERSION: BOOSTER_PACKAGE_FILES}


@dataclass(frozen=True)
class PackageInfo:
    """A complete, verified package: where it is, its content digest, its size (all files) and lineage tags."""

    uri: str
    digest: str
    size_bytes: int
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A package loaded for inference. ``predict`` is the one inference path used everywhere."""

    uri: str
    digest: str
    model: torch.nn.Module | BoosterPredictor  # a torch module in eval mode (gradients off), or a booster
    transform: Transform
    model_spec: dict[str, Any]
    schema_yaml: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    tags: dict[str, str]
    version: str | None = None

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The frozen schema as a dict (``schema_yaml`` holds the text)."""
        return yaml.safe_load(self.schema_yaml) or {}

    def predict(self, batch: Any) -> dict[str, np.ndarray]:
        """Predict a ``pa.Table`` or a dict of columns: apply the transform, run the model, decode the outputs."""
        # No label at prediction time: a batch that still carries one (evaluation) must not fail on its values.
        arrays = apply_transform(self.transform, batch, with_label=False)
        if isinstance(self.model, BoosterPredictor):
            logits = self.model.logits(arrays["x_num"], arrays["x_cat"])
        else:
            x_num = torch.from_numpy(np.ascontiguousarray(arrays["x_num"], dtype=np.float32))
            x_cat = torch.from_numpy(np.ascontiguousarray(arrays["x_cat"], dtype=np.int64))
            with torch.no_grad():
                logits = self.model(x_num, x_cat)
        # The binary decision threshold chosen at evaluation (signature.json); 0.5 for packages written before it.
        return predict_outputs(self.transform.task, logits, threshold=float(self.signature.get("threshold") or 0.5))

    def predict_decoded(self, batch: Any) -> dict[str, list[Any]]:
        """``predict`` as JSON-ready lists named by the task's prediction fields, labels decoded to class values:
        what the HTTP API answers per instance."""
        out = self.predict(batch)
        task = self.transform.task
        if task == "regression":
            return {"value": out["value"].tolist()}
        classes = list(self.transform.classes)
        score = "probability" if task == "binary" else "probabilities"
        return {score: out[score].tolist(), "label": [classes[i] for i in out["label"].tolist()]}


# ------------------------------------------------------------------------------------------------- save
def save_package(
    dir_uri: str,
    *,
    state_dict: Mapping[str, Any] | None = None,
    booster_json: bytes | None = None,
    model_spec: dict[str, Any],
    transform_json: str,
    schema_yaml: str,
    signature: dict[str, Any],
    metrics: dict[str, Any],
    tags: Mapping[str, Any],
) -> PackageInfo:
    """Write a package to ``dir_uri`` atomically and return its info.

    The model is either ``state_dict`` (torch weights) or ``booster_json`` (an XGBoost booster's
    ``save_raw("json")`` bytes, with ``model_spec["model"] == "xgboost"``). Saving the same content to the same
    directory again returns the existing package (a restarted step is harmless); a different package there raises
    ``PackageError`` because packages are immutable.
    """
    if (state_dict is None) == (booster_json is None):
        raise PackageError("save_package needs exactly one model: state_dict (torch weights) or booster_json "
                           "(an XGBoost booster's save_raw('json') bytes)")
    if booster_json is not None and model_spec.get("model") != XGBOOST:
        raise PackageError(f"booster_json needs model_spec['model'] == {XGBOOST!r}, got {model_spec.get('model')!r}; "
                           "pass the spec the booster was trained with")
    if not isinstance(transform_json, str) or not isinstance(schema_yaml, str):
        raise PackageError(
            "transform_json and schema_yaml must be text (Transform.to_json(), Schema.to_yaml())"
        )
    try:
        json.loads(transform_json)
    except ValueError as err:
        raise PackageError(f"transform_json is not valid JSON ({err}); pass Transform.to_json()") from None
    version = FORMAT_VERSION if booster_json is None else BOOSTER_FORMAT_VERSION
    model_file = {WEIGHTS: _weights_bytes(state_dict)} if state_dict is not None else {BOOSTER_FILE: booster_json}
    files = {
        **model_file,
        "model_spec.json": _json_bytes(model_spec, "model_spec"),
        "transform.json": transform_json.encode("utf-8"),
        "schema.yaml": schema_yaml.encode("utf-8"),
        "signature.json": _json_bytes(signature, "signature"),
        "metrics.json": _json_bytes(metrics, "metrics"),
    }
    hashes = {name: _sha256(data) for name, data in files.items()}
    digest = package_digest(hashes)
    manifest = {
        "format": FORMAT,
        "format_version": version,
        "digest": digest,
        "files": {name: {"sha256": hashes[name], "size_bytes": len(files[name])} for name in _LAYOUTS[version]},
        "tags": {str(k): str(v) for k, v in tags.items()},
    }
    key = signing_key()
    manifest_bytes = _json_bytes(manifest, "manifest")
    if key is not None:
        files[SIGNATURE_FILE] = sign_manifest(key, manifest_bytes)
    files[MANIFEST] = manifest_bytes  # last: on an object store the manifest is what marks the package complete

    if storage.exists(storage.join(dir_uri, MANIFEST)):
        return _same_package_or_refuse(dir_uri, digest)
    fs, path = storage.resolve(dir_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if not _rename_into_place(path, files):
            return _same_package_or_refuse(dir_uri, digest)
    else:
        # Object stores cannot rename a directory; each file lands whole, and the manifest, written last,
        # is what marks the package complete.
        for name in files:  # the manifest is the last key, after its signature
            storage.atomic_write_bytes(storage.join(dir_uri, name), files[name])
    return PackageInfo(dir_uri, digest, sum(len(b) for b in files.values()), manifest["tags"])


def _rename_into_place(path: str, files: dict[str, bytes]) -> bool:
    """Write into a temporary sibling directory, then rename it to ``path``; False when ``path`` is taken."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(tmp)
        for name in files:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(files[name])
                f.flush()
                os.fsync(f.fileno())  # the rename must not publish files whose bytes are still in flight
        try:
            os.rename(tmp, path)  # replaces an empty directory, fails on a non-empty one
        except OSError:
            if not os.path.isdir(path) or not os.listdir(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _same_package_or_refuse(dir_uri: str, digest: str) -> PackageInfo:
    if not storage.exists(storage.join(dir_uri, MANIFEST)):
        raise PackageError(
            f"{dir_uri} already exists and is not a model package (no manifest.json); "
            "delete it or save the package to a new directory"
        )
    # Integrity (and signature) only: saving runs no model, so the factory allow-list does not apply here.
    _, info = _read_verified(dir_uri, None, PackagePolicy())
    if info.digest != digest:
        raise PackageError(
            f"{dir_uri} already holds a different package (digest {info.digest}, new {digest}); "
            "packages are immutable: save the new one to a new directory"
        )
    return info


def _weights_bytes(state_dict: Mapping[str, Any]) -> bytes:
    if any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        # contiguous() because safetensors refuses strided views (e.g. a transposed weight).
        return save_torch({k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state_dict.items()})
    return save_numpy({k: np.ascontiguousarray(v) for k, v in state_dict.items()})


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise PackageError(
            f"{what} cannot be written as JSON ({err}); use plain dicts, lists, str and numbers"
        ) from None
    return text.encode("utf-8")


def _json_safe(obj: Any) -> Any:
    """numpy scalars/arrays to plain values; NaN/Inf to null (a metric can be undefined, e.g. AUC on one class)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_trained_model(dir_uri: str, model_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The model a train step wrote to ``dir_uri``, as ``save_package``'s model argument.

    ``{"booster_json": bytes}`` from ``model.json`` (XGBoost JSON) when ``model_spec`` is a booster's, else
    ``{"state_dict": {...}}`` from ``weights.safetensors``.
    """
    name = BOOSTER_FILE if model_spec.get("model") == XGBOOST else WEIGHTS
    try:
        raw = storage.read_bytes(storage.join(dir_uri, name))
    except DataError:
        raise PackageError(f"{dir_uri} has no {name} for model {model_spec.get('model')!r}; re-run the train "
                           "step") from None
    return {"booster_json": raw} if name == BOOSTER_FILE else {"state_dict": load_numpy(raw)}


# ------------------------------------------------------------------------------------------------- load
def signing_key() -> bytes | None:
    """The package signing key from the environment: ``RAYMLOPS_SIGNING_KEY``, else the file named by
    ``RAYMLOPS_SIGNING_KEY_FILE``; ``None`` when neither is set. ``PackageError`` for an unreadable file or a key
    shorter than 32 bytes.
    """
    # Read on every call, never cached: a key rotated in a long-lived process takes effect at the next load.
    value = os.environ.get(KEY_ENV)
    if value:
        return check_key(value.encode("utf-8"), KEY_ENV)
    path = os.environ.get(KEY_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise PackageError(f"{KEY_FILE_ENV} names {path}, which cannot be read ({err.strerror}); fix the path or "
                           f"its permissions, or unset {KEY_FILE_ENV}") from None
    return check_key(raw.strip(), f"{KEY_FILE_ENV} ({path})")


def package_digest(file_hashes: Mapping[str, str]) -> str:
    """Digest of a package from its files' sha256 (see the module docstring)."""
    lines = "".join(f"{file_hashes[name]}  {name}\n" for name in sorted(file_hashes))
    return _sha256(lines.encode("utf-8"))


def verify_package(
    dir_uri: str, expected_digest: str | None = None, *, policy: PackagePolicy | None = None
) -> PackageInfo:
    """Check that the package is complete and untampered (signature, every sha256, the digest) and that the
    model it names may run under ``policy`` (see ``load_package``), without loading the model.
    """
    policy = policy or PackagePolicy()
    files, info = _read_verified(dir_uri, expected_digest, policy)
    _model_spec(files, dir_uri, policy)
    return info


@dataclass(frozen=True)
class PackageDescription:
    """What a verified package declares, without its model: schema, transform, signature and model kind."""

    uri: str
    digest: str
    model: str  # the model_spec's model name: "mlp", "xgboost" or a user factory
    schema_yaml: str
    transform: Transform
    signature: dict[str, Any]


def describe_package(dir_uri: str, expected_digest: str | None = None) -> PackageDescription:
    """Verify a package's integrity (signature, every sha256, the digest) and read what it declares.

    Nothing is imported or built: the factory allow-list is a loading decision and does not apply here.
    """
    files, info = _read_verified(dir_uri, expected_digest, PackagePolicy())
    spec = _parse_json(files, "model_spec.json", dir_uri)
    try:
        transform = Transform.from_json(files["transform.json"].decode("utf-8"))
    except Exception as err:
        raise PackageError(f"transform.json in {dir_uri} cannot be read ({err}); re-create the package") from None
    return PackageDescription(
        uri=dir_uri, digest=info.digest, model=str(spec.get("model", "mlp")) if isinstance(spec, dict) else "?",
        schema_yaml=files["schema.yaml"].decode("utf-8"), transform=transform,
        signature=_parse_json(files, "signature.json", dir_uri),
    )


def load_package(
    dir_uri: str,
    expected_digest: str | None = None,
    *,
    version: str | None = None,
    policy: PackagePolicy | None = None,
) -> LoadedModel:
    """Verify and load a package: weights via safetensors or a booster from its JSON model (never pickle).

    ``expected_digest`` is the digest recorded when the package was registered (pass it on every load: without
    it a package swapped for another consistent one goes unnoticed). ``policy`` (default: built-in models only, a
    signature required exactly when a signing key is configured) is the loading config's ``model`` section
    (``ModelConfig.policy()``). ``PackageError`` when the package is refused.
    """
    policy = policy or PackagePolicy()
    files, info = _read_verified(dir_uri, expected_digest, policy)
    spec = _model_spec(files, dir_uri, policy)
    model = (_load_booster(files, spec, dir_uri) if BOOSTER_FILE in files
             else _load_torch(files, spec, dir_uri, policy.allowed_factories))
    try:
        transform = Transform.from_json(files["transform.json"].decode("utf-8"))
    except Exception as err:
        raise PackageError(
            f"transform.json in {dir_uri} cannot be read ({err}); re-create the package"
        ) from None
    return LoadedModel(
        uri=dir_uri,
        digest=info.digest,
        model=model,
        transform=transform,
        model_spec=spec,
        schema_yaml=files["schema.yaml"].decode("utf-8"),
        signature=_parse_json(files, "signature.json", dir_uri),
        metrics=_parse_json(files, "metrics.json", dir_uri),
        tags=info.tags,
        version=version,
    )


def _model_spec(files: dict[str, bytes], dir_uri: str, policy: PackagePolicy) -> dict[str, Any]:
    spec = _parse_json(files, "model_spec.json", dir_uri)
    if not isinstance(spec, dict):
        raise PackageError(f"model_spec.json in {dir_uri} is not a JSON object; re-create the package")
    # Before anything is imported or called: the package names a model, the loading config decides if it may run.
    check_factory(spec.get("model", "mlp"), policy.allowed_factories, f"model package {dir_uri}")
    return spec


def _load_booster(files: dict[str, bytes], spec: dict[str, Any], dir_uri: str) -> BoosterPredictor:
    if spec.get("model") != XGBOOST:
        raise PackageError(f"{dir_uri} holds {BOOSTER_FILE} but model_spec.json names model {spec.get('model')!r}, "
                           f"not {XGBOOST!r}; re-create the package")
    return BoosterPredictor.from_json(files[BOOSTER_FILE], spec, f"{BOOSTER_FILE} in {dir_uri}")


def _load_torch(files: dict[str, bytes], spec: dict[str, Any], dir_uri: str,
                allowed_factories: tuple[str, ...]) -> torch.nn.Module:
    try:
        state = load_safetensors(files[WEIGHTS])
    except Exception as err:  # safetensors raises its own SafetensorError with varied wording
        raise PackageError(
            f"{WEIGHTS} in {dir_uri} is not a readable safetensors file ({err}); re-create the package"
        ) from None
    try:
        model = build_model(spec, allowed_factories=allowed_factories)
        model.load_state_dict(state, strict=True)
    except Exception as err:  # a missing user factory or a shape mismatch: this code cannot run the package
        raise PackageError(
            f"cannot rebuild the model of {dir_uri} from model_spec.json and {WEIGHTS}: {err}; load it with the "
            "raymlops version (and user model module) that trained it"
        ) from None
    model.eval()
    model.requires_grad_(False)
    return model


def _read_verified(
    dir_uri: str, expected_digest: str | None, policy: PackagePolicy
) -> tuple[dict[str, bytes], PackageInfo]:
    try:
        raw = storage.read_bytes(storage.join(dir_uri, MANIFEST))
    except DataError:
        raise PackageError(
            f"{dir_uri} has no {MANIFEST}: the package is incomplete (its save was interrupted) or the path is not "
            "a model package; re-run the step that saved it, or pass the directory that holds manifest.json"
        ) from None
    sig_uri = storage.join(dir_uri, SIGNATURE_FILE)
    signature = storage.read_bytes(sig_uri) if storage.exists(sig_uri) else None
    # The signature is checked against the manifest's raw bytes before the manifest is even parsed.
    verify_manifest(signing_key(), raw, signature, policy, f"model package {dir_uri}")
    manifest = _parse_manifest(raw, dir_uri)
    names = _LAYOUTS[manifest["format_version"]]
    recorded = {name: manifest["files"][name]["sha256"] for name in names}
    files: dict[str, bytes] = {}
    bad: list[str] = []
    for name in names:
        try:
            files[name] = storage.read_bytes(storage.join(dir_uri, name))
        except DataError:
            bad.append(f"{name} is missing")
            continue
        actual = _sha256(files[name])
        if actual != recorded[name]:
            bad.append(f"{name} has sha256 {actual[:16]}… but {MANIFEST} records {recorded[name][:16]}…")
    if bad:
        raise PackageError(
            f"model package {dir_uri} failed verification: {'; '.join(bad)}. It was tampered with or is incomplete; "
            "do not use it: re-run the pipeline step that packages the model, or register a good copy"
        )
    digest = package_digest(recorded)
    if digest != manifest["digest"]:
        raise PackageError(
            f"{MANIFEST} in {dir_uri} records digest {manifest['digest']} but its file hashes give {digest}: "
            "the manifest was edited (tampered with); do not use this package, re-create it"
        )
    if expected_digest is not None and digest != expected_digest:
        raise PackageError(
            f"model package {dir_uri} has digest {digest} but {expected_digest} was expected (the registry's "
            "record): the package was replaced or tampered with after registration; do not use it, re-register "
            "the package or load the version whose digest matches"
        )
    size = len(raw) + len(signature or b"") + sum(len(b) for b in files.values())
    return files, PackageInfo(dir_uri, digest, size, dict(manifest.get("tags") or {}))


def _parse_manifest(raw: bytes, dir_uri: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(
            f"{MANIFEST} in {dir_uri} is not a raymlops package manifest; re-create the package"
        )
    if manifest.get("format_version") not in _LAYOUTS:
        raise PackageError(
            f"{dir_uri} uses package format {manifest.get('format_version')}, this raymlops reads "
            f"{sorted(_LAYOUTS)}; load it with the raymlops version that wrote it"
        )
    expected = _LAYOUTS[manifest["format_version"]]
    listed = manifest.get("files")
    well_formed = isinstance(listed, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in listed.values()
    )
    if not well_formed or set(listed) != set(expected) or not isinstance(manifest.get("digest"), str):
        have = sorted(listed) if isinstance(listed, dict) else []
        raise PackageError(
            f"{MANIFEST} in {dir_uri} lists {have}, expected {sorted(expected)} and a digest: "
            "the manifest was edited or is corrupt; re-create the package"
        )
    return manifest


def _parse_json(files: dict[str, bytes], name: str, dir_uri: str) -> dict[str, Any]:
    try:
        return json.loads(files[name])
    except ValueError as err:
        raise PackageError(f"{name} in {dir_uri} is not valid JSON ({err}); re-create the package") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
