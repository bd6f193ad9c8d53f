"""The pipeline runner on a real local Ray and a real MLflow (SQLite): execution, cache, resume, gates, lineage."""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from raymlops.errors import DataValidationError, PipelineError
from raymlops.pipeline import Artifact, Pipeline, Step, component, run_pipeline
from raymlops.registry.tracking import MetadataStore

ROOT = Path(__file__).resolve().parents[2]


def _called(calls_dir: str, step: str) -> None:
    Path(calls_dir, f"{step}-{uuid.uuid4().hex}").touch()


def calls(calls_dir: Path, step: str) -> int:
    return len(list(calls_dir.glob(f"{step}-*")))


@component(outputs=("data",), version="1")
def make(ctx, rows: int, calls_dir: str):
    _called(calls_dir, "make")
    Path(ctx.path("data.txt")).write_text("\n".join(str(i) for i in range(rows)))
    return {"data": ctx.artifact("data.txt", kind="dataset", metadata={"rows": rows})}


@component
def double(ctx, data, calls_dir: str, fail: bool = False):
    _called(calls_dir, "double")
    ctx.progress("doubling in a Ray task")
    Path(ctx.path("partial.txt")).write_text("half-written")
    if fail:
        raise ValueError("asked to fail")
    values = [2 * int(x) for x in Path(data.uri).read_text().split()]
    Path(ctx.path("doubled.txt")).write_text("\n".join(map(str, values)))
    return Artifact(ctx.path("doubled.txt"), kind="dataset")  # digest filled in by the runner


@component(outputs=("report", "total"), executor="driver")
def summarise(ctx, data, calls_dir: str, label: str = "total"):
    _called(calls_dir, "summarise")
    total = sum(int(x) for x in Path(data.uri).read_text().split())
    Path(ctx.path("summary.json")).write_text(json.dumps({label: total}))
    ctx.log_metrics({"total": total})
    ctx.log_artifact("summary.json")
    ctx.log_trials([{"name": "t0", "params": {"lr": 0.1}, "metrics": {"val_loss": 0.5}}])
    ctx.progress("summarised on the driver")
    return {"report": ctx.artifact("summary.json", kind="evaluation"), "total": total}


@component(num_cpus=0.25)
def gate(ctx, data):
    raise DataValidationError(
        "column 'x' has unseen categories; fix the data or the schema", report_uri="r.html"
    )


@component(runtime_env={"env_vars": {"RAYMLOPS_TEST_ENV": "from-runtime-env"}})
def read_env(ctx):
    return os.environ.get("RAYMLOPS_TEST_ENV")


@component(num_cpus=0.25)
def meet(ctx, me: str, other: str, where: str):
    Path(where, me).touch()
    deadline = time.monotonic() + 30
    while not Path(where, other).exists():  # only steps that run at the same time can meet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never started while {me} waited")
        time.sleep(0.05)
    return me


def toy(calls_dir: Path, rows: int = 4) -> Pipeline:
    c = str(calls_dir)
    return Pipeline(
        "toy",
        [
            Step(make, params={"rows": rows, "calls_dir": c}),
            Step(double, inputs={"data": "make.data"}, params={"calls_dir": c}),
            Step(summarise, inputs={"data": "double"}, params={"calls_dir": c}),
        ],
    )


@pytest.fixture
def calls_dir(tmp_path) -> Path:
    d = tmp_path / "calls"
    d.mkdir()
    return d


def run(pipe, tmp_path, tracking_uri, lines=None, **kw):
    out = lines if lines is not None else []
    return run_pipeline(
        pipe, storage_uri=str(tmp_path / "store"), tracking_uri=tracking_uri, progress=out.append, **kw
    )


def children(client: MlflowClient, parent_id: str, kind: str = "step"):
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [exp],
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`raymlops.kind` = '{kind}'",
        max_results=100,
    )
    return sorted(runs, key=lambda r: r.info.start_time)


