"""A model package never chooses code, and with a signing key only signed, untampered packages load.

The attacker here can write under ``storage_uri`` and edit the registry's digest tag, so every tampered package is
rewritten *consistently* (file hashes and digest in its manifest updated, the new digest passed as the expected
one): only the factory allow-list and the signature can stop it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymlops.core.package_trust import (
    KEY_ENV,
    KEY_FILE_ENV,
    SIGNATURE_FILE,
    PackagePolicy,
    check_factory,
    sign_manifest,
    verify_manifest,
)
from raymlops.errors import ConfigError, PackageError
from raymlops.evaluation.evaluate import evaluate
from raymlops.evaluation.infra_check import child_env
from raymlops.model import package as pkg
from raymlops.model.nets import build_model
from tests.data_helpers import TINY_SPEC as SPEC
from tests.data_helpers import TINY_TRANSFORM as TRANSFORM

KEY = "k" * 40
OTHER_KEY = "o" * 40
BATCH = pa.table({"tenure_months": [1, 24, 60, 5], "monthly_charges": [20.5, 70.0, 99.9, 30.0],
                  "plan": ["basic", "premium", "standard", "basic"], "churned": [0, 1, 1, 0]})


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    # A developer's shell may hold a key: every test states the key it runs with.
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def _save(path: Path, spec: dict | None = None, state: dict | None = None) -> pkg.PackageInfo:
    torch.manual_seed(0)
    state = state if state is not None else {k: v.numpy() for k, v in build_model(SPEC).state_dict().items()}
    return pkg.save_package(str(path), state_dict=state, model_spec=spec or SPEC, transform_json=TRANSFORM.to_json(),
                            schema_yaml="name: churn\nversion: 1\ntask: binary\ncolumns: []\n",
                            signature={"outputs": ["probability", "label"]}, metrics={}, tags={"run": "1"})


def _rewrite(path: Path, name: str, data: bytes) -> str:
    """Replace one file and update the manifest to match (hashes and digest), as an attacker with storage write
    access would; ``manifest.sig`` is left as it was. Returns the new digest (the attacker edits the registry too).
    """
    (path / name).write_bytes(data)
    manifest = json.loads((path / pkg.MANIFEST).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    manifest["digest"] = pkg.package_digest({n: e["sha256"] for n, e in manifest["files"].items()})
    (path / pkg.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest["digest"]


# ------------------------------------------------------------------------------- a package never chooses code
@pytest.mark.parametrize(("factory", "argument"), [("subprocess:getoutput", "cmd"), ("os:system", "command")])
def test_a_package_naming_a_stdlib_callable_is_refused_and_nothing_runs(tmp_path, factory, argument):
    marker = tmp_path / "pwned"
    info = _save(tmp_path / "pkg")
    spec = {"model": factory, argument: f"touch {marker}"}  # exactly the callable's arguments
    digest = _rewrite(tmp_path / "pkg", "model_spec.json", json.dumps(spec).encode())

    with pytest.raises(PackageError, match="allowed_factories") as err:
        pkg.load_package(info.uri, digest)
    assert factory in str(err.value) and "nothing was imported" in str(err.value)
    assert not marker.exists()


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    """A user model module that leaves a file behind when it is imported (so a refusal can prove no import)."""
    name = f"trust_models_{tmp_path.name.replace('-', '_')}"
    imported = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import pathlib
        import torch

        pathlib.Path({str(imported)!r}).touch()

        class Linear(torch.nn.Module):
            def __init__(self, n_numeric, cardinalities, task="binary", **kwargs):
                super().__init__()
                self.lin = torch.nn.Linear(n_numeric, 1)

            def forward(self, x_num, x_cat):
                return self.lin(x_num).squeeze(-1)

        def factory(**spec):
            return Linear(**spec)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:factory", imported
    sys.modules.pop(name, None)


def test_a_user_factory_loads_only_when_the_loading_config_allows_it(tmp_path, user_factory):
    path, imported = user_factory
    spec = {**SPEC, "model": path}
    model = build_model(spec, allowed_factories=[path])
    imported.unlink()  # building it for the save imported it: from here on, an import would show
    sys.modules.pop(path.split(":")[0])
    info = _save(tmp_path / "pkg", spec, {k: v.detach().numpy() for k, v in model.state_dict().items()})

    with pytest.raises(PackageError, match="nor in model.allowed_factories"):
        pkg.load_package(info.uri, info.digest)
    assert not imported.exists()

    loaded = pkg.load_package(info.uri, info.digest, policy=PackagePolicy(allowed_factories=(path,)))
    out = loaded.predict(BATCH)
    assert out["probability"].shape == (4,) and imported.exists()


def test_build_model_refuses_an_unlisted_factory_before_importing_it(user_factory):
    path, imported = user_factory
    with pytest.raises(ConfigError, match="not in model.allowed_factories"):
        build_model({**SPEC, "model": path})
    assert not imported.exists()


def test_check_factory_allows_built_ins_and_listed_paths_only():
    check_factory("mlp", [], "p")
    check_factory("xgboost", [], "p")
    check_factory("my.models:make", ["my.models:make"], "p")
    for kind in ("my.models:other", "builtins:eval", ["mlp"], None):
        with pytest.raises(PackageError, match="allowed_factories"):
            check_factory(kind, ["my.models:make"], "p")


# ------------------------------------------------------------------------------------------------ signatures
def test_a_signed_package_loads_and_signing_leaves_the_digest_unchanged(tmp_path, monkeypatch):
    unsigned = _save(tmp_path / "unsigned")
    monkeypatch.setenv(KEY_ENV, KEY)
    signed = _save(tmp_path / "signed")
    assert (Path(signed.uri) / SIGNATURE_FILE).exists() and not (Path(unsigned.uri) / SIGNATURE_FILE).exists()
    assert signed.digest == unsigned.digest
    assert pkg.load_package(signed.uri, signed.digest).predict(BATCH)["label"].shape == (4,)


def test_changed_weights_with_the_old_signature_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    info = _save(tmp_path / "pkg")
    state = {k: v + 1.0 for k, v in pkg.load_package(info.uri, info.digest).model.state_dict().items()}
    from safetensors.torch import save as save_torch

    digest = _rewrite(tmp_path / "pkg", pkg.WEIGHTS, save_torch({k: v.contiguous() for k, v in state.items()}))

    with pytest.raises(PackageError, match="does not verify.*tampered"):
        pkg.load_package(info.uri, digest)
    with pytest.raises(PackageError, match="does not verify"):
        pkg.verify_package(info.uri, digest)


def test_a_signed_package_is_refused_where_no_key_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    info = _save(tmp_path / "pkg")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(PackageError, match=f"no signing key.*{KEY_ENV}"):
        pkg.load_package(info.uri, info.digest)


def test_an_unsigned_package_is_refused_when_a_key_is_configured_unless_migrating(tmp_path, monkeypatch):
    info = _save(tmp_path / "pkg")
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(PackageError, match=f"not signed.*{KEY_ENV}.*require_signature: false"):
        pkg.load_package(info.uri, info.digest)
    loaded = pkg.load_package(info.uri, info.digest, policy=PackagePolicy(require_signature=False))
    assert loaded.digest == info.digest


def test_a_removed_signature_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    info = _save(tmp_path / "pkg")
    (Path(info.uri) / SIGNATURE_FILE).unlink()
    with pytest.raises(PackageError, match="not signed"):
        pkg.load_package(info.uri, info.digest)


def test_require_signature_without_a_key_refuses_every_load(tmp_path):
    info = _save(tmp_path / "pkg")
    with pytest.raises(PackageError, match=f"require_signature is true.*{KEY_ENV}"):
        pkg.load_package(info.uri, info.digest, policy=PackagePolicy(require_signature=True))


def test_another_key_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    info = _save(tmp_path / "pkg")
    monkeypatch.setenv(KEY_ENV, OTHER_KEY)
    with pytest.raises(PackageError, match="signed with another key"):
        pkg.load_package(info.uri, info.digest)


def test_the_key_may_come_from_a_file_and_must_be_long_enough(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    info = _save(tmp_path / "pkg")
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv(KEY_ENV, KEY)  # the same key, from the other source
    assert pkg.load_package(info.uri, info.digest).digest == info.digest
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(PackageError, match="fewer than 32"):
        pkg.load_package(info.uri, info.digest)
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(PackageError, match=f"{KEY_FILE_ENV} names .*cannot be read"):
        pkg.load_package(info.uri, info.digest)


def test_verify_manifest_checks_the_bytes_before_parsing():
    manifest = b'{"digest": "abc"}'
    sig = sign_manifest(KEY.encode(), manifest)
    assert verify_manifest(KEY.encode(), manifest, sig, PackagePolicy(), "p") is True
    with pytest.raises(PackageError, match="does not verify"):
        verify_manifest(KEY.encode(), manifest + b" ", sig, PackagePolicy(), "p")
    with pytest.raises(PackageError, match="not a raymlops hmac-sha256 signature"):
        verify_manifest(KEY.encode(), manifest, b"garbage", PackagePolicy(), "p")
    assert verify_manifest(None, manifest, None, PackagePolicy(), "p") is False
    assert PackagePolicy.from_dict(PackagePolicy(("a:b",), True).to_dict()) == PackagePolicy(("a:b",), True)


# ------------------------------------------------------------------------------ the digest is passed everywhere
def test_evaluate_refuses_a_package_uri_without_its_digest(tmp_path):
    info = _save(tmp_path / "pkg")
    with pytest.raises(PackageError, match="expected digest"):
        evaluate(info.uri, {"test": BATCH}, task="binary", label="churned")
    with pytest.raises(PackageError, match="was expected"):
        evaluate(info.uri, {"test": BATCH}, task="binary", label="churned", expected_digest="0" * 64)
    result = evaluate(info.uri, {"test": BATCH}, task="binary", label="churned", expected_digest=info.digest)
    assert result.rows["test"] == 4 and np.isfinite(result.metrics["test"]["log_loss"])


def test_the_fresh_process_gets_a_scrubbed_environment():
    environ = {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "PYTHONPATH": "/user", KEY_ENV: KEY,
               "MLFLOW_TRACKING_PASSWORD": "pw", "DATABASE_URL": "postgres://u:pw@db/x", "AWS_SECRET_ACCESS_KEY": "s"}
    local = child_env(environ, "/data/pkg", "/src")
    assert local == {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", KEY_ENV: KEY, "PYTHONPATH": "/src:/user"}
    remote = child_env(environ, "s3://bucket/pkg", "/src")
    assert remote["AWS_SECRET_ACCESS_KEY"] == "s" and "DATABASE_URL" not in remote
