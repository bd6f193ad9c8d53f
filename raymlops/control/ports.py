"""The real ports of the controller shell: state file, pipeline runs as Ray tasks, Ray Serve, the MLflow registry,
the prediction and feedback logs, the monitor task, a webhook and the schema versions. Each is small; the logic lives in
``raymlops.control.controller`` and the pure modules beside it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from raymlops import storage
from raymlops.config import Config
from raymlops.control.blocking import DataBlock
from raymlops.control.canary import WindowStats, window_stats
from raymlops.control.controller import DATA_VALIDATION, MonitorSignal, Ports, RunOutcome
from raymlops.control.state import ExposureTested, LogEntry
from raymlops.control.statefile import FileStateStore, controller_dir, state_uri
from raymlops.control.webhook import WebhookNotifier  # the notifier port (signed, allow-listed POSTs)
from raymlops.errors import DataError, DataValidationError

__all__ = ["build_ports"]


# -------------------------------------------------------------------------------------------------- runs
def run_pipeline_task(cfg_doc: dict[str, Any], run_id: str, resume: bool) -> dict[str, Any]:
    """Body of the Ray task that drives one pipeline run (its steps start their own Ray work)."""
    cfg = Config.model_validate(cfg_doc)
    from raymlops.pipeline.delivery import import_pipeline

    fn = import_pipeline(cfg.controller.pipeline)
    # A run recorded but never launched (the controller died in between) has nothing to resume: start it anew.
    resume = resume and storage.exists(storage.join(cfg.storage_uri, "runs", run_id, "run.json"))
    log_uri = storage.join(controller_dir(cfg), "runs", f"{run_id}.log")
    local = storage.is_local(log_uri)
    if local:
        storage.makedirs(storage.join(controller_dir(cfg), "runs"))

    def progress(msg: str) -> None:
        line = f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} {msg}\n"
        if local:
            with open(storage.resolve(log_uri)[1], "a", encoding="utf-8") as f:
                f.write(line)
        print(line, end="", flush=True)

    result = fn(cfg, run_id=None if resume else run_id, resume_run_id=run_id if resume else None, progress=progress)
    version = getattr(result, "version", None)
    gate = _gate_error(result)
    return {"run_id": str(result.run_id), "status": str(result.status),
            "version": None if version is None else str(version), "error": getattr(result, "error", None),
            "blocked_by": DATA_VALIDATION if isinstance(gate, DataValidationError) else None,
            "report_uri": getattr(gate, "report_uri", None)}


def _gate_error(result: Any) -> BaseException | None:
    # A CTResult keeps the pipeline's result in .pipeline, a PipelineResult is one: the exception that stopped the
    # run is read here, in the task, because its report URI does not survive the trip as text.
    exc = getattr(result, "exception", None)
    if exc is None:
        exc = getattr(getattr(result, "pipeline", None), "exception", None)
    return exc if isinstance(exc, BaseException) else None


class RayRunner:
    """Each pipeline run is a Ray task owned by the controller actor (it dies with the actor; a restart resumes).

    The task runs with the environment's deployed pipeline implementation as its working directory; which one
    a run uses is recorded beside its log before it starts, so a resumed run keeps its implementation.
    """

    def __init__(self, cfg: Config):
        import ray

        self.cfg = cfg
        self._remote = ray.remote(run_pipeline_task)
        self._refs: dict[str, Any] = {}
        self._impls: dict[str, str | None] = {}

    def start(self, run_id: str, resume: bool) -> None:
        from raymlops.pipeline import delivery

        record = storage.join(controller_dir(self.cfg), "runs", f"{run_id}.json")
        if resume and storage.exists(record):
            digest = json.loads(storage.read_text(record))["impl"]
            impl = None if digest is None else delivery.get_implementation(self.cfg, digest)
        else:
            impl = delivery.current_implementation(self.cfg)
            storage.atomic_write_text(record, json.dumps({"impl": impl.digest if impl else None}))
        self._impls[run_id] = impl.digest if impl else None
        self._refs[run_id] = self._remote.options(
            name=f"pipeline-run:{run_id}", num_cpus=self.cfg.controller.run_num_cpus, max_retries=0,
            runtime_env=delivery.runtime_env_for(self.cfg, impl),
        ).remote(self.cfg.model_dump(mode="json"), run_id, resume)

    def poll(self, run_id: str) -> RunOutcome | None:
        import ray

        ref = self._refs.get(run_id)
        if ref is None or not ray.wait([ref], timeout=0)[0]:
            return None
        del self._refs[run_id]
        impl = self._impls.pop(run_id, None)
        try:
            return RunOutcome(**ray.get(ref), impl=impl)
        except Exception as err:  # noqa: BLE001 - the run failed outside its own error handling
            cause = getattr(err, "cause", None) or err
            return RunOutcome(run_id, "failed", None, f"{type(cause).__name__}: {cause}", impl=impl)

    def active(self, run_id: str) -> bool:
        return run_id in self._refs


# ------------------------------------------------------------------------------------------------ serving
class ServeWeights:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def apply(self, weights: dict[str, float]) -> None:
        from raymlops.serve import deploy

        if deploy.is_deployed(self.cfg):
            live = deploy.live_routing(self.cfg)
            serving = None if live is None else {v: w for v, w in live["weights"].items() if w > 0}
            if serving == weights and live["shadow"] is None:
                return  # a restarted controller re-asserting the split must not disturb serving
            deploy.set_weights(self.cfg, weights)
        else:
            deploy.deploy(self.cfg, weights=weights)


# ----------------------------------------------------------------------------------------------- registry
class RegistryPort:
    def __init__(self, cfg: Config):
        from raymlops.registry.models import ModelRegistry

        self.name, self.registry = cfg.name, ModelRegistry(cfg.tracking_uri)

    def aliases(self) -> dict[str, str]:
        found = self.registry.find_aliases(self.name)
        return {k: str(v) for k, v in (found or {}).items()}

    def promote(self, version: str) -> None:
        self.registry.promote(self.name, version)

    def record_decision(self, version: str, entry: LogEntry) -> None:
        at = dt.datetime.fromtimestamp(entry.at, dt.timezone.utc).isoformat(timespec="seconds")
        self.registry.tag_version(self.name, version, f"raymlops.decision.{entry.seq:06d}",
                                  f"{at} {entry.kind}: {entry.message}")


# -------------------------------------------------------------------------------------------- observation
class LogObserver:
    """New files under the landing URI; per-version window statistics from the prediction and feedback logs."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._classes: dict[str, list[Any] | None] = {}

    def files(self) -> frozenset[str] | None:
        from raymlops.data.ingest import data_files

        landing = self.cfg.triggers.landing_uri or self.cfg.data.source
        try:
            return frozenset(data_files(landing, self.cfg.data.format))  # a listing: no file opened per poll
        except DataError:
            return frozenset()  # nothing landed yet (or unreadable): nothing new either

    def window(self, version: str, start: float, end: float, labels_since: float) -> WindowStats:
        from raymlops.control.monitor import log_uris, read_window
        from raymlops.serve.predlog import FEEDBACK_SCHEMA, PREDICTION_SCHEMA, join_feedback

        predictions_uri, feedback_uri = log_uris(self.cfg)
        first = min(start, labels_since)
        preds = read_window(predictions_uri, PREDICTION_SCHEMA, first, end)
        feedback = read_window(feedback_uri, FEEDBACK_SCHEMA, first, end)
        return window_stats(preds, join_feedback(preds, feedback), version, start, end,
                            self.cfg.evaluation.primary_metric, self.cfg.data.task,
                            classes=self._classes_of(version), labels_since=labels_since)

    def _classes_of(self, version: str) -> list[Any] | None:
        if version not in self._classes:
            from raymlops.registry.models import ModelRegistry

            info = ModelRegistry(self.cfg.tracking_uri).get(self.cfg.name, version)
            sig = json.loads(storage.read_text(storage.join(info.package_uri, "signature.json")))
            self._classes[version] = sig.get("classes") or None
        return self._classes[version]


