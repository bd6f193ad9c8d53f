"""The config is settings, not code: bounded YAML, ${ENV} only in location keys, code named only from allow-lists."""

from __future__ import annotations

import pytest
import yaml

from raymlops.config import load_config
from raymlops.core.safe_yaml import MAX_NODES, expanded_size, load_bounded
from raymlops.errors import ConfigError


def _write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def _bomb(levels: int, width: int) -> str:
    """The items of a YAML list whose nested aliases expand to ``width ** levels`` strings ("billion laughs")."""
    items = ['- &l0 "lol"']
    items += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "".join(f"        {item}\n" for item in items)


def _in_open_list(items: str) -> str:
    # tune.search_space.<key>.values is a list of anything, so the document validates once expanded.
    return f"tune:\n  search_space:\n    batch_size:\n      type: choice\n      values:\n{items}"


# ------------------------------------------------------------------------------------------ bounded YAML
@pytest.mark.timeout(60)  # before the bound this walked 387 million strings: a failure, not a hang of the suite
def test_a_billion_laughs_config_is_refused(tmp_path):
    p = _write(tmp_path, _in_open_list(_bomb(9, 9)))
    with pytest.raises(ConfigError, match="aliases.*expand to more than"):
        load_config(p)


def test_a_moderate_alias_expansion_in_an_open_list_is_refused(tmp_path):
    p = _write(tmp_path, _in_open_list(_bomb(5, 12)))  # 12 ** 5 = 248,832 strings: a config has a few hundred
    with pytest.raises(ConfigError, match="expand to more than 100,000 values"):
        load_config(p)
    p.write_text(_in_open_list(_bomb(2, 3)))  # anchors reused a little are fine
    assert len(load_config(p).tune.search_space["batch_size"].values) == 3


def test_a_recursive_alias_is_refused(tmp_path):
    p = _write(tmp_path, "tune:\n  search_space:\n    batch_size: &x {type: choice, values: [*x]}\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(p)


def test_an_alias_bomb_in_a_set_override_is_refused():
    flow = "[" + ", ".join(["&a0 lol"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]) + "]"
    with pytest.raises(ConfigError, match=r"--set tune\.search_space\.batch_size\.values.*expand"):
        load_config(None, ["tune.search_space.batch_size.type=choice", f"tune.search_space.batch_size.values={flow}"])


def test_a_config_over_one_mib_is_refused(tmp_path):
    p = _write(tmp_path, "name: churn\n" + "# padding\n" * 110_000)
    with pytest.raises(ConfigError, match="over the 1,048,576-byte limit"):
        load_config(p)


def test_expanded_size_counts_shared_nodes_per_reference():
    leaf = [1, 2]
    assert expanded_size({"a": leaf, "b": leaf}) == 1 + 2 + 2 * 3
    # the list of levels: itself, "lol", then 1 + 3, 1 + 3 * 4 and 1 + 3 * 13 for the three nested levels
    assert expanded_size(load_bounded(_bomb(3, 3), "t")) == 1 + 1 + 4 + 13 + 40
    with pytest.raises(ConfigError, match="expand"):
        load_bounded(_bomb(9, 9), "t")
    assert expanded_size(yaml.safe_load(_bomb(9, 9)), limit=MAX_NODES) > MAX_NODES


# ------------------------------------------------------------------------------------------ interpolation
def test_env_is_not_read_into_keys_outside_the_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("RMO_SECRET", "hunter2")
    p = _write(tmp_path, "serving:\n  app_name: leak-${RMO_SECRET}\n")
    with pytest.raises(ConfigError, match=r"serving\.app_name: \$\{RMO_SECRET\} is not substituted here"):
        load_config(p)
    p.write_text("name: churn\ntune:\n  search_space:\n    batch_size: {type: choice, values: ['${RMO_SECRET}']}\n")
    with pytest.raises(ConfigError, match="not substituted here"):
        load_config(p)


def test_env_is_read_in_location_keys_and_environment_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("RMO_STORE", "/srv/store")
    p = _write(tmp_path, "storage_uri: ${RMO_STORE}\ndata: {source: '${RMO_STORE}/landing'}\n"
                         "notifications: {webhook_url: '${RMO_HOOK:-}'}\n"
                         "environments:\n  prod: {set: {storage_uri: '${RMO_STORE}/prod'}}\n")
    assert load_config(p).data.source == "/srv/store/landing"
    assert load_config(p, env="prod").storage_uri == "/srv/store/prod"


def test_the_signing_key_is_never_read_into_a_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMLOPS_SIGNING_KEY", "k" * 40)
    p = _write(tmp_path, "notifications: {webhook_url: 'https://hooks.example.com/${RAYMLOPS_SIGNING_KEY}'}\n")
    with pytest.raises(ConfigError, match="never copied into a config value"):
        load_config(p)


# ---------------------------------------------------------------------------------------- code by name
def test_train_model_must_be_built_in_or_allow_listed():
    with pytest.raises(ConfigError, match=r"train\.model 'os:system' is not built in.*model\.allowed_factories"):
        load_config(None, ["train.model=os:system"])
    cfg = load_config(None, ["train.model=my.models:make", "model.allowed_factories=[my.models:make]"])
    assert cfg.model.policy().allowed_factories == ("my.models:make",)
    with pytest.raises(ConfigError, match="allowed_factories"):
        load_config(None, ["model.allowed_factories=[not a path]"])


def test_controller_pipeline_must_be_the_built_in_or_allow_listed():
    assert load_config(None).controller.pipeline == "raymlops.ct:run_ct_pipeline"
    with pytest.raises(ConfigError, match="neither the built-in.*controller.allowed_pipelines"):
        load_config(None, ["controller.pipeline=subprocess:getoutput"])
    cfg = load_config(None, ["controller.pipeline=my.flows:run", "controller.allowed_pipelines=[my.flows:run]"])
    assert cfg.controller.pipeline == "my.flows:run"


@pytest.mark.parametrize("entry", ["--index-url https://evil.example/simple", "-e .", "--extra-index-url=x",
                                   "pkg @ https://evil.example/pkg.whl", "git+https://evil.example/pkg.git",
                                   "./local/dir", "https://evil.example/pkg.tar.gz"])
def test_delivery_pip_accepts_requirement_specifiers_only(entry):
    with pytest.raises(ConfigError, match="not plain requirement specifiers"):
        load_config(None, [f"delivery.pip=[{entry!r}]"])
    assert load_config(None, [f"delivery.pip=[{entry!r}]", "delivery.allow_pip_sources=true"]).delivery.pip == [entry]


def test_delivery_pip_keeps_ordinary_requirements():
    reqs = ["requests>=2.31", "xgboost[scikit-learn]==2.1.0; python_version >= '3.10'", "lightgbm"]
    assert load_config(None, [f"delivery.pip={reqs!r}"]).delivery.pip == reqs