def test_first_run_completes_and_is_recorded_then_second_run_is_fully_cached(
    ray_session, tmp_path, tracking_uri, calls_dir
):
    lines: list[str] = []
    first = run(toy(calls_dir), tmp_path, tracking_uri, lines, tags={"team": "ml"})

    assert first.status == "completed", first.error
    assert [s.status for s in first.steps.values()] == ["completed"] * 3
    assert first.outputs["summarise.total"] == 2 * sum(range(4))
    assert Path(first.outputs["double.out"].uri).read_text().split() == ["0", "2", "4", "6"]
    assert first.outputs["double.out"].digest.startswith("sha256:")
    assert "[double] doubling in a Ray task" in lines  # a task's progress reached the driver's console
    assert "[summarise] summarised on the driver" in lines
    record = json.loads((Path(first.run_uri) / "run.json").read_text())
    assert record["status"] == "completed" and set(record["steps"]) == {"make", "double", "summarise"}

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(first.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["raymlops.pipeline_run_id"] == first.run_id and parent.data.tags["team"] == "ml"
    steps = children(client, first.mlflow_run_id)
    assert [r.data.tags["raymlops.step"] for r in steps] == ["make", "double", "summarise"]
    for r in steps:
        t = r.data.tags
        assert r.info.status == "FINISHED" and t["raymlops.status"] == "completed"
        assert t["raymlops.cache_hit"] == "false" and len(t["raymlops.fingerprint"]) == 64
        assert t["raymlops.component_version"] == "1" and t["raymlops.user"] and t["raymlops.host"]
        assert t["raymlops.ray_job_id"] and float(t["raymlops.duration_s"]) >= 0
    make_tags, double_tags, summ = (r.data.tags for r in steps)
    assert make_tags["raymlops.executor"] == "task" and summ["raymlops.executor"] == "driver"
    assert make_tags["artifact.data.uri"].endswith("make/data.txt")
    assert double_tags["input.data.ref"] == "make.data"
    assert double_tags["input.data.digest"] == make_tags["artifact.data.digest"]
    assert steps[2].data.metrics["total"] == 12.0 and steps[1].data.params["calls_dir"] == str(calls_dir)
    assert [a.path for a in client.list_artifacts(steps[2].info.run_id, "outputs")] == [
        "outputs/summary.json"
    ]
    assert len(children(client, steps[2].info.run_id, kind="trial")) == 1

    second = run(toy(calls_dir), tmp_path, tracking_uri)
    assert second.status == "completed" and second.run_id != first.run_id
    assert [s.status for s in second.steps.values()] == ["cached"] * 3
    assert all(s.cache_hit and s.cached_from == first.run_id for s in second.steps.values())
    assert second.outputs == first.outputs
    assert (calls(calls_dir, "make"), calls(calls_dir, "double"), calls(calls_dir, "summarise")) == (1, 1, 1)
    cached = children(client, second.mlflow_run_id)
    assert [r.data.tags["raymlops.cache_hit"] for r in cached] == ["true"] * 3

    # A parameter of the last step changes only that step's fingerprint.
    third = run(toy(calls_dir), tmp_path, tracking_uri, params={"summarise.label": "sum"})
    assert [s.status for s in third.steps.values()] == ["cached", "cached", "completed"]
    assert calls(calls_dir, "summarise") == 2

    listed = MetadataStore(tracking_uri).list_runs("toy", max_results=10)
    assert [r.pipeline_run_id for r in listed] == [third.run_id, second.run_id, first.run_id]
    assert listed[-1].steps == {"make": "completed", "double": "completed", "summarise": "completed"}


def test_failed_step_fails_the_run_and_resume_reruns_only_what_did_not_complete(
    ray_session, tmp_path, tracking_uri, calls_dir
):
    failed = run(toy(calls_dir), tmp_path, tracking_uri, params={"double.fail": True})

    assert failed.status == "failed"
    assert {n: s.status for n, s in failed.steps.items()} == {
        "make": "completed",
        "double": "failed",
        "summarise": "skipped",
    }
    assert failed.steps["double"].error == "ValueError: asked to fail"
    assert "double" in failed.error and "asked to fail" in failed.error
    with pytest.raises(PipelineError, match="--resume"):
        failed.raise_for_status()
    record = json.loads((Path(failed.run_uri) / "run.json").read_text())
    assert record["status"] == "failed"
    assert "Traceback" in record["steps"]["double"]["error"]["traceback"]
    assert not (Path(failed.run_uri) / "double").exists()  # nothing half-written survives
    client = MlflowClient(tracking_uri=tracking_uri)
    assert client.get_run(failed.mlflow_run_id).info.status == "FAILED"

    resumed = run(
        toy(calls_dir), tmp_path, tracking_uri, params={"double.fail": False}, resume_run_id=failed.run_id
    )

    assert resumed.status == "completed" and resumed.run_id == failed.run_id
    assert resumed.mlflow_run_id == failed.mlflow_run_id
    assert {n: s.status for n, s in resumed.steps.items()} == {
        "make": "completed",
        "double": "completed",
        "summarise": "completed",
    }
    assert (calls(calls_dir, "make"), calls(calls_dir, "double"), calls(calls_dir, "summarise")) == (1, 2, 1)
    assert json.loads((Path(resumed.run_uri) / "run.json").read_text())["status"] == "completed"
    assert client.get_run(resumed.mlflow_run_id).info.status == "FINISHED"

    with pytest.raises(PipelineError, match="does not exist"):
        run(toy(calls_dir), tmp_path, tracking_uri, resume_run_id="toy-nope")


def test_gate_error_blocks_the_run_and_is_preserved(ray_session, tmp_path, tracking_uri, calls_dir):
    c = str(calls_dir)
    pipe = Pipeline(
        "gated",
        [
            Step(make, params={"rows": 2, "calls_dir": c}),
            Step(gate, inputs={"data": "make"}),
            Step(summarise, name="after", inputs={"data": "gate"}, params={"calls_dir": c}),
        ],
    )
    result = run(pipe, tmp_path, tracking_uri)

    assert result.status == "blocked"
    assert result.steps["gate"].status == "blocked" and result.steps["after"].status == "skipped"
    assert isinstance(result.exception, DataValidationError) and result.exception.report_uri == "r.html"
    with pytest.raises(DataValidationError, match="unseen categories"):
        result.raise_for_status()
    assert json.loads((Path(result.run_uri) / "run.json").read_text())["status"] == "blocked"
    parent = MlflowClient(tracking_uri=tracking_uri).get_run(result.mlflow_run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["raymlops.status"] == "blocked"


def test_step_sees_its_runtime_env(ray_session, tmp_path):
    result = run(Pipeline("env", [Step(read_env)]), tmp_path, None)
    assert result.status == "completed", result.error
    assert result.outputs["read_env.out"] == "from-runtime-env"


def test_independent_steps_run_concurrently(ray_session, tmp_path):
    where = str(tmp_path)
    pipe = Pipeline(
        "meet",
        [
            Step(meet, name="left", params={"me": "left", "other": "right", "where": where}),
            Step(meet, name="right", params={"me": "right", "other": "left", "where": where}),
        ],
    )
    result = run(pipe, tmp_path, None)
    assert result.status == "completed", result.error
    assert result.outputs == {"left.out": "left", "right.out": "right"}


def test_lineage_walks_from_model_version_to_data(ray_session, tmp_path, tracking_uri, calls_dir):
    result = run(toy(calls_dir), tmp_path, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model("toy-model")
    summarise_run = children(client, result.mlflow_run_id)[-1].info.run_id
    data_digest = result.outputs["make.data"].digest
    client.create_model_version(
        "toy-model",
        result.outputs["summarise.report"].uri,
        run_id=summarise_run,
        tags={"pipeline_run_id": result.run_id, "data_fingerprint": data_digest},
    )

    lineage = MetadataStore(tracking_uri).lineage("toy-model", 1)

    assert lineage.pipeline_run_id == result.run_id and lineage.status == "completed"
    assert [s.name for s in lineage.steps] == ["make", "double", "summarise"]
    assert lineage.steps[1].inputs["data"]["ref"] == "make.data"
    assert lineage.steps[0].fingerprint == result.steps["make"].fingerprint
    assert lineage.data == [
        {
            "from": "make.data",
            "uri": result.outputs["make.data"].uri,
            "kind": "dataset",
            "digest": data_digest,
        }
    ]
    tree = lineage.render()
    assert "pipeline toy run " + result.run_id in tree and "└── summarise" in tree and data_digest in tree
    assert "out total = 12" in tree


def test_example_pipeline_runs_and_caches(ray_session, tmp_path, tracking_uri):
    spec = importlib.util.spec_from_file_location(
        "custom_pipeline_example", ROOT / "examples" / "custom_pipeline.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # not put in sys.modules: Ray ships its functions by value

    lines: list[str] = []
    first = example.main(str(tmp_path / "store"), tracking_uri, rows=200, progress=lines.append)
    assert first.status == "completed", first.error
    assert 0.5 < first.outputs["fit.accuracy"] <= 1.0
    again = example.main(str(tmp_path / "store"), tracking_uri, rows=200, quantile=0.4, progress=lines.append)
    assert [s.status for s in again.steps.values()] == ["cached", "cached", "completed"]


# ------------------------------------------------------------------------------- without Ray: definition errors
def test_in_process_run_needs_no_ray_and_no_mlflow(tmp_path, calls_dir):
    result = run(toy(calls_dir), tmp_path, None, in_process=True)
    assert result.status == "completed" and result.outputs["summarise.total"] == 12


def test_ray_must_be_initialised_for_task_steps(tmp_path, calls_dir, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(PipelineError, match="Ray is not initialised.*in_process=True"):
        run(toy(calls_dir), tmp_path, None)


def test_definition_mistakes_are_named_before_anything_runs(tmp_path, calls_dir):
    with pytest.raises(PipelineError, match="step 'double'.*\\['dat'\\].*accepts"):
        Step(double, inputs={"dat": "make.data"})
    with pytest.raises(PipelineError, match="step 'double' input 'data'.*no step 'mk'"):
        Pipeline("p", [Step(make), Step(double, inputs={"data": "mk.data"})])
    with pytest.raises(PipelineError, match="cycle"):
        Pipeline(
            "p", [Step(double, name="a", inputs={"data": "b"}), Step(double, name="b", inputs={"data": "a"})]
        )
    with pytest.raises(PipelineError, match="step 'make'.*needs \\['calls_dir', 'rows'\\]"):
        run(Pipeline("p", [Step(make)]), tmp_path, None, in_process=True)
    with pytest.raises(PipelineError, match="run parameter 'make.nope'.*accepts"):
        run(toy(calls_dir), tmp_path, None, in_process=True, params={"make.nope": 1})
    with pytest.raises(PipelineError, match="runtime_env applies to executor='task'"):
        component(executor="driver", runtime_env={"env_vars": {}})(lambda ctx: 1)


def test_wrong_outputs_fail_the_step_with_a_named_message(tmp_path):
    @component(outputs=("a", "b"))
    def two(ctx):
        return {"a": 1}

    result = run(Pipeline("p", [Step(two)]), tmp_path, None, in_process=True)
    assert result.status == "failed" and "missing ['b']" in result.steps["two"].error


def test_a_run_id_chosen_in_advance_names_the_run_and_is_never_reused(tmp_path, calls_dir):
    result = run(toy(calls_dir), tmp_path, None, in_process=True, run_id="ctl-0001")
    assert result.status == "completed" and result.run_id == "ctl-0001"
    assert (tmp_path / "store" / "runs" / "ctl-0001" / "run.json").is_file()
    with pytest.raises(PipelineError, match="already exists.*resume_run_id='ctl-0001'"):
        run(toy(calls_dir), tmp_path, None, in_process=True, run_id="ctl-0001")
    with pytest.raises(PipelineError, match="names a directory"):
        run(toy(calls_dir), tmp_path, None, in_process=True, run_id="../escape")