# --------------------------------------------------------------------------------------------- monitoring
def monitor_task(cfg_doc: dict[str, Any], champion: str | None, roles: dict[str, str], timeline: list,
                 history: list) -> dict[str, Any]:
    from raymlops.control.monitor import run_monitor

    result = run_monitor(Config.model_validate(cfg_doc), champion=champion, roles=roles,
                         weights_timeline=[(t, w) for t, w in timeline], history=history)
    return result.to_dict()


class RayMonitor:
    """One monitor pass at a time, as a Ray task; its result feeds the drift and degradation triggers."""

    def __init__(self, cfg: Config, say: Callable[[str], None]):
        import ray

        self.cfg, self.say = cfg, say
        self._remote = ray.remote(num_cpus=0.1, max_retries=0)(monitor_task)
        self._ref = None

    def start(self, champion: str | None, roles: dict[str, str], timeline: list, history: list) -> None:
        if self._ref is None:
            self._ref = self._remote.remote(self.cfg.model_dump(mode="json"), champion, roles, timeline, history)

    def poll(self) -> MonitorSignal | None:
        import ray

        if self._ref is None or not ray.wait([self._ref], timeout=0)[0]:
            return None
        ref, self._ref = self._ref, None
        try:
            doc = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - a failed pass is reported; the next one retries
            self.say(f"monitor pass failed: {getattr(err, 'cause', None) or err}")
            return None
        from raymlops.control.monitor import MonitorResult

        result = MonitorResult.from_dict(doc)
        return MonitorSignal(result.champion, result.drift, result.drift_reference, result.quality, result.at, doc)


