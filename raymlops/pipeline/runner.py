"""Run a pipeline: steps in dependency order as Ray tasks (or on the driver), with a fingerprint cache, resume
and an MLflow record.

Storage layout (``storage_uri`` may be a local path or any pyarrow URI shared by the cluster)::

    {storage_uri}/runs/{run_id}/run.json          the run record: status and each step's state (atomic rewrites)
    {storage_uri}/runs/{run_id}/{step}/            the step's outputs (cleared before it runs, deleted on failure)
    {storage_uri}/cache/index/{fingerprint}.json   outputs of a completed step, by fingerprint

A step is complete only once ``run.json`` says so; a failed run's record says ``failed`` or ``blocked`` and
``resume_run_id`` re-runs exactly the steps that did not complete.

Where Ray Train and Tune steps run: on the driver (``executor="driver"``). ``TorchTrainer.fit()`` and
``Tuner.fit()`` only wait: their controller (a 0-CPU actor pinned to the calling node) and workers are actors with
their own resources, so a task around them would hold a CPU slot doing nothing, and on a small cluster (2 CPUs, two
0.5-CPU workers) that slot can starve the trainer. On the driver's main thread Train and Tune also register their
Ctrl-C handlers (graceful abort; they do so only on the main thread), and their results reach MLflow from the
driver as the rules ask. A ``num_cpus=0`` task works too and is allowed, without those properties.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raymlops import storage
from raymlops.core import fingerprint as fpr
from raymlops.errors import GateError, PipelineError
from raymlops.pipeline._execute import Outcome, ProgressSink, execute, run_here
from raymlops.pipeline.component import Artifact, Component, Pipeline, StepContext, digest_uri

if TYPE_CHECKING:
    from raymlops.registry.tracking import MetadataStore

Progress = Callable[[str], None]
_POLL_S = 0.25


@dataclass
class StepResult:
    """One step's outcome: ``completed``, ``cached`` (not executed: reused), ``failed``, ``blocked``, ``skipped``."""

    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    duration_s: float = 0.0
    cache_hit: bool = False
    error: str | None = None
    cached_from: str | None = None
    exception: BaseException | None = field(default=None, repr=False)


@dataclass
class PipelineResult:
    """A pipeline run: ``status`` is ``completed``, ``failed`` or ``blocked`` (a GateError stopped it).

    ``outputs`` maps ``"step.output"`` to each completed step's Artifact or value.
    """

    run_id: str
    status: str
    steps: dict[str, StepResult]
    outputs: dict[str, Any]
    run_uri: str
    mlflow_run_id: str | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)

    def raise_for_status(self) -> None:
        """Raise the GateError that blocked the run, or a PipelineError if it failed."""
        if self.status == "blocked" and isinstance(self.exception, GateError):
            raise self.exception
        if self.status != "completed":
            raise PipelineError(
                f"pipeline run {self.run_id} {self.status}: {self.error}; fix it and resume with "
                f"`raymlops run CONFIG --resume {self.run_id}` (details in {self.run_uri})"
            )


def run_pipeline(
    pipeline: Pipeline,
    *,
    storage_uri: str,
    tracking_uri: str | None,
    experiment: str | None = None,
    params: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    progress: Progress | None = print,
    tags: Mapping[str, str] | None = None,
    config: Any = None,
    in_process: bool = False,
    run_id: str | None = None,
) -> PipelineResult:
    """Run ``pipeline`` and return its result; step failures are in the result, not raised.

    ``run_id`` names a new run in advance (a controller records it before starting, so that after a crash it can
    resume the same run instead of starting a second one); by default one is generated.

    ``params`` overrides step arguments as ``{"step.arg": value}``. ``config`` (a raymlops Config) is handed to
    every step as ``ctx.config``. ``tracking_uri=None`` skips MLflow. Ray must already be initialised (the CLI
    does it) unless ``in_process=True``, which runs every step in this process (tests, debugging).
    """
    overrides = _overrides(pipeline, params or {})
    _check_arguments(pipeline, overrides)
    for step in pipeline.steps.values():
        _config_part(step.component, config)  # a wrong config_keys path fails now, not mid-run
    if not in_process and any(s.component.executor == "task" for s in pipeline.steps.values()):
        import ray

        if not ray.is_initialized():
            raise PipelineError(
                f"pipeline {pipeline.name!r} runs steps as Ray tasks but Ray is not initialised; call ray.init() "
                "first (the raymlops CLI does), or pass in_process=True to run every step in this process"
            )
    storage_uri = storage.absolute(storage_uri)
    if resume_run_id:
        record = _load_record(storage_uri, resume_run_id, pipeline)
    else:
        record = _new_record(storage_uri, pipeline, experiment or pipeline.name, params or {}, tags or {}, run_id)
    store = None
    if tracking_uri:
        from raymlops.registry.tracking import MetadataStore  # MLflow takes seconds to import: only when used

        store = MetadataStore(tracking_uri)
    run = _Run(pipeline, record, storage_uri, overrides, store, tracking_uri, progress, config, in_process)
    run.open(params or {}, tags or {})
    try:
        run.execute()
    except BaseException as exc:
        run.abort(exc)
        raise
    return run.close()


