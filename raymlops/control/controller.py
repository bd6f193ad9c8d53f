"""The controller shell: feeds the pure state machine (``state.step``) what it observes and carries out its actions.

No Ray and no MLflow here: every side effect goes through a small port (``Ports``), so the shell is unit-tested
with in-memory fakes and the actor (``raymlops.control.actor``) only wires the real ports in. The rules the shell
keeps so that a kill at any point loses nothing:

* the state is persisted after every transition, *before* the actions it calls for are carried out;
* a run's id is recorded (``RunStarted``) before the run is launched, so a restart resumes that run by its id;
* serving is level-triggered: ``SetWeights`` applies the split the *current* state calls for, so an action
  made stale by a later transition cannot undo it, and a restart re-asserts the split;
* promotions and rollbacks stay in progress until the port call returned (``Applied``), so a restart redoes them,
  and the registry's promote converges when repeated;
* data that validation stopped stays parked (``raymlops.control.blocking``): while it is, each trigger poll asks the
  ``schemas`` port which schema version is in force and lists the landing files, and the state machine decides
  whether to retry it;
* pre-exposure tests run on a worker thread, outside the lock (they take seconds: a preview app and a load test),
  so status and commands answer meanwhile; their result is collected by a later ``tick``, and a restart in the
  ``testing`` phase runs them again.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from raymlops.control.blocking import DataBlock
from raymlops.control.canary import CanaryPolicy, WindowStats, analysis_due, analyze
from raymlops.control.state import (
    Action,
    Applied,
    CanaryAnalysis,
    ControllerState,
    DataChecked,
    Event,
    ExposureTested,
    LogEntry,
    Manual,
    Notify,
    Observed,
    PromoteAlias,
    Restarted,
    ResumeRun,
    RunFinished,
    RunStarted,
    SetWeights,
    StartRun,
    TestExposure,
    TriggerFired,
    step,
)
from raymlops.control.statefile import Saved
from raymlops.control.triggers import QualitySignal, TriggerContext, TriggerPolicy, evaluate_triggers
from raymlops.core.drift import DriftResult

__all__ = ["DATA_VALIDATION", "DECISION_KINDS", "Controller", "MonitorSignal", "Ports", "RunOutcome", "Schemas"]

# Events that decide a version's fate: recorded with that version in the registry (its lineage).
DECISION_KINDS = ("canary_started", "canary_advanced", "canary_check_failed", "awaiting_approval", "promoting",
                  "promoted", "rolling_back", "rolled_back")
# ``RunOutcome.blocked_by`` of a run that data validation stopped (the gate whose STOP parks the data).
DATA_VALIDATION = "data_validation"
_TIMELINE_POINTS = 500
_MONITOR_HISTORY = 50


# ------------------------------------------------------------------------------------------------- ports
@dataclass(frozen=True)
class RunOutcome:
    """How a pipeline run ended (``status``: completed | blocked | failed).

    ``blocked_by`` names the gate of a blocked run when it is data validation (``DATA_VALIDATION``), with the
    validation report in ``report_uri``; a model that was not blessed is blocked with both None.
    """

    run_id: str
    status: str
    version: str | None = None
    error: str | None = None
    impl: str | None = None  # digest of the pipeline implementation that ran (None: the installed code)
    blocked_by: str | None = None
    report_uri: str | None = None


@dataclass(frozen=True)
class MonitorSignal:
    """What the trigger policy needs from one monitor pass, plus the pass itself (JSON) for status and reports."""

    champion: str | None
    drift: Sequence[DriftResult] | None
    drift_reference: str
    quality: QualitySignal | None
    at: float
    summary: dict[str, Any] = field(default_factory=dict)


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...
    def save(self, doc: dict[str, Any]) -> None: ...


class Runner(Protocol):
    def start(self, run_id: str, resume: bool) -> None: ...
    def poll(self, run_id: str) -> RunOutcome | None: ...  # None while it runs
    def active(self, run_id: str) -> bool: ...  # launched by this process and not yet collected


class Serving(Protocol):
    def apply(self, weights: dict[str, float]) -> None: ...


class Registry(Protocol):
    def aliases(self) -> dict[str, str]: ...
    def promote(self, version: str) -> None: ...
    def record_decision(self, version: str, entry: LogEntry) -> None: ...


class Observer(Protocol):
    def files(self) -> frozenset[str] | None: ...
    def window(self, version: str, start: float, end: float, labels_since: float) -> WindowStats: ...


class Monitor(Protocol):
    def start(self, champion: str | None, roles: dict[str, str], timeline: list, history: list) -> None: ...
    def poll(self) -> MonitorSignal | None: ...  # a finished pass, once


class Notifier(Protocol):
    def send(self, entry: LogEntry) -> None: ...


class Exposure(Protocol):
    def test(self, version: str, champion: str | None) -> ExposureTested: ...


class Schemas(Protocol):
    def version(self) -> int | None: ...  # the schema version validation uses now (None: none frozen yet)
    def blocked(self, report_uri: str | None) -> DataBlock: ...  # a STOP report's anomalies and the fix commands


class Delivery(Protocol):
    def run_finished(self, outcome: RunOutcome) -> list[tuple[str, str]]: ...  # (kind, message) to log


@dataclass
class Ports:
    store: StateStore
    runner: Runner
    serving: Serving
    registry: Registry
    observer: Observer
    notifier: Notifier
    monitor: Monitor | None = None
    exposure: Exposure | None = None
    pipelines: Delivery | None = None
    schemas: Schemas | None = None


# ------------------------------------------------------------------------------------------------- shell
class Controller:
    """One pipeline's controller. Thread-safe: ``tick`` (the poll loop) and the commands share one lock."""

    def __init__(self, canary: CanaryPolicy, triggers: TriggerPolicy, ports: Ports, *,
                 trigger_interval_s: float = 5.0, monitor_interval_s: float | None = 60.0, pre_exposure: bool = False,
                 clock: Callable[[], float] = time.time, new_run_id: Callable[[], str] | None = None,
                 say: Callable[[str], None] = lambda _msg: None):
        self.canary, self.triggers, self.ports = canary, triggers, ports
        self.trigger_interval_s, self.monitor_interval_s = trigger_interval_s, monitor_interval_s
        self.pre_exposure = pre_exposure
        self.clock, self.say = clock, say
        self.new_run_id = new_run_id or (lambda: f"ctl-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                                         f"{uuid.uuid4().hex[:6]}")
        self._lock = threading.RLock()
        self.state = ControllerState(canary_steps=list(canary.steps))
        self.timeline: list[list[Any]] = []  # [at, weights] each time serving changed
        self.monitor_history: list[dict[str, Any]] = []
        self._signal: MonitorSignal | None = None
        self._last_trigger_at = -math.inf
        self._last_monitor_at = -math.inf
        self._applied: dict[str, float] | None = None
        self._exposure: tuple[str, Future] | None = None  # the version under pre-exposure tests, and their result
        self._exposure_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymlops-exposure")

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the persisted state (or begin from the registry's aliases) and re-issue what is owed."""
        with self._lock:
            doc = self.ports.store.load()
            if doc is None:
                aliases = self.ports.registry.aliases()
                self.state = ControllerState(canary_steps=list(self.canary.steps),
                                             champion=aliases.get("champion"), previous=aliases.get("previous"))
            else:
                saved = Saved.from_doc(doc)
                self.state = ControllerState.from_dict(saved.state)
                self.timeline, self.monitor_history = saved.timeline, saved.monitor
            self.state.pre_exposure = self.pre_exposure  # configuration, not history: the config in force wins
            self._handle(Restarted())

    def tick(self, on_demand: Sequence[str] = ()) -> None:
        """One poll: collect a finished run, judge the canary when due, evaluate triggers, run the monitor."""
        with self._lock:
            now = self.clock()
            self._collect_run()
            self._collect_exposure()
            self._collect_monitor()
            if on_demand or now - self._last_trigger_at >= self.trigger_interval_s:
                self._last_trigger_at = now
                files = self.ports.observer.files()
                self._check_blocked(files)  # first: a retry it starts serves the triggers that fire with it
                self._evaluate_triggers(now, on_demand, files)
            self._analyse(now)
            self._maybe_monitor(now)

    # ------------------------------------------------------------------------------------------- commands
    def trigger(self, request_id: str | None = None) -> str:
        """An on-demand run request (honoured once per ``request_id``); returns the request id."""
        rid = request_id or f"req-{uuid.uuid4().hex[:10]}"
        self.tick(on_demand=[rid])
        return rid

    def command(self, command: str, request_id: str | None = None, version: str | None = None) -> LogEntry | None:
        """An operator command (promote, rollback, pause, resume, approve); returns the last event it logged."""
        with self._lock:
            before = self.state.next_seq
            self._handle(Manual(command, request_id or f"op-{uuid.uuid4().hex[:10]}", version))
            new = [e for e in self.state.events if e.seq >= before]
            return new[0] if new else None

    def status(self) -> dict[str, Any]:
        """A JSON-safe summary: champion, run in flight, queue, rollout, weights, data blocked by validation, last
        monitor pass."""
        with self._lock:
            s = self.state
            return {
                "champion": s.champion, "previous": s.previous, "paused": s.paused,
                "run": s.run.to_dict() if s.run else None, "queue": [t.to_dict() for t in s.queue],
                "rollout": s.rollout.to_dict(), "pending_canary": s.pending_canary, "weights": s.weights(),
                "blocked": s.blocked.to_dict() if s.blocked else None,
                "monitor": self.monitor_history[-1] if self.monitor_history else None,
                "last_event": vars(s.events[-1]) if s.events else None,
            }

    def events(self, since_seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [vars(e) for e in self.state.events if e.seq > since_seq]

    # ------------------------------------------------------------------------------------------ internals
    def _handle(self, event: Event) -> None:
        new, actions = step(self.state, event, self.clock())
        if new is self.state:
            return  # already processed
        self.state = new
        self._save()  # before acting: a crash from here on re-issues the actions on restart
        # Notifications first: they tell of this transition, and the other actions may cause the next one.
        for action in sorted(actions, key=lambda a: not isinstance(a, Notify)):
            self._execute(action)

    def _execute(self, action: Action) -> None:
        if isinstance(action, StartRun):
            run_id = self.new_run_id()
            self._handle(RunStarted(run_id))  # recorded first, so a crash during the launch resumes this id
            if self.state.run is not None and self.state.run.run_id == run_id:
                self.ports.runner.start(run_id, resume=False)
        elif isinstance(action, ResumeRun):
            if not self.ports.runner.active(action.run_id):
                self.say(f"resuming pipeline run {action.run_id}")
                self.ports.runner.start(action.run_id, resume=True)
        elif isinstance(action, SetWeights):
            self._sync_serving()
        elif isinstance(action, PromoteAlias):
            self.ports.registry.promote(action.version)
            self._handle(Applied("promote", action.version))
        elif isinstance(action, TestExposure):
            if self.ports.exposure is None:
                self._handle(ExposureTested(action.version, True))
            elif self._exposure is None or self._exposure[0] != action.version:
                future = self._exposure_pool.submit(self.ports.exposure.test, action.version, action.champion)
                self._exposure = (action.version, future)
        elif isinstance(action, Notify):
            self._notify(action.entry)

    def _sync_serving(self) -> None:
        # Level-triggered: serve what the state calls for now (a later transition may have changed it).
        r = self.state.rollout
        weights = {v: w for v, w in self.state.weights().items() if w > 0}
        if weights and weights != self._applied:
            self.ports.serving.apply(weights)
            self._applied = dict(weights)
            self.timeline = (self.timeline + [[self.clock(), weights]])[-_TIMELINE_POINTS:]
            self._save()
        if r.phase == "rolling_back" and weights and r.canary_version not in weights:
            self._handle(Applied("rollback", r.canary_version))

    def _notify(self, entry: LogEntry) -> None:
        version = entry.data.get("version")
        if entry.kind in DECISION_KINDS and version is not None:
            self._safely(self.ports.registry.record_decision, str(version), entry)
        self._safely(self.ports.notifier.send, entry)

    def _safely(self, fn: Callable[..., Any], *args: Any) -> None:
        # A notification or a lineage note must never stop the loop; the event log keeps the event.
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - reported, never raised
            self.say(f"warning: {getattr(fn, '__qualname__', fn)} failed: {type(err).__name__}: {err}")

    def _collect_run(self) -> None:
        run = self.state.run
        if run is None or run.run_id is None:
            return
        if not self.ports.runner.active(run.run_id):
            # Recorded but not running here: its launch failed, or this process took over; resume it by id.
            self.say(f"relaunching pipeline run {run.run_id}")
            self.ports.runner.start(run.run_id, resume=True)
            return
        outcome = self.ports.runner.poll(run.run_id)
        if outcome is None:
            return
        block = self._data_block(outcome) if outcome.status == "blocked" and outcome.blocked_by == DATA_VALIDATION \
            else None
        self._handle(RunFinished(outcome.run_id, outcome.status, outcome.version, outcome.error, block))
        if self.ports.pipelines is not None:
            for kind, message in self.ports.pipelines.run_finished(outcome):
                self._handle(Observed(kind, message, {"impl": outcome.impl}))

    def _data_block(self, outcome: RunOutcome) -> DataBlock:
        # The block must be recorded even when its report cannot be read: the message then says why.
        block = DataBlock(outcome.report_uri, note=None if outcome.report_uri else "the run left no report")
        if self.ports.schemas is not None:
            try:
                block = self.ports.schemas.blocked(outcome.report_uri)
            except Exception as err:  # noqa: BLE001 - reported in the blocked event
                block = replace(block, note=f"report {outcome.report_uri} unreadable: {type(err).__name__}: {err}")
                self.say(f"warning: {block.note}")
        if block.schema_version is None:
            block = replace(block, schema_version=self._schema_version())
        return replace(block, files=self.ports.observer.files())

    def _schema_version(self) -> int | None:
        if self.ports.schemas is None:
            return None
        try:
            return self.ports.schemas.version()
        except Exception as err:  # noqa: BLE001 - unknown this poll; the next poll asks again
            self.say(f"warning: the schema version in force could not be read: {type(err).__name__}: {err}")
            return None

    def _check_blocked(self, files: frozenset[str] | None) -> None:
        if self.state.blocked is not None:
            self._handle(DataChecked(self._schema_version(), files))

    def _collect_exposure(self) -> None:
        if self._exposure is None or not self._exposure[1].done():
            return
        version, future = self._exposure
        self._exposure = None
        try:
            result = future.result()
        except Exception as err:  # noqa: BLE001 - a test that cannot run must not let the version through
            result = ExposureTested(version, False, (f"the pre-exposure tests could not run: {type(err).__name__}: "
                                                     f"{err}",))
        self._handle(result)  # ignored by the state machine if that version is no longer being tested

    def _evaluate_triggers(self, now: float, on_demand: Sequence[str], files: frozenset[str] | None) -> None:
        sig = self._signal
        current = sig is not None and sig.champion == self.state.champion and sig.champion is not None
        ctx = TriggerContext(
            self.triggers, on_demand=tuple(on_demand), files=files,
            drift=sig.drift if current else None, drift_reference=sig.drift_reference if current else "",
            quality=sig.quality if current else None,
        )
        fired, new_triggers = evaluate_triggers(ctx, self.state.triggers, now)
        if fired or new_triggers != self.state.triggers:
            self._handle(TriggerFired(tuple(fired), new_triggers))

    def _analyse(self, now: float) -> None:
        r = self.state.rollout
        if self.state.paused or not analysis_due(self.canary, r, now):
            return
        start, since = r.window_start, r.started_at if r.started_at is not None else r.window_start
        canary = self.ports.observer.window(r.canary_version, start, now, since)
        # At 100% the champion has no traffic in the window: compare with its traffic since the rollout began.
        champion = self.ports.observer.window(r.champion_version, since if r.weight >= 100 else start, now, since)
        decision, _ = analyze(self.canary, r, canary, champion, now)
        self._handle(CanaryAnalysis(decision))

    def _maybe_monitor(self, now: float) -> None:
        mon = self.ports.monitor
        if mon is None or self.monitor_interval_s is None or now - self._last_monitor_at < self.monitor_interval_s:
            return
        self._last_monitor_at = now
        roles = {v: ("champion" if v == self.state.champion else "canary") for v in self.state.weights()}
        mon.start(self.state.champion, roles, list(self.timeline), list(self.monitor_history))

    def _collect_monitor(self) -> None:
        mon = self.ports.monitor
        signal = mon.poll() if mon is not None else None
        if signal is None:
            return
        self._signal = signal
        self.monitor_history = (self.monitor_history + [signal.summary])[-_MONITOR_HISTORY:]
        self._save()

    def _save(self) -> None:
        self.ports.store.save(Saved(self.state.to_dict(), self.timeline, self.monitor_history).to_doc())


def weights_text(weights: Mapping[str, float]) -> str:
    """``v1 95% · v2 5%`` for logs and the status command."""
    return " · ".join(f"v{v} {w:g}%" for v, w in sorted(weights.items(), key=lambda kv: int(kv[0])))