# ------------------------------------------------------------------------------------------ notifications
# WebhookNotifier lives in raymlops.control.webhook (imported above): target policy, signing, redaction.


# ------------------------------------------------------------------------------------------ schema versions
class SchemaPort:
    """The schema version in force, and what a STOP report says, for the controller's parked data."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def version(self) -> int | None:
        from raymlops.data.schemas import latest_schema_version

        return latest_schema_version(self.cfg)

    def blocked(self, report_uri: str | None) -> DataBlock:
        from raymlops.data.schemas import accept_hint

        if report_uri is None:
            return DataBlock(None, self.version(), note="the run left no validation report")
        doc = json.loads(storage.read_text(report_uri))
        anomalies = [a for a in doc.get("anomalies", []) if isinstance(a, dict)]
        version = doc.get("schema_version")
        accept = accept_hint(report_uri)
        # Review first: `schema diff` takes the same arguments as the accept command that owns their syntax.
        diff = accept.replace("raymlops schema accept ", "raymlops schema diff ", 1)
        return DataBlock(report_uri, int(version) if version is not None else self.version(),
                         tuple(anomalies), (diff, accept))


# ------------------------------------------------------------------------------ delivery and pre-exposure
class PreExposurePort:
    def __init__(self, cfg: Config, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say

    def test(self, version: str, champion: str | None) -> ExposureTested:
        from raymlops.control.preexposure import run_pre_exposure

        self.say(f"pre-exposure tests of version {version}")
        result = run_pre_exposure(self.cfg, version, champion=champion)  # raising blocks it (Controller)
        return ExposureTested(version, result.passed, tuple(result.reasons()),
                              tuple(result.to_dict()["checks"]))


class DeliveryPort:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def run_finished(self, outcome: RunOutcome) -> list[tuple[str, str]]:
        from raymlops.pipeline.delivery import on_run_finished

        registered = outcome.status == "completed" and outcome.version is not None
        return on_run_finished(self.cfg, outcome.impl, registered)


def build_ports(cfg: Config, say: Callable[[str], None]) -> Ports:
    """The real ports for ``cfg`` (call inside Ray: the runner and the monitor start Ray tasks)."""
    return Ports(store=FileStateStore(state_uri(cfg)), runner=RayRunner(cfg), serving=ServeWeights(cfg),
                 registry=RegistryPort(cfg), observer=LogObserver(cfg), notifier=WebhookNotifier(cfg, say),
                 monitor=RayMonitor(cfg, say), exposure=PreExposurePort(cfg, say), pipelines=DeliveryPort(cfg),
                 schemas=SchemaPort(cfg))