# -------------------------------------------------------------------------------------------- the run
@dataclass
class _Launch:
    name: str
    ref: Any
    fingerprint: str
    started: float
    params: dict[str, Any]
    inputs: dict[str, dict[str, str]]


class _Run:
    def __init__(
        self,
        pipeline: Pipeline,
        record: dict[str, Any],
        storage_uri: str,
        overrides: dict[str, dict[str, Any]],
        store: MetadataStore | None,
        tracking_uri: str | None,
        progress: Progress | None,
        config: Any,
        in_process: bool,
    ):
        self.p, self.record, self.storage_uri = pipeline, record, storage_uri
        self.overrides, self.store, self.tracking_uri = overrides, store, tracking_uri
        self.echo: Progress = progress or (lambda _line: None)
        self.config, self.in_process = config, in_process
        self.run_id: str = record["run_id"]
        self.prior: dict[str, Any] = dict(record["steps"])  # what a resumed run had recorded
        self.results: dict[str, StepResult] = {}
        self.failed: str | None = None
        self.sink: Any = None
        self.remote: Any = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def open(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        resumed = self.record.get("attempts", 0) > 0
        self.record.update(status="running", error=None, attempts=self.record.get("attempts", 0) + 1)
        if resumed:
            self.record["params"] = {**self.record.get("params", {}), **params}
        if self.store is not None:
            if self.record.get("mlflow_run_id"):
                self.store.reopen_pipeline_run(self.record["mlflow_run_id"], params)
            else:
                self.record["mlflow_run_id"] = self.store.start_pipeline_run(
                    self.record["experiment"],
                    pipeline=self.p.name,
                    pipeline_run_id=self.run_id,
                    params=params,
                    tags={**tags, "raymlops.run_uri": self._run_dir()},
                    artifact_location=storage.join(self.storage_uri, "mlflow-artifacts"),
                )
        self._save()
        verb = "resuming" if resumed else "starting"
        self.echo(f"{verb} pipeline {self.p.name!r} run {self.run_id} ({len(self.p.order)} steps)")

    def execute(self) -> None:
        if not self.in_process and any(self.p.steps[n].component.executor == "task" for n in self.p.order):
            import ray

            self.sink = ray.remote(num_cpus=0)(ProgressSink).remote()
            self.remote = ray.remote(execute)
        try:
            self._loop()
        finally:
            if self.sink is not None:
                self._drain()
                import ray

                ray.kill(self.sink)

    def close(self) -> PipelineResult:
        status = "completed"
        error = exc = None
        if self.failed is not None:
            res = self.results[self.failed]
            status = (
                "blocked" if isinstance(res.exception, GateError) or res.status == "blocked" else "failed"
            )
            error, exc = f"step {self.failed!r}: {res.error}", res.exception
        self.record.update(status=status, error=error)
        self._save()
        if self.store is not None and self.record.get("mlflow_run_id"):
            steps = {n: r.status for n, r in self.results.items()}
            self.store.end_pipeline_run(self.record["mlflow_run_id"], status, steps, error)
        done = sum(r.status in ("completed", "cached") for r in self.results.values())
        self.echo(
            f"pipeline {self.p.name!r} run {self.run_id} {status} ({done}/{len(self.p.order)} steps)"
            + (f": {error}" if error else "")
        )
        outputs = {
            f"{n}.{k}": v
            for n, r in self.results.items()
            if r.status in ("completed", "cached")
            for k, v in r.outputs.items()
        }
        return PipelineResult(
            self.run_id,
            status,
            dict(self.results),
            outputs,
            self._run_dir(),
            self.record.get("mlflow_run_id"),
            error,
            exc,
        )

    def abort(self, exc: BaseException) -> None:
        # Interrupted or broken mid-run: never leave a record that says running or looks finished.
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        self.record.update(status="failed", error=f"runner stopped: {reason}")
        try:
            self._save()
            if self.store is not None and self.record.get("mlflow_run_id"):
                steps = {n: r.status for n, r in self.results.items()}
                self.store.end_pipeline_run(
                    self.record["mlflow_run_id"], "failed", steps, self.record["error"]
                )
        except Exception:  # the original error matters more than a failure to record it
            pass

    # ---------------------------------------------------------------------------------------- scheduling
    def _loop(self) -> None:
        waiting = list(self.p.order)
        running: dict[Any, _Launch] = {}
        try:
            while True:
                started = True
                while started and self.failed is None:
                    started = False
                    for name in [n for n in waiting if all(self._ok(d) for d in self.p.deps[n])]:
                        waiting.remove(name)
                        started = True
                        launch = self._start(name)
                        if launch is not None:
                            running[launch.ref] = launch
                        if self.failed is not None:
                            break
                if not running:
                    break
                import ray

                ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_S)
                self._drain()
                for ref in ready:
                    self._finish_task(running.pop(ref), ref)
        except BaseException:
            if running:
                import ray

                for ref in running:
                    ray.cancel(ref)
            raise
        for name in waiting:
            self.results[name] = StepResult(status="skipped")
            self.record["steps"][name] = {"status": "skipped"}
        self._save()

    def _ok(self, name: str) -> bool:
        res = self.results.get(name)
        return res is not None and res.status in ("completed", "cached")

    def _start(self, name: str) -> _Launch | None:
        step = self.p.steps[name]
        comp = step.component
        kwargs, inputs, digests = self._inputs(name)
        params = {**step.params, **self.overrides.get(name, {})}
        kwargs.update(params)
        fp = fpr.fingerprint(
            component=comp.name,
            version=comp.version,
            code_hash=comp.code_hash,
            params=params,
            input_digests=digests,
            extra={"config": _config_part(comp, self.config), "runtime_env": comp.runtime_env},
        )
        if self._reuse(name, fp, params, inputs):
            return None
        started = time.time()
        self.record["steps"][name] = {"status": "running", "fingerprint": fp, "started_at": started}
        self._save()
        ctx = StepContext(
            step=name,
            pipeline=self.p.name,
            run_id=self.run_id,
            storage_uri=self.storage_uri,
            output_dir=storage.join(self._run_dir(), name),
            fingerprint=fp,
            config=self.config,
            tracking_uri=self.tracking_uri,
            mlflow_run_id=self.record.get("mlflow_run_id"),
        )
        if self.in_process or comp.executor == "driver":
            where = "driver" if comp.executor == "driver" else "in process"
            if self.in_process and comp.runtime_env:
                self.echo(f"[{name}] in process: runtime_env {sorted(comp.runtime_env)} is not applied")
            self.echo(f"[{name}] started ({where})")
            ctx._echo = self.echo
            launch = _Launch(name, None, fp, started, params, inputs)
            self._finish(
                launch, run_here(comp, ctx, kwargs), "driver" if comp.executor == "driver" else "in_process"
            )
            return None
        ctx._sink = self.sink
        options: dict[str, Any] = {
            "num_cpus": comp.num_cpus,
            "num_gpus": comp.num_gpus,
            "name": f"{self.p.name}.{name}",
        }
        if comp.memory is not None:
            options["memory"] = comp.memory
        if comp.runtime_env:
            options["runtime_env"] = dict(comp.runtime_env)
        self.echo(
            f"[{name}] started (Ray task, {comp.num_cpus:g} CPU"
            + (f", {comp.num_gpus:g} GPU)" if comp.num_gpus else ")")
        )
        ref = self.remote.options(**options).remote(comp, ctx, kwargs)
        return _Launch(name, ref, fp, started, params, inputs)

    def _finish_task(self, launch: _Launch, ref: Any) -> None:
        import ray
        from ray.exceptions import RayError

        try:
            outcome = ray.get(ref)
        except RayError as err:
            # The worker died, the runtime_env could not be built, or the task was cancelled.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            outcome = Outcome(ok=False, error=f"{type(err).__name__}: {first}", traceback=str(err))
            if "RuntimeEnv" in type(err).__name__:
                outcome.error += "; check the component's runtime_env (pip packages, working_dir, env_vars)"
        self._finish(launch, outcome, "task")

    def _finish(self, launch: _Launch, outcome: Outcome, executor: str) -> None:
        name, comp = launch.name, self.p.steps[launch.name].component
        ended = time.time()
        duration = ended - launch.started
        if outcome.ok:
            status = "completed"
            self.echo(f"[{name}] completed in {duration:.1f}s")
        else:
            status = "blocked" if outcome.gate else "failed"
            self.echo(f"[{name}] {status}: {outcome.error} (traceback in {self._record_uri()})")
            if self.failed is None:
                self.failed = name
        result = StepResult(
            status,
            outcome.outputs,
            launch.fingerprint,
            duration,
            False,
            outcome.error,
            exception=outcome.exception,
        )
        self.results[name] = result
        entry = {
            "status": status,
            "fingerprint": launch.fingerprint,
            "component": comp.name,
            "version": comp.version,
            "executor": executor,
            "started_at": launch.started,
            "ended_at": ended,
            "duration_s": round(duration, 3),
            "cache_hit": False,
            "outputs": _dump_outputs(outcome.outputs),
            "error": None if outcome.ok else {"message": outcome.error, "traceback": outcome.traceback},
        }
        self.record["steps"][name] = entry
        self._save()
        if outcome.ok and comp.cache:
            self._write_index(name, launch.fingerprint, outcome.outputs)
        entry["mlflow_run_id"] = self._log(launch, result, executor, ended, outcome)
        self._save()

    def _reuse(self, name: str, fp: str, params: dict[str, Any], inputs: dict[str, dict[str, str]]) -> bool:
        comp = self.p.steps[name].component
        prior = self.prior.get(name, {})
        if prior.get("status") in ("completed", "cached") and prior.get("fingerprint") == fp:
            # Resumed run: the step already finished in an earlier attempt of this run; its record stands as is.
            outputs = _load_outputs(prior["outputs"])
            if _outputs_exist(outputs):
                self.results[name] = StepResult(
                    prior["status"],
                    outputs,
                    fp,
                    prior.get("duration_s", 0.0),
                    prior.get("cache_hit", False),
                    cached_from=prior.get("cached_from"),
                )
                self.record["steps"][name] = prior
                self.echo(f"[{name}] {prior['status']} in an earlier attempt; reusing its outputs")
                return True
        if not comp.cache:
            return False
        index = storage.join(self.storage_uri, "cache", "index", f"{fp}.json")
        if not storage.exists(index):
            return False
        entry = _json_loads(storage.read_text(index), index)
        outputs, source = _load_outputs(entry["outputs"]), entry["run_id"]
        if not _outputs_exist(outputs):
            self.echo(f"[{name}] cached outputs of run {source} are gone; running again")
            return False
        now = time.time()
        self.results[name] = StepResult("cached", outputs, fp, 0.0, True, cached_from=source)
        record = {
            "status": "cached",
            "fingerprint": fp,
            "component": comp.name,
            "version": comp.version,
            "started_at": now,
            "ended_at": now,
            "duration_s": 0.0,
            "cache_hit": True,
            "cached_from": source,
            "outputs": _dump_outputs(outputs),
            "error": None,
        }
        self.record["steps"][name] = record
        self.echo(f"[{name}] cached (fingerprint {fp[:12]}, outputs of run {source})")
        launch = _Launch(name, None, fp, now, params, inputs)
        record["mlflow_run_id"] = self._log(launch, self.results[name], comp.executor, now, Outcome(ok=True))
        self._save()
        return True

    def _inputs(self, name: str) -> tuple[dict[str, Any], dict[str, dict[str, str]], dict[str, str]]:
        kwargs: dict[str, Any] = {}
        meta: dict[str, dict[str, str]] = {}
        digests: dict[str, str] = {}
        for arg, source in self.p.steps[name].inputs.items():
            if isinstance(source, Artifact):
                value = (
                    source
                    if source.digest
                    else Artifact(source.uri, source.kind, digest_uri(source.uri), source.metadata)
                )
                ref = "external"
            else:
                up, out = self.p.edges[name][arg]
                value, ref = self.results[up].outputs[out], f"{up}.{out}"
            kwargs[arg] = value
            if isinstance(value, Artifact):
                digests[arg] = value.digest
                meta[arg] = {"ref": ref, "uri": value.uri, "digest": value.digest, "kind": value.kind}
            else:
                digests[arg] = fpr.digest_value(value, f"input {arg!r} of step {name!r}")
                meta[arg] = {"ref": ref, "digest": digests[arg]}
        return kwargs, meta, digests

    # -------------------------------------------------------------------------------------------- records
    def _log(
        self, launch: _Launch, result: StepResult, executor: str, ended: float, outcome: Outcome
    ) -> str | None:
        parent = self.record.get("mlflow_run_id")
        if self.store is None or not parent:
            return None
        from raymlops.registry.tracking import StepRecord

        comp = self.p.steps[launch.name].component
        artifacts = {k: v.to_dict() for k, v in result.outputs.items() if isinstance(v, Artifact)}
        record = StepRecord(
            pipeline_run_id=self.run_id,
            step=launch.name,
            component=comp.name,
            component_version=comp.version,
            code_hash=comp.code_hash,
            fingerprint=launch.fingerprint,
            status=result.status,
            executor=executor,
            started_at=launch.started,
            ended_at=ended,
            cache_hit=result.cache_hit,
            cached_from=result.cached_from,
            params=launch.params,
            metrics=outcome.metrics,
            inputs=launch.inputs,
            artifacts={
                k: {"uri": a["uri"], "kind": a["kind"], "digest": a["digest"]} for k, a in artifacts.items()
            },
            values={k: v for k, v in result.outputs.items() if not isinstance(v, Artifact)},
            host=outcome.host or None,
            error=outcome.error,
            traceback=outcome.traceback,
            files=outcome.files,
            trials=outcome.trials,
        )
        return self.store.log_step(parent, record)

    def _write_index(self, name: str, fp: str, outputs: dict[str, Any]) -> None:
        if not _outputs_exist(outputs):  # deleted while we were recording: an index entry would lie
            return
        entry = {
            "fingerprint": fp,
            "run_id": self.run_id,
            "step": name,
            "created_at": time.time(),
            "outputs": _dump_outputs(outputs),
        }
        storage.atomic_write_text(
            storage.join(self.storage_uri, "cache", "index", f"{fp}.json"), fpr.canonical_json(entry)
        )

    def _drain(self) -> None:
        if self.sink is None:
            return
        import ray
        from ray.exceptions import RayError

        try:
            lines = ray.get(self.sink.drain.remote())
        except RayError as err:  # losing progress lines must not lose the run
            self.echo(f"progress from Ray tasks is no longer shown: {type(err).__name__}")
            self.sink = None
            return
        for line in lines:
            self.echo(line)

    def _run_dir(self) -> str:
        return storage.join(self.storage_uri, "runs", self.run_id)

    def _record_uri(self) -> str:
        return storage.join(self._run_dir(), "run.json")

    def _save(self) -> None:
        self.record["updated_at"] = time.time()
        storage.atomic_write_text(self._record_uri(), fpr.canonical_json(self.record, "the run record"))


