"""Historical retrieval on Ray (hash-partitioned tasks) equals the single-process path; the CT training source."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from raymlops.config import load_config
from raymlops.errors import ConfigError
from raymlops.features.definitions import load_feature_repo
from raymlops.features.example import generate_example
from raymlops.features.offline import get_historical_features
from raymlops.features.training import build_training_source

CONFIG = Path(__file__).parents[2] / "configs" / "features.yaml"


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("features-ray")
    files = generate_example(str(root / "data"), customers=300, days=12, seed=7)
    # A second usage file, so split tasks read several file groups.
    usage = pl.read_parquet(files["customer_usage"])
    half = usage.height // 2
    usage[:half].write_parquet(files["customer_usage"])
    usage[half:].write_parquet(str(Path(files["customer_usage"]).with_name("part-1.parquet")))
    doc = yaml.safe_load(CONFIG.read_text())
    for view in doc["feature_views"].values():
        view["source"]["uri"] = str(root / "data" / Path(view["source"]["uri"]).name)
    doc["online_store"]["path"] = str(root / "online.sqlite")
    (root / "features.yaml").write_text(yaml.safe_dump(doc))
    return root / "features.yaml"


def test_ray_partitions_give_the_same_rows_as_one_process(ray_session, repo_path):
    repo = load_feature_repo(repo_path)
    labels = pl.read_parquet(repo_path.parent / "data" / "labels" / "part-0.parquet").sample(fraction=1.0, seed=1)
    labels = pl.concat([labels, pl.DataFrame({"customer_id": ["nobody", None], "churned": [0, 1],
                                              "event_ts": [dt.datetime(2026, 1, 5), None]},
                                             schema=labels.schema).select(labels.columns)])
    local = get_historical_features(repo, "churn_model", labels)
    for partitions in (2, 5):
        on_ray = get_historical_features(repo, "churn_model", labels, partitions=partitions)
        assert on_ray.equals(local)
    assert local.num_rows == labels.height and local.column("usage_gb").null_count < local.num_rows // 2


def test_ct_training_source_is_the_point_in_time_join_written_once(ray_session, repo_path, tmp_path):
    labels = str(repo_path.parent / "data" / "labels")
    cfg = load_config(None, [f"storage_uri={tmp_path}", f"features.repo={repo_path}",
                             "features.service=churn_model", f"features.label_source={labels}",
                             "features.partitions=2"])
    lines: list[str] = []
    out = build_training_source(cfg, progress=lines.append)
    assert out.startswith(str(tmp_path / "features" / "training" / "churn"))
    table = pq.read_table(Path(out) / "part-0.parquet")
    expected = get_historical_features(load_feature_repo(repo_path), "churn_model", labels)
    assert table.equals(expected) and (Path(out) / "_SUCCESS").exists()
    assert list((tmp_path / "features" / "definitions").glob("*.yaml"))
    again = build_training_source(cfg, progress=lines.append)  # same inputs: the same directory, not rebuilt
    assert again == out and sum("joining" in line for line in lines) == 1
    with pytest.raises(ConfigError, match="data.id_columns must list the entity keys"):
        build_training_source(cfg.model_copy(update={"data": cfg.data.model_copy(update={"id_columns": []})}))
