"""Pipeline metadata and lineage in MLflow.

A pipeline run is an MLflow parent run (experiment = pipeline name, tag ``raymlops.kind=pipeline``); each step is
a child run (``mlflow.parentRunId``) tagged with its component, version, fingerprint, status, executor, timing and
cache hit, and with pointers to its artifacts (``artifact.<name>.uri`` / ``.digest`` / ``.kind``) and inputs
(``input.<arg>.ref`` / ``.uri`` / ``.digest``). Data stays in storage; only small reports are copied into MLflow.

The pipeline run also carries what MLflow's UI shows for a model: the training history as step metrics
(``log_history``: ``train_loss``, ``val_loss``... per epoch or boosting round), the data snapshot as a dataset input
(``log_dataset``: its URI and digest, no data read) and the evaluation tables (``log_tables``).

Always an explicit ``MlflowClient(tracking_uri=...)`` and batched writes, from the driver only.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from raymlops.errors import RegistryError

KIND_TAG = "raymlops.kind"
PIPELINE_RUN_TAG = "raymlops.pipeline_run_id"
STATUS_TAG = "raymlops.status"
DATA_FINGERPRINT_TAG = "data_fingerprint"
_TAG_LIMIT = 5000  # every MLflow backend stores at least this much per tag value
_BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch call
_DATASET_DIGEST = 36  # MLflow stores at most this much of a dataset digest (the profile keeps all of it)


@dataclass
class StepRecord:
    """Everything the runner reports about one step (plain data: the pipeline package builds it)."""

    pipeline_run_id: str
    step: str
    component: str
    component_version: str
    code_hash: str
    fingerprint: str
    status: str  # completed | cached | failed | blocked
    executor: str  # task | driver | in_process
    started_at: float  # epoch seconds
    ended_at: float
    cache_hit: bool = False
    cached_from: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # arg -> {ref, uri, digest}
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> {uri, kind, digest}
    values: dict[str, Any] = field(default_factory=dict)  # outputs that are plain values
    host: str | None = None
    error: str | None = None
    traceback: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # small files to copy into MLflow, by artifact path
    trials: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    """One pipeline run as listed by ``raymlops runs``."""

    pipeline_run_id: str
    mlflow_run_id: str
    pipeline: str
    status: str
    started_at: float | None
    ended_at: float | None
    steps: dict[str, str]  # step -> status
    error: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.started_at is None or self.ended_at is None else self.ended_at - self.started_at

    def render(self) -> str:
        """One line (and the error under it) for a terminal."""
        import datetime as dt

        started = dt.datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds") if self.started_at else "-"
        took = f"{self.duration_s:.0f}s" if self.duration_s is not None else "-"
        steps = " ".join(f"{k}:{v}" for k, v in self.steps.items())
        line = f"{self.pipeline_run_id}  {self.status:<9} {started}  {took:>6}  {steps}"
        return line + (f"\n    {self.error}" if self.error else "")


@dataclass
class LineageStep:
    """One step of the pipeline run that produced a model version."""

    name: str
    component: str
    version: str
    status: str
    fingerprint: str
    cache_hit: bool
    cached_from: str | None
    mlflow_run_id: str
    params: dict[str, str]
    inputs: dict[str, dict[str, str]]
    artifacts: dict[str, dict[str, str]]
    values: dict[str, str] = field(default_factory=dict)  # outputs that are plain values, as JSON text


@dataclass
class Lineage:
    """Model version -> pipeline run -> steps (fingerprints, inputs, artifacts) -> data snapshot."""

    model: str
    version: str
    model_tags: dict[str, str]
    source: str
    mlflow_run_id: str | None
    pipeline: str | None
    pipeline_run_id: str | None
    status: str | None
    data_fingerprint: str | None
    steps: list[LineageStep]
    data: list[dict[str, str]]  # external inputs and the datasets of root steps: the data snapshot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """The lineage as an indented tree for a terminal."""
        lines = [f"model {self.model} v{self.version}  source {self.source}"]
        if self.data_fingerprint:
            lines.append(f"│ data fingerprint {self.data_fingerprint}")
        impl = self.model_tags.get("raymlops.impl.digest")
        if impl or self.model_tags.get("raymlops.environment"):
            commit = self.model_tags.get("raymlops.impl.commit")
            lines.append(f"│ environment {self.model_tags.get('raymlops.environment') or '-'}, pipeline implementation "
                         f"{impl[:12] if impl else 'installed code'}" + (f" (git {commit[:10]})" if commit else ""))
        decisions = sorted((k, v) for k, v in self.model_tags.items() if k.startswith("raymlops.decision."))
        for _, text in decisions:
            lines.append(f"│ decision {text}")
        if self.pipeline_run_id is None:
            lines.append("└── no pipeline run recorded (registered outside a raymlops pipeline)")
            return "\n".join(lines)
        lines.append(
            f"└── pipeline {self.pipeline} run {self.pipeline_run_id} [{self.status}]  mlflow {self.mlflow_run_id}"
        )
        for i, step in enumerate(self.steps):
            last = i == len(self.steps) - 1
            head, pad = ("    └── ", "        ") if last else ("    ├── ", "    │   ")
            cached = f" (cached from {step.cached_from})" if step.cache_hit and step.cached_from else ""
            lines.append(
                f"{head}{step.name}  {step.component} v{step.version}  [{step.status}]{cached}  "
                f"fp {step.fingerprint[:12]}"
            )
            rows = [
                f"in  {arg} <- {inp.get('ref', '?')}  {inp.get('digest', '')}"
                for arg, inp in step.inputs.items()
            ]
            rows += [
                f"out {name}: {a.get('kind', '?')}  {a.get('uri', '')}  {a.get('digest', '')}"
                for name, a in step.artifacts.items()
            ]
            rows += [f"out {name} = {value}" for name, value in step.values.items()]
            for j, row in enumerate(rows):
                lines.append(f"{pad}{'└── ' if j == len(rows) - 1 else '├── '}{row}")
        if self.data:
            lines.append("data snapshot")
            for j, d in enumerate(self.data):
                branch = "└── " if j == len(self.data) - 1 else "├── "
                lines.append(
                    f"{branch}{d.get('from', '?')}: {d.get('kind', '?')}  {d.get('uri', '')}  {d.get('digest', '')}"
                )
        return "\n".join(lines)


class MetadataStore:
    """Pipeline runs, step runs, Tune trials and lineage on one MLflow tracking server."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)

    # ------------------------------------------------------------------------------------------ pipeline
    def start_pipeline_run(
        self,
        experiment: str,
        *,
        pipeline: str,
        pipeline_run_id: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
    ) -> str:
        """Create the parent run; returns its MLflow run id."""
        with self._errors(f"starting the MLflow run of pipeline {pipeline!r}"):
            exp_id = self._experiment_id(experiment, artifact_location)
            run_tags = {
                **_environment_tags(),
                **{str(k): str(v) for k, v in (tags or {}).items()},
                KIND_TAG: "pipeline",
                "raymlops.pipeline": pipeline,
                PIPELINE_RUN_TAG: pipeline_run_id,
                STATUS_TAG: "running",
            }
            run = self._client.create_run(exp_id, run_name=pipeline_run_id, tags=run_tags)
            run_id = run.info.run_id
            self._client.log_batch(run_id, params=_params(params or {}))
            return run_id

    def reopen_pipeline_run(self, mlflow_run_id: str, params: Mapping[str, Any] | None = None) -> None:
        """Mark a failed parent run running again (``--resume``); new params are logged with a ``resume.`` prefix."""
        with self._errors(f"reopening MLflow run {mlflow_run_id}"):
            run = self._client.get_run(mlflow_run_id)
            resumed = int(run.data.tags.get("raymlops.resumed", "0")) + 1
            self._client.update_run(mlflow_run_id, status="RUNNING")
            logged = run.data.params
            # MLflow params are immutable: a changed value under the same key would be rejected.
            fresh = {f"resume{resumed}.{k}": v for k, v in (params or {}).items() if logged.get(k) != _str(v)}
            self._client.log_batch(
                mlflow_run_id,
                params=_params(fresh),
                tags=[RunTag("raymlops.resumed", str(resumed)), RunTag(STATUS_TAG, "running")],
            )

    def end_pipeline_run(
        self, mlflow_run_id: str, status: str, steps: Mapping[str, str], error: str | None = None
    ) -> None:
        """Close the parent run: FINISHED only when ``status == 'completed'``; blocked and failed runs are FAILED."""
        tags = [RunTag(STATUS_TAG, status), RunTag("raymlops.steps", json.dumps(dict(steps)))]
        if error:
            tags.append(RunTag("raymlops.error", error[:_TAG_LIMIT]))
        with self._errors(f"closing MLflow run {mlflow_run_id}"):
            self._client.log_batch(mlflow_run_id, tags=tags)
            final = RunStatus.to_string(RunStatus.FINISHED if status == "completed" else RunStatus.FAILED)
            self._client.set_terminated(mlflow_run_id, status=final)

    # ---------------------------------------------------------------------------------------------- steps
    def log_step(self, parent_run_id: str, record: StepRecord) -> str:
        """Log one finished (or cached, failed, blocked) step as a child run; returns its MLflow run id."""
        with self._errors(f"logging step {record.step!r} to MLflow"):
            parent = self._client.get_run(parent_run_id)
            tags = {
                **_environment_tags(),
                "mlflow.parentRunId": parent_run_id,
                KIND_TAG: "step",
                PIPELINE_RUN_TAG: record.pipeline_run_id,
                "raymlops.step": record.step,
                "raymlops.component": record.component,
                "raymlops.component_version": record.component_version,
                "raymlops.code_hash": record.code_hash,
                "raymlops.fingerprint": record.fingerprint,
                STATUS_TAG: record.status,
                "raymlops.executor": record.executor,
                "raymlops.start": _iso(record.started_at),
                "raymlops.end": _iso(record.ended_at),
                "raymlops.duration_s": f"{record.ended_at - record.started_at:.3f}",
                "raymlops.cache_hit": str(record.cache_hit).lower(),
            }
            if record.host:
                tags["raymlops.host"] = record.host
            if record.cached_from:
                tags["raymlops.cached_from"] = record.cached_from
            if record.error:
                tags["raymlops.error"] = record.error[:_TAG_LIMIT]
            for arg, inp in record.inputs.items():
                tags.update({f"input.{arg}.{k}": str(v) for k, v in inp.items()})
            for name, art in record.artifacts.items():
                tags.update({f"artifact.{name}.{k}": str(art.get(k, "")) for k in ("uri", "digest", "kind")})
            for name, value in record.values.items():
                tags[f"output.{name}"] = _str(value)[:_TAG_LIMIT]
            run = self._client.create_run(
                parent.info.experiment_id,
                start_time=int(record.started_at * 1000),
                run_name=record.step,
                tags={k: v[:_TAG_LIMIT] for k, v in tags.items()},
            )
            run_id = run.info.run_id
            now_ms = int(record.ended_at * 1000)
            metrics = [Metric(k, float(v), now_ms, 0) for k, v in record.metrics.items()]
            metrics.append(Metric("duration_s", record.ended_at - record.started_at, now_ms, 0))
            self._client.log_batch(run_id, metrics=metrics, params=_params(record.params))
            self._log_files(run_id, record)
            if record.trials:
                self.log_child_runs(run_id, record.trials)
            ok = record.status in ("completed", "cached")
            status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
            self._client.set_terminated(run_id, status=status, end_time=now_ms)
            return run_id

    def log_child_runs(self, parent_run_id: str, trials: Sequence[Mapping[str, Any]]) -> list[str]:
        """Log Tune trials (``{"name", "params" or "config", "metrics", "status", "tags"}``) as child runs."""
        with self._errors(f"logging {len(trials)} trials under MLflow run {parent_run_id}"):
            parent = self._client.get_run(parent_run_id)
            pipeline_run = parent.data.tags.get(PIPELINE_RUN_TAG, "")
            ids = []
            for i, trial in enumerate(trials):
                name = str(trial.get("name") or trial.get("trial_id") or f"trial-{i}")
                tags = {
                    "mlflow.parentRunId": parent_run_id,
                    KIND_TAG: "trial",
                    PIPELINE_RUN_TAG: pipeline_run,
                }
                tags.update({str(k): str(v) for k, v in (trial.get("tags") or {}).items()})
                run = self._client.create_run(parent.info.experiment_id, run_name=name, tags=tags)
                now_ms = int(time.time() * 1000)
                metrics = [
                    Metric(str(k), float(v), now_ms, 0)
                    for k, v in (trial.get("metrics") or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                ]
                params = _params(trial.get("params") or trial.get("config") or {})
                self._client.log_batch(run.info.run_id, metrics=metrics, params=params)
                status = str(trial.get("status", "FINISHED")).upper()
                if status not in ("FINISHED", "FAILED", "KILLED"):
                    status = "FINISHED" if status in ("TERMINATED", "COMPLETED") else "FAILED"
                self._client.set_terminated(run.info.run_id, status=status)
                ids.append(run.info.run_id)
            return ids

    # ------------------------------------------------------------------------------------ model metadata
    def log_history(self, run_id: str, history: Sequence[Mapping[str, Any]], *, step_key: str = "epoch") -> int:
        """Per-epoch metrics as MLflow step history (``step`` = each row's ``step_key``), in as few ``log_batch``
        calls as MLflow allows; returns how many values were logged."""
        metrics = history_metrics(history, step_key, int(time.time() * 1000))
        with self._errors(f"logging the training history of MLflow run {run_id}"):
            for i in range(0, len(metrics), _BATCH_METRICS):
                self._client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])
        return len(metrics)

    def log_dataset(self, run_id: str, uri: str, digest: str, *, context: str = "training",
                    profile: Mapping[str, Any] | None = None) -> None:
        """Log the dataset at ``uri`` as an input of the run (``mlflow.data`` metadata only: its source, digest and
        ``profile``, e.g. rows and files; nothing is read)."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag

        name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
        doc = {"name": name, "digest": digest[:_DATASET_DIGEST], "source_type": "uri",
               "source": json.dumps({"uri": uri})}  # for a scheme MLflow has no source type for
        with warnings.catch_warnings():  # a local path resolves two ways, both local: MLflow warns about it
            warnings.simplefilter("ignore")
            try:
                doc = MetaDataset(resolve_dataset_source(uri), name=name, digest=doc["digest"]).to_dict()
            except MlflowException:
                pass
        entity = Dataset(name=doc["name"], digest=doc["digest"], source_type=doc["source_type"], source=doc["source"],
                         profile=json.dumps({"digest": digest, **(profile or {})}, default=str))
        tags = [InputTag("mlflow.data.context", context)]
        with self._errors(f"logging dataset {uri} as an input of MLflow run {run_id}"):
            self._client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    def log_tables(self, run_id: str, tables: Mapping[str, Mapping[str, Sequence[Any]]]) -> None:
        """Log column tables (``{artifact_file: {column: values}}``) with ``log_table``: MLflow's UI shows them."""
        with self._errors(f"logging {len(tables)} tables to MLflow run {run_id}"):
            for artifact_file, columns in tables.items():
                self._client.log_table(run_id, data={k: list(v) for k, v in columns.items()},
                                       artifact_file=artifact_file)

    # -------------------------------------------------------------------------------------------- monitor
    def log_monitor_pass(self, experiment: str, metrics: Mapping[str, float], *, at: float,
                         tags: Mapping[str, str] | None = None, artifact_location: str | None = None) -> str:
        """Log one monitor pass as metrics (step = epoch seconds) of the long-lived run tagged
        ``raymlops.kind=monitor`` in ``experiment`` (created on first use, with ``artifact_location``: the
        pipeline's runs reuse it), in one batch; returns its run id."""
        with self._errors(f"logging a monitor pass to experiment {experiment!r}"):
            exp_id = self._experiment_id(experiment, artifact_location)
            found = self._client.search_runs([exp_id], filter_string=f"tags.`{KIND_TAG}` = 'monitor'",
                                             max_results=1, order_by=["attributes.start_time ASC"])
            if found:  # the oldest one: two monitors racing to create it converge on the same run
                run_id = found[0].info.run_id
            else:
                run_id = self._client.create_run(exp_id, run_name="monitor",
                                                 tags={**_environment_tags(), KIND_TAG: "monitor"}).info.run_id
            ms, step = int(at * 1000), int(at)
            self._client.log_batch(
                run_id,
                metrics=[Metric(str(k), float(v), ms, step) for k, v in metrics.items()],
                tags=[RunTag(str(k), str(v)[:_TAG_LIMIT]) for k, v in (tags or {}).items()],
            )
            return run_id

    # ---------------------------------------------------------------------------------------------- reads
    def list_runs(self, experiment: str, max_results: int = 20) -> list[RunSummary]:
        """The latest pipeline runs of ``experiment`` (newest first)."""
        with self._errors(f"listing runs of experiment {experiment!r}"):
            exp = self._client.get_experiment_by_name(experiment)
            if exp is None:
                return []
            runs = self._client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{KIND_TAG}` = 'pipeline'",
                max_results=max_results,
                order_by=["attributes.start_time DESC"],
            )
            return [_summary(r) for r in runs]

    def lineage(self, name: str, version: str | int) -> Lineage:
        """Walk from a registered model version back to its pipeline run, steps and data snapshot."""
        with self._errors(f"reading the lineage of model {name!r} version {version}"):
            mv = self._client.get_model_version(name, str(version))
            tags = dict(mv.tags or {})
            parent = self._pipeline_run_of(mv.run_id, tags)
            data_fp = tags.get(DATA_FINGERPRINT_TAG) or tags.get(f"raymlops.{DATA_FINGERPRINT_TAG}")
            if parent is None:
                return Lineage(
                    name, str(mv.version), tags, mv.source, mv.run_id, None, None, None, data_fp, [], []
                )
            children = self._client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{KIND_TAG}` = 'step'",
                max_results=1000,
                order_by=["attributes.start_time ASC"],
            )
            steps = _latest_per_step(children)
            ptags = parent.data.tags
            return Lineage(
                model=name,
                version=str(mv.version),
                model_tags=tags,
                source=mv.source,
                mlflow_run_id=parent.info.run_id,
                pipeline=ptags.get("raymlops.pipeline"),
                pipeline_run_id=ptags.get(PIPELINE_RUN_TAG),
                status=ptags.get(STATUS_TAG),
                data_fingerprint=data_fp,
                steps=steps,
                data=_data_snapshot(steps),
            )

    # -------------------------------------------------------------------------------------------- helpers
    def _pipeline_run_of(self, run_id: str | None, tags: Mapping[str, str]) -> Any:
        # A version may point at the parent run or at a step's child run, or carry only the pipeline run id
        # (ours, or the MLflow run id under the same tag: the model registry stores either).
        pipeline_run_id = tags.get(PIPELINE_RUN_TAG) or tags.get("pipeline_run_id")
        candidates = [run_id, tags.get("run_id"), tags.get("mlflow_run_id"), pipeline_run_id]
        for cand in dict.fromkeys(filter(None, candidates)):
            try:
                run = self._client.get_run(cand)
            except MlflowException:
                continue
            if run.data.tags.get(KIND_TAG) == "pipeline":
                return run
            parent_id = run.data.tags.get("mlflow.parentRunId")
            if parent_id:
                return self._client.get_run(parent_id)
        if not pipeline_run_id:
            return None
        exp_ids = [e.experiment_id for e in self._client.search_experiments()]
        found = self._client.search_runs(
            exp_ids,
            filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{KIND_TAG}` = 'pipeline'",
            max_results=1,
        )
        return found[0] if found else None

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:  # another driver created it between our two calls
            exp = self._client.get_experiment_by_name(name)
            if exp is None:
                raise err from None
            return exp.experiment_id

    def _log_files(self, run_id: str, record: StepRecord) -> None:
        if record.traceback:
            self._client.log_text(run_id, record.traceback, "error/traceback.txt")
        if not record.files:
            return
        with tempfile.TemporaryDirectory(prefix="raymlops-mlflow-") as tmp:
            for path, data in record.files.items():
                local = os.path.join(tmp, path)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(data)
            self._client.log_artifacts(run_id, tmp, artifact_path="outputs")

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except RegistryError:
            raise
        except (MlflowException, OSError) as err:
            raise RegistryError(
                f"{doing} failed on tracking server {self.tracking_uri}: {err}; "
                "check that tracking_uri is reachable and its database is migrated"
            ) from err


def _environment_tags() -> dict[str, str]:
    tags = {"raymlops.host": socket.gethostname()}
    try:
        tags["raymlops.user"] = tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name in containers without a passwd entry
        pass
    ray = sys.modules.get("ray")  # only ask Ray if the process already uses it: importing it costs seconds
    if ray is not None and ray.is_initialized():
        tags["raymlops.ray_job_id"] = ray.get_runtime_context().get_job_id()
    return tags


def history_metrics(history: Sequence[Mapping[str, Any]], step_key: str, timestamp_ms: int) -> list[Metric]:
    """MLflow metrics of training history rows: each numeric value at step ``row[step_key]`` (the row's position,
    from 1, when it has none); the step key itself and non-numbers are left out."""
    out = []
    for i, row in enumerate(history, start=1):
        step = row.get(step_key, i)
        step = int(step) if isinstance(step, int | float) and not isinstance(step, bool) else i
        out += [Metric(str(k), float(v), timestamp_ms, step) for k, v in row.items()
                if k != step_key and isinstance(v, int | float) and not isinstance(v, bool)]
    return out


def _str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _params(params: Mapping[str, Any]) -> list[Param]:
    return [Param(str(k), _str(v)[:6000]) for k, v in params.items()]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _summary(run: Any) -> RunSummary:
    tags = run.data.tags
    try:
        steps = json.loads(tags.get("raymlops.steps", "{}"))
    except ValueError:
        steps = {}
    return RunSummary(
        pipeline_run_id=tags.get(PIPELINE_RUN_TAG, run.info.run_name or ""),
        mlflow_run_id=run.info.run_id,
        pipeline=tags.get("raymlops.pipeline", ""),
        status=tags.get(STATUS_TAG, run.info.status.lower()),
        started_at=run.info.start_time / 1000 if run.info.start_time else None,
        ended_at=run.info.end_time / 1000 if run.info.end_time else None,
        steps=steps,
        error=tags.get("raymlops.error"),
    )


def _latest_per_step(runs: Iterable[Any]) -> list[LineageStep]:
    # A resumed run holds the failed attempt and the retry of a step: the later one is the record.
    latest: dict[str, Any] = {}
    for run in runs:
        latest[run.data.tags.get("raymlops.step", run.info.run_name)] = run
    steps = []
    for name, run in sorted(latest.items(), key=lambda kv: kv[1].info.start_time or 0):
        t = run.data.tags
        steps.append(
            LineageStep(
                name=name,
                component=t.get("raymlops.component", ""),
                version=t.get("raymlops.component_version", ""),
                status=t.get(STATUS_TAG, ""),
                fingerprint=t.get("raymlops.fingerprint", ""),
                cache_hit=t.get("raymlops.cache_hit") == "true",
                cached_from=t.get("raymlops.cached_from"),
                mlflow_run_id=run.info.run_id,
                params=dict(run.data.params),
                inputs=_grouped(t, "input."),
                artifacts=_grouped(t, "artifact."),
                values={k[len("output.") :]: v for k, v in t.items() if k.startswith("output.")},
            )
        )
    return steps


def _grouped(tags: Mapping[str, str], prefix: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(prefix):
            name, _, attr = key[len(prefix) :].rpartition(".")
            if name:
                out.setdefault(name, {})[attr] = value
    return out


def _data_snapshot(steps: Sequence[LineageStep]) -> list[dict[str, str]]:
    data = []
    for step in steps:
        for arg, inp in step.inputs.items():
            if inp.get("ref") == "external":
                data.append({"from": f"{step.name}.{arg}", **inp})
        if not any(i.get("ref") not in (None, "external") for i in step.inputs.values()):
            data += [
                {"from": f"{step.name}.{n}", **a}
                for n, a in step.artifacts.items()
                if a.get("kind") == "dataset"
            ]
    return data