# ------------------------------------------------------------------------------------------------ helpers
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _new_record(
    storage_uri: str, pipeline: Pipeline, experiment: str, params: Mapping[str, Any], tags: Mapping[str, str],
    run_id: str | None = None,
) -> dict[str, Any]:
    if run_id is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run_id = f"{pipeline.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    elif not _RUN_ID.fullmatch(run_id):
        raise PipelineError(f"run_id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-' (it names a directory)")
    elif storage.exists(storage.join(storage_uri, "runs", run_id, "run.json")):
        raise PipelineError(f"run {run_id!r} already exists under {storage_uri}; pass resume_run_id={run_id!r} to "
                            "continue it, or choose a new run_id")
    return {
        "format": 1,
        "run_id": run_id,
        "pipeline": pipeline.name,
        "experiment": experiment,
        "status": "running",
        "created_at": time.time(),
        "params": dict(params),
        "tags": dict(tags),
        "mlflow_run_id": None,
        "attempts": 0,
        "steps": {},
    }


def _load_record(storage_uri: str, run_id: str, pipeline: Pipeline) -> dict[str, Any]:
    uri = storage.join(storage_uri, "runs", run_id, "run.json")
    if not storage.exists(uri):
        raise PipelineError(
            f"cannot resume run {run_id!r}: {uri} does not exist; list runs with `raymlops runs` and check "
            "that storage_uri is the one the run used"
        )
    record = _json_loads(storage.read_text(uri), uri)
    if record.get("pipeline") != pipeline.name:
        raise PipelineError(
            f"cannot resume run {run_id!r}: it belongs to pipeline {record.get('pipeline')!r}, not {pipeline.name!r}"
        )
    return record


