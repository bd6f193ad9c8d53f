"""The KubeRay manifests in deploy/kuberay are checked as far as this machine allows, against the real schemas.

``RayJob``/``RayService`` are validated against the ``openAPIV3Schema`` of KubeRay v1.7.0's CRDs (vendored, gzipped,
in tests/data/kuberay), with unknown fields refused as ``kubectl apply --validate=strict`` does; the RayService's
``serveConfigV2`` against Ray Serve's own ``ServeDeploySchema`` and raymlops' application builder; the RayJob's
entrypoint against the CLI's parser and the config it resolves with the pods' environment. (The cluster launcher's
cluster.yaml: tests/unit/test_cluster_yaml.py.)
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from raymlops.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "data" / "kuberay"
# What the pods' ConfigMap holds in the documented set-up (values are examples, nothing secret).
POD_ENV = {"RAYMLOPS_STORAGE": "s3://bucket/raymlops", "RAYMLOPS_TRACKING_URI": "http://mlflow.mlops:5000"}


def _manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kuberay" / name).read_text())


@functools.cache
def _crd_schema(kind: str) -> dict[str, Any]:
    with gzip.open(SCHEMAS / f"{kind}.v1.schema.json.gz") as f:
        return json.load(f)["schema"]


def _validate(doc: Any, kind: str) -> None:
    # OpenAPI v3 schemas are JSON Schema draft-4 style; the metaschema check of jsonschema.validate is skipped (slow).
    jsonschema.Draft4Validator(_crd_schema(kind)).validate(doc)


def unknown_fields(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of ``doc`` the structural schema does not declare (what the API server would prune or, strict, refuse)."""
    if isinstance(doc, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(doc) for p in unknown_fields(v, items, f"{path}[{i}]")]
    if not isinstance(doc, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props = schema.get("properties")
    if props is None:  # a map (additionalProperties) or a free-form object
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {}
        return [p for k, v in doc.items() for p in unknown_fields(v, sub, f"{path}.{k}")]
    out = [f"{path}.{k}" for k in doc if k not in props]
    return out + [p for k, v in doc.items() if k in props for p in unknown_fields(v, props[k], f"{path}.{k}")]


def _images(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return ([doc["image"]] if isinstance(doc.get("image"), str) else []) + [
            i for v in doc.values() for i in _images(v)]
    return [i for v in doc for i in _images(v)] if isinstance(doc, list) else []


@pytest.mark.parametrize("name, kind", [("rayjob.yaml", "RayJob"), ("rayservice.yaml", "RayService")])
def test_kuberay_manifests_match_the_crd_and_the_ray_version(name, kind):
    doc = _manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    _validate(doc, kind)
    assert unknown_fields(doc, _crd_schema(kind)) == []
    cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the version pyproject bounds raymlops to
    assert cluster["authOptions"] == {"mode": "token"}  # job submission and the GCS need Ray's token
    assert set(_images(doc)) == {"ghcr.io/your-org/raymlops:0.1.0"}  # the image deploy/Dockerfile builds


def test_the_strict_check_catches_a_misspelt_field():
    doc = _manifest("rayjob.yaml")
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom"][0] = {
        "configMapRef": {"name": "raymlops-settings"}, "configmapRef": {"name": "typo"}}
    assert unknown_fields(doc, _crd_schema("RayJob")) == [
        ".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].envFrom[0].configmapRef"]
    doc["spec"]["backoffLimit"] = "none"
    with pytest.raises(jsonschema.ValidationError, match="backoffLimit|'none'"):
        _validate(doc, "RayJob")


def test_the_rayjob_entrypoint_parses_and_resolves_storage_and_tracking_from_the_pod_env(monkeypatch):
    from typer.main import get_command

    from raymlops.cli import app

    argv = shlex.split(_manifest("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["raymlops", "run", "configs/churn.yaml"]
    command = get_command(app)
    with command.make_context("raymlops", argv[1:], resilient_parsing=False) as ctx:
        sub = command.get_command(ctx, argv[1])
        assert sub is not None
        sub.make_context(argv[1], argv[2:], parent=ctx)  # raises on an unknown option or a missing argument
    for k, v in POD_ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(ROOT / argv[2])  # the image's working directory holds configs/ (deploy/Dockerfile)
    assert cfg.storage_uri == POD_ENV["RAYMLOPS_STORAGE"]
    assert cfg.tracking_uri == POD_ENV["RAYMLOPS_TRACKING_URI"]


def test_the_rayservice_app_is_a_valid_serve_config_built_by_raymlops(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    import raymlops.serve

    serve_config = yaml.safe_load(_manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    (application,) = schema.applications
    module, _, attr = application.import_path.partition(":")
    assert (module, attr) == ("raymlops.serve", "app") and callable(raymlops.serve.app)
    args = dict(application.args)
    for k, v in POD_ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(ROOT / args.pop("config"), [f"{k}={v}" for k, v in args.items()])
    assert cfg.serving.host == "0.0.0.0" and cfg.serving.num_replicas == 2
    assert cfg.storage_uri == POD_ENV["RAYMLOPS_STORAGE"]
    # On the pod's network the API is authenticated: auth "auto" is on for any host that is not loopback, and the
    # tokens file the pods mount is where the builder reads the tokens.
    assert cfg.serving.auth.enabled == "auto"
    pods = [c for c in _manifest("rayservice.yaml")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"]]
    assert {"name": "RAYMLOPS_SERVING_TOKENS_FILE", "value": "/etc/raymlops/tokens"} in pods[0]["env"]


def test_the_image_is_rays_own_at_the_bounded_version():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert base == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert "-c /tmp/raymlops-src/constraints.txt" in dockerfile and "[redis]" in dockerfile
    # The build context is an allow-list: what the install needs, nothing else from the checkout.
    rules = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:] for r in rules if r.startswith("!")}
    assert allowed == {"raymlops", "pyproject.toml", "README.md", "LICENSE", "constraints.txt", "configs"}
    assert all((ROOT / name).exists() for name in allowed)
