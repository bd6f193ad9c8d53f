"""Everything raymlops keeps in storage, on a real S3 API (moto's server) through ``storage_uri: s3://...``.

Round trips and atomicity on an object store: storage primitives and compare-and-swap documents, landing data read
and validated, model packages saved, loaded and verified, the prediction log written, read and compacted, and
feature data retrieved point-in-time. No Ray: every path here runs in process.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import yaml

from raymlops import storage
from raymlops.config import load_config
from raymlops.errors import ConcurrentUpdateError, DataError, PackageError
from raymlops.storage import cas
from tests.cluster.conftest import BUCKET
from tests.data_helpers import build_package, instances

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc


def _objects(prefix: str) -> list[str]:
    """Every object under ``prefix`` as the store lists it (nothing filtered: temporaries would show)."""
    fs, path = storage.resolve(prefix)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(f"{BUCKET}/") for i in infos if i.type == pafs.FileType.File)


def test_storage_writes_reads_lists_and_deletes_on_s3(s3):
    # the cached filesystem gives the path pyarrow would
    for uri in (s3.uri("a", "b/"), s3.uri("a%20b", "c"), f"s3://{BUCKET}", s3.uri("k") + "?region=us-east-1"):
        assert storage.resolve(uri)[1] == pafs.FileSystem.from_uri(uri)[1]
    assert storage.resolve(s3.uri("x"))[0] is storage.resolve(s3.uri("y", "z"))[0]
    doc = s3.uri("prim", "state", "doc.json")
    assert not storage.exists(doc)
    storage.atomic_write_text(doc, "v1")
    storage.atomic_write_text(doc, "v2", keep_previous=True)
    assert storage.read_text(doc) == "v2" and storage.read_text(storage.previous_uri(doc)) == "v1"
    assert storage.exists(doc) and storage.mode_of(doc) is None  # no permission bits on an object store
    # each write is one PUT: no temporary object is left (or ever listed) beside the file
    assert _objects(s3.uri("prim")) == ["prim/state/doc.json", "prim/state/doc.json.prev"]
    assert storage.list_files(s3.uri("prim")) == [doc, doc + ".prev"]
    assert [i.base_name for i in storage.list_dir(s3.uri("prim"))] == ["state"]
    with pytest.raises(DataError, match="does not exist"):
        storage.read_text(s3.uri("prim", "missing.json"))

    # a staged output on an object store: the old one stops looking complete first, the marker lands last
    out = s3.uri("prim", "report")
    for version in ("old", "new"):
        with storage.staged_dir(out) as d:
            assert d == out and not storage.exists(storage.join(out, "_SUCCESS"))
            storage.atomic_write_text(storage.join(d, "part.txt"), version)
            storage.atomic_write_text(storage.join(d, "_SUCCESS"), "")
    assert storage.read_text(storage.join(out, "part.txt")) == "new"

    assert storage.delete_file(doc) and not storage.delete_file(doc)
    assert storage.delete_dir(s3.uri("prim")) and not storage.exists(storage.previous_uri(doc))
    assert _objects(s3.uri("prim")) == []


def test_compare_and_swap_documents_on_s3(s3):
    uri = s3.uri("cas", "deployments.json")
    assert cas.read(uri).generation == 0
    g1 = cas.write(uri, {"champion": 1}, 0, keep_previous=True)
    g2 = cas.write(uri, {"champion": 2}, g1, keep_previous=True)
    assert (g1, g2) == (1, 2) and cas.read(uri).doc == {"champion": 2, "generation": 2}
    with pytest.raises(ConcurrentUpdateError, match="expected 1"):
        cas.write(uri, {"champion": 3}, g1)  # computed from a generation that moved on
    assert cas.update(uri, lambda d: {**d, "canary": 3})["generation"] == 3
    assert json.loads(storage.read_text(storage.previous_uri(uri)))["champion"] == 1  # kept at the second write
    # an unreadable document (a torn write on a store that lost it): the writer that kept versions goes on from .prev
    storage.atomic_write_text(uri, '{"champion": ')
    storage.atomic_write_text(storage.previous_uri(uri), json.dumps({"champion": 2, "generation": 3}))
    assert cas.write(uri, {"champion": 4}, 3, keep_previous=True) == 4
    assert cas.read(uri).doc["champion"] == 4


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


def test_model_packages_saved_loaded_and_verified_on_s3(s3, cfg, tmp_path):
    from raymlops.model.package import load_package, verify_package

    uri = s3.uri("store", "packages", "churn", "1")
    info = build_package(cfg, uri, seed=1)
    local = build_package(cfg, tmp_path / "pkg", seed=1)
    assert info.digest == local.digest  # the digest is content only: the same package wherever it is stored
    assert verify_package(uri, info.digest).digest == info.digest
    model = load_package(uri, info.digest)
    rows = pa.Table.from_pylist(instances(5))
    assert model.predict_decoded(rows) == load_package(str(tmp_path / "pkg")).predict_decoded(rows)
    assert not [o for o in _objects(s3.uri("store", "packages")) if ".tmp-" in o]
    # packages are immutable: saving the same content again is a no-op, different content is refused
    assert build_package(cfg, uri, seed=1).digest == info.digest
    with pytest.raises(PackageError, match="already holds a different package"):
        build_package(cfg, uri, seed=2)

    # tampering on the store is caught before anything is loaded
    weights = storage.join(uri, "weights.safetensors")
    storage.atomic_write_bytes(weights, storage.read_bytes(weights)[:-4] + b"\0\0\0\0")
    with pytest.raises(PackageError, match="weights.safetensors has sha256"):
        load_package(uri)
    # a save that stopped before its manifest (the marker, written last) is refused as incomplete; the step that
    # saves it again completes it
    partial = s3.uri("store", "packages", "churn", "2")
    storage.atomic_write_bytes(storage.join(partial, "weights.safetensors"), b"x")
    with pytest.raises(PackageError, match="incomplete"):
        verify_package(partial)
    assert verify_package(build_package(cfg, partial, seed=2).uri).digest != info.digest


def test_prediction_log_written_read_and_compacted_on_s3(s3):
    from raymlops.serve.predlog import FeedbackLog, PredictionLog, compact_partition, join_feedback, read_log

    uri = s3.uri("store", "logs", "churn", "predictions")
    t0 = dt.datetime(2026, 2, 1, 12, tzinfo=UTC)
    log = PredictionLog(uri, flush_rows=10_000, flush_interval_s=3600, buffer_rows=10_000, writer_id="r1-abc")
    for flush in range(3):  # three parts in one partition
        log.append([{"request_id": f"q{flush}-{i}", "ts": t0 + dt.timedelta(seconds=10 * flush + i),
                     "model_version": "1", "role": "primary", "features": {"tenure": i}, "outputs": [0.5],
                     "latency_ms": 1.0, "status": "ok"} for i in range(4)])
        assert log.drain() == 0
    assert log.close() == 0 and log.stats()["written"] == 12 and log.stats()["errors"] == 0
    before = read_log(uri)
    assert before.num_rows == 12 and before.column("request_id")[0].as_py() == "q0-0"
    window = read_log(uri, start=(t0 + dt.timedelta(seconds=10)).timestamp(),
                      end=(t0 + dt.timedelta(seconds=20)).timestamp())
    assert sorted(window.column("request_id").to_pylist()) == [f"q1-{i}" for i in range(4)]

    partition = storage.join(uri, "date=2026-02-01")
    done = compact_partition(partition)
    assert done is not None and (done.inputs, done.rows, done.deleted) == (3, 12, 3)
    assert read_log(uri).equals(before)  # same rows, same order
    names = [o.rsplit("/", 1)[1] for o in _objects(partition)]
    assert len(names) == 2 and "_compacted.json" in names and not [n for n in names if ".tmp-" in n]
    assert compact_partition(partition) is None  # one file is as compact as it gets

    feedback = FeedbackLog(s3.uri("store", "logs", "churn", "feedback"), flush_rows=100, flush_interval_s=3600,
                           buffer_rows=100, writer_id="r1-abc")
    feedback.append([{"request_id": "q1-2", "ts": t0, "labels": [1]}])
    assert feedback.close() == 0
    joined = join_feedback(read_log(uri), read_log(feedback.uri, schema=feedback.schema))
    assert joined.num_rows == 1


def test_landing_data_ingested_and_validated_on_s3(s3, capsys):
    from raymlops.cli import main
    from raymlops.data.ingest import ingest
    from raymlops.data.synthetic import generate

    landing = s3.uri("store", "landing")
    written = generate(landing, rows_per_day=300, days=2, seed=1)
    assert len(written.files) == 2 and all(f.startswith("s3://") for f in written.files)
    result = ingest(landing, timestamp="event_ts", local_max_rows=10_000)
    assert result.rows == 600 and result.files == sorted(written.files)
    windowed = ingest(landing + "/*.parquet", timestamp="event_ts", window_start="2026-01-02", local_max_rows=10_000)
    assert windowed.rows == 300

    env = {"RAYMLOPS_STORAGE": s3.uri("store")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        code = main(["validate", str(ROOT / "configs" / "churn.yaml"), "--data", landing])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "froze schema v1" in out.err
    report = next(ln for ln in out.out.splitlines() if ln.startswith("report:")).split(":", 1)[1].strip()
    assert report.startswith(s3.uri("store")) and json.loads(storage.read_text(report))["decision"] == "OK"
    assert storage.list_files(s3.uri("store", "schemas", "churn"), (".yaml",))


def test_feature_data_read_point_in_time_from_s3(s3, tmp_path):
    from raymlops.features.definitions import parse_feature_repo
    from raymlops.features.example import generate_example
    from raymlops.features.offline import get_historical_features

    def repo_at(data: str):
        doc = yaml.safe_load((ROOT / "configs" / "features.yaml").read_text())
        for view in doc["feature_views"].values():
            view["source"]["uri"] = storage.join(data, Path(view["source"]["uri"]).name)
        doc["online_store"]["path"] = str(tmp_path / "online.sqlite")
        return parse_feature_repo(doc)

    remote, local = s3.uri("store", "features"), str(tmp_path / "features")
    files = generate_example(remote, customers=40, days=6, seed=3)
    generate_example(local, customers=40, days=6, seed=3)
    rows = pa.table({"customer_id": [f"C{i:06d}" for i in range(40)],
                     "event_ts": pa.array([dt.datetime(2026, 1, 5, tzinfo=UTC)] * 40, pa.timestamp("us", tz="UTC"))})
    on_s3 = get_historical_features(repo_at(remote), "churn_model", rows)
    assert on_s3.num_rows == 40 and on_s3.column("usage_gb").null_count == 0
    assert on_s3.equals(get_historical_features(repo_at(local), "churn_model", rows))
    # entity rows given as an s3:// URI are read from the store too
    assert get_historical_features(repo_at(remote), "churn_model", files["labels"]).num_rows > 0