def _json_loads(text: str, uri: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError as err:
        raise PipelineError(f"{uri} is not valid JSON ({err}); delete it to start afresh") from None


def _overrides(pipeline: Pipeline, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        step_name, _, arg = key.partition(".")
        if not arg or step_name not in pipeline.steps:
            raise PipelineError(
                f"run parameter {key!r}: write 'step.argument' with one of the steps {pipeline.order}"
            )
        step = pipeline.steps[step_name]
        names, _, var_kw = step.component.accepts()
        if arg in step.inputs or (arg not in names and not var_kw):
            raise PipelineError(
                f"run parameter {key!r}: {step.component.name}() has no parameter {arg!r}"
                + (
                    " (it is an input fed by another step)"
                    if arg in step.inputs
                    else f"; it accepts {sorted(names)}"
                )
            )
        out.setdefault(step_name, {})[arg] = value
    return out


def _check_arguments(pipeline: Pipeline, overrides: Mapping[str, Mapping[str, Any]]) -> None:
    # Every mistake the definition allows shows up here, before any cluster time is spent.
    for name in pipeline.order:
        step = pipeline.steps[name]
        _, required, _ = step.component.accepts()
        params = {**step.params, **overrides.get(name, {})}
        missing = sorted(required - set(step.inputs) - set(params))
        if missing:
            raise PipelineError(
                f"step {name!r}: {step.component.name}() needs {missing}; give them in Step(inputs=...) or "
                f"Step(params=...), or as run parameters {[f'{name}.{m}' for m in missing]}"
            )
        fpr.canonical_json(params, f"params of step {name!r}")


def _config_part(comp: Component, config: Any) -> Any:
    if config is None or comp.config_keys == ():
        return None
    doc = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    if comp.config_keys is None:
        return doc
    part = {}
    for key in comp.config_keys:
        node = doc
        for seg in key.split("."):
            if not isinstance(node, dict) or seg not in node:
                raise PipelineError(
                    f"component {comp.name!r}: config_keys names {key!r}, which the config does not have; "
                    "use section paths such as 'train' or 'data.split'"
                )
            node = node[seg]
        part[key] = node
    return part


def _dump_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: {"artifact": v.to_dict()} if isinstance(v, Artifact) else {"value": v} for k, v in outputs.items()
    }


def _load_outputs(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: Artifact.from_dict(v["artifact"]) if "artifact" in v else v["value"] for k, v in doc.items()}


def _outputs_exist(outputs: Mapping[str, Any]) -> bool:
    return all(storage.exists(v.uri) for v in outputs.values() if isinstance(v, Artifact))


__all__ = ["PipelineResult", "StepResult", "run_pipeline"]
