"""serve.auth: which tokens a deployment takes (hashes only), the refusal without any, and the request-id secret."""

from __future__ import annotations

import pytest

from raymlops.config import load_config
from raymlops.core.auth import hash_token
from raymlops.errors import ConfigError
from raymlops.serve.auth import TOKENS_ENV, TOKENS_FILE_ENV, auth_enabled, auth_spec, serving_secret
from raymlops.storage import mode_of

TOKEN = "s" * 40


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_auth_is_off_on_loopback_and_on_elsewhere_by_default():
    assert not auth_enabled(_cfg().serving) and auth_spec(_cfg())["enabled"] is False
    assert auth_enabled(_cfg("serving.host=0.0.0.0").serving)
    assert not auth_enabled(_cfg("serving.host=0.0.0.0", "serving.auth.enabled=false").serving)


def test_a_network_host_without_tokens_is_refused_naming_the_key_and_the_fix(monkeypatch):
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    monkeypatch.delenv(TOKENS_FILE_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        auth_spec(_cfg("serving.host=0.0.0.0"))
    message = str(err.value)
    assert "serving.auth" in message and "0.0.0.0" in message and TOKENS_FILE_ENV in message


def test_tokens_come_from_the_config_and_a_secret_file_as_hashes(monkeypatch, tmp_path):
    secret = tmp_path / "tokens"
    secret.write_text(f"app:predict:{TOKEN}\n")
    monkeypatch.setenv(TOKENS_FILE_ENV, str(secret))
    cfg = _cfg("serving.host=0.0.0.0",
               f"serving.auth.tokens=[{{name: ops, sha256: {hash_token('o' * 40)}, scopes: [admin]}}]")
    spec = auth_spec(cfg)
    assert [t["name"] for t in spec["tokens"]] == ["ops", "app"] and TOKEN not in repr(spec)
    secret.write_text("app:predict:short\n")
    with pytest.raises(ConfigError, match="serving.auth"):
        auth_spec(cfg)


def test_the_request_id_secret_is_created_once_0600_and_shared(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYMLOPS_SERVING_SECRET_FILE", raising=False)
    first = serving_secret(str(tmp_path), "churn")
    assert len(first) == 32 and serving_secret(str(tmp_path), "churn") == first
    assert mode_of(str(tmp_path / "serving" / "churn" / "request-id.key")) == 0o600
    assert serving_secret(str(tmp_path), "other") != first
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    monkeypatch.setenv("RAYMLOPS_SERVING_SECRET_FILE", str(key))
    assert serving_secret(str(tmp_path), "churn") == b"k" * 32
