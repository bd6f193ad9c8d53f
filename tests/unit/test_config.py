import json
from pathlib import Path

import pytest

from raymlops.config import Config, config_json_schema, load_config
from raymlops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_defaults_are_complete_and_local():
    cfg = load_config(None)
    assert cfg.storage_uri == "./.raymlops"
    assert cfg.tracking_uri.startswith("sqlite:///")
    assert cfg.serving.host == "127.0.0.1"
    assert cfg.train.num_workers >= 1 and 0 < cfg.train.cpus_per_worker < 1


def test_demo_config_loads(monkeypatch):
    monkeypatch.delenv("RAYMLOPS_STORAGE", raising=False)
    cfg = load_config(ROOT / "configs" / "churn.yaml")
    assert cfg.name == "churn"
    assert cfg.data.source == "./.raymlops/landing"
    assert cfg.validation.drift.features["monthly_charges"].metric == "ks"


def test_overrides_take_yaml_types():
    cfg = load_config(None, ["train.epochs=3", "train.hidden_sizes=[8, 4]", "tune.enabled=true", "name=x1"])
    assert cfg.train.epochs == 3 and cfg.train.hidden_sizes == [8, 4] and cfg.tune.enabled is True
    assert cfg.name == "x1"


def test_an_unquoted_date_or_time_in_a_window_override_is_taken_as_iso_text():
    cfg = load_config(None, ["data.window.start=2026-01-02", "data.window.end=2026-01-05T06:00:00Z"])
    assert cfg.data.window.start == "2026-01-02"
    assert cfg.data.window.end.startswith("2026-01-05T06:00:00")


def test_env_interpolation_with_default(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("storage_uri: ${RMO_TEST_STORE}\ntracking_uri: ${RMO_UNSET:-sqlite:///x.db}\n")
    monkeypatch.setenv("RMO_TEST_STORE", "s3://bucket/prefix")
    cfg = load_config(p)
    assert cfg.storage_uri == "s3://bucket/prefix" and cfg.tracking_uri == "sqlite:///x.db"


def test_a_default_may_hold_a_reference_and_a_value_is_never_expanded_again(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("tracking_uri: ${RMO_TRACKING:-sqlite:///${RMO_STORE:-./.rmo}/mlflow.db}\n")
    monkeypatch.delenv("RMO_TRACKING", raising=False)
    monkeypatch.delenv("RMO_STORE", raising=False)
    assert load_config(p).tracking_uri == "sqlite:///./.rmo/mlflow.db"
    monkeypatch.setenv("RMO_STORE", "/data")
    assert load_config(p).tracking_uri == "sqlite:////data/mlflow.db"
    monkeypatch.setenv("RMO_TRACKING", "http://127.0.0.1:5000/${RMO_STORE}")  # data, not another reference
    assert load_config(p).tracking_uri == "http://127.0.0.1:5000/${RMO_STORE}"
    p.write_text("tracking_uri: ${RMO_A:-${RMO_B:-${RMO_C:-x}}}\n")  # two levels: an error, not a literal
    with pytest.raises(ConfigError, match="more than one level"):
        load_config(p)


def test_unset_env_var_names_key_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("RMO_MISSING", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  source: ${RMO_MISSING}/x\n")
    with pytest.raises(ConfigError, match=r"data\.source.*RMO_MISSING"):
        load_config(p)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.num_workers=0", "train.num_workers"),
        ("train.optimizer=rmsprop", "'adam', 'adamw' or 'sgd'"),
        ("data.split.test_pct=90", "leaves no training rows"),
        ("canary.steps=[10, 5]", "strictly rising"),
        ("tune.search_space.nope={type: choice, values: [1]}", "unknown train keys"),
        ("serving.port=70000", "serving.port"),
        ("train.bogus=1", "train.bogus: unknown key"),
        ("validation.drift.numeric={metric: linf, threshold: 0.1}", "categorical features"),
    ],
)
def test_errors_name_the_key_value_and_fix(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_json_schema_covers_every_section():
    schema = config_json_schema()
    json.dumps(schema)
    for section in ("data", "validation", "prepare", "train", "tune", "evaluation", "serving", "canary", "triggers"):
        assert section in schema["properties"]
    assert set(Config.model_fields) == set(schema["properties"])
