"""Secrets stay secret: the one redaction helper, and the sinks that use it (event log, CLI printer, store errors,
the serving spec that travels in Serve's user_config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raymlops.cli._common import echo_event, say
from raymlops.config import load_config
from raymlops.control.state import ControllerState, RunFinished, RunStarted, TriggerFired, step
from raymlops.control.triggers import TriggerEvent
from raymlops.core.redact import redact, redact_data, secret_values, url_origin
from raymlops.errors import ConfigError, FeatureStoreError
from raymlops.features.serving import serving_spec
from raymlops.features.stores import RedisOnlineStore
from tests.serving_helpers import free_port

CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


@pytest.mark.parametrize("text, expected", [
    ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("mysql+pymysql://u:p%40ss@h/x failed", "mysql+pymysql://u:***@h/x failed"),
    ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("https://hooks.example.com/x?token=abc&team=ml&sig=f00", "https://hooks.example.com/x?token=***&team=ml&sig=***"),
    ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
    ("s3://bucket/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA/x", "s3://bucket/k?X-Amz-Signature=***&X-Amz-Credential=***"),
    # nothing secret: unchanged
    ("sqlite:///./.raymlops/mlflow.db", "sqlite:///./.raymlops/mlflow.db"),
    ("redis://cache:6379/0 and s3://bucket/key=1/part-0.parquet", "redis://cache:6379/0 and s3://bucket/key=1/part-0.parquet"),
    ("redis://admin@cache:6379/0", "redis://admin@cache:6379/0"),
    ("primary_key=customer_id monkey=3", "primary_key=customer_id monkey=3"),
    ("train.epochs=3 at 12:30:01", "train.epochs=3 at 12:30:01"),
])
def test_redact_masks_passwords_and_secret_parameters_only(text, expected):
    assert redact(text, env={}) == expected
    assert redact(redact(text, env={}), env={}) == expected  # idempotent


def test_redact_masks_the_values_of_secret_environment_variables():
    env = {"RAYMLOPS_WEBHOOK_SECRET": "whsec-0123456789", "MY_API_KEY": "ak-abcdefgh", "HOME": "/home/someone",
           "SHORT_TOKEN": "abc", "CUSTOM": "custom-value-42"}
    assert secret_values(env, names=["CUSTOM"]) == ["whsec-0123456789", "custom-value-42", "ak-abcdefgh"]
    text = "sent with whsec-0123456789 and ak-abcdefgh and custom-value-42 from /home/someone, abc"
    assert redact(text, env, names=["CUSTOM"]) == "sent with *** and *** and *** from /home/someone, abc"
    doc = {"msg": "key whsec-0123456789", "items": [{"uri": "redis://:pw123456@h/0"}, 3], "n": 1.5}
    assert redact_data(doc, env) == {"msg": "key ***", "items": [{"uri": "redis://:***@h/0"}, 3], "n": 1.5}
    assert url_origin("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com"


def test_the_event_log_never_stores_a_password():
    """A run fails with an error quoting its tracking URI: the event (state.json, webhook, CLI) is redacted."""
    s = ControllerState(canary_steps=[10.0, 100.0], champion="1")
    s, _ = step(s, TriggerFired((TriggerEvent("on_demand", "asked", 1.0),)), 1.0)
    s, _ = step(s, RunStarted("r1"), 2.0)
    error = "MlflowException: cannot connect to postgresql://mlflow:hunter2pw@db/mlflow?password=hunter2pw"
    s, actions = step(s, RunFinished("r1", "failed", error=error), 3.0)
    assert "hunter2pw" not in s.to_json()
    failed = [e for e in s.events if e.kind == "run_failed"]
    assert failed and "postgresql://mlflow:***@db/mlflow" in failed[0].message
    assert all("hunter2pw" not in a.entry.message for a in actions if hasattr(a, "entry"))


def test_the_cli_printer_and_event_printer_redact(capsys):
    say("error: cannot reach redis://:s3cretpw@cache:6379/0")
    echo_event({"seq": 7, "at": 0.0, "kind": "run_failed", "message": "db postgresql://u:hunter2pw@db/x"})
    out = capsys.readouterr()
    assert "s3cretpw" not in out.err and "redis://:***@cache:6379/0" in out.err
    assert "hunter2pw" not in out.out and "postgresql://u:***@db/x" in out.out


def test_a_store_error_shows_the_url_without_its_password():
    url = f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"  # nothing listens there: connection refused at once
    with pytest.raises(FeatureStoreError) as err:
        RedisOnlineStore(url, connect_timeout_s=0.5, socket_timeout_s=0.5, retries=0)
    assert "s3cretpw" not in str(err.value) and "redis://:***@127.0.0.1" in str(err.value)


def _features_config(tmp_path: Path, online_store: dict):
    doc = yaml.safe_load(CONFIG.read_text())
    doc["online_store"] = online_store
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(doc))
    return load_config(None, [f"features.repo={tmp_path / 'features.yaml'}", "features.service=churn_model"])


def test_the_serving_spec_in_user_config_carries_no_redis_password(tmp_path):
    cfg = _features_config(tmp_path, {"type": "redis", "url": "redis://:s3cretpw@cache:6379/0"})
    with pytest.raises(ConfigError) as err:
        serving_spec(cfg)
    assert "s3cretpw" not in str(err.value) and "password_env" in str(err.value)

    cfg = _features_config(tmp_path, {"type": "redis", "url": "redis://cache:6379/0", "password_env": "REDIS_PW"})
    spec = serving_spec(cfg)
    assert spec["online_store"]["password_env"] == "REDIS_PW" and "s3cretpw" not in json.dumps(spec)
