"""The controller shell: feeds the pure state machine (``state.step``) what it observes and carries out its actions.

No Ray and no MLflow here: every side effect goes through a small port (``Ports``), so the shell is unit-tested
with in-memory fakes and the actor (``raymlops.control.actor``) only wires the real ports in. The rules the shell
keeps so that a kill at any point loses nothing:

* the state is persisted after every transition, *before* the actions it calls for are carried out;
* a run's id is recorded (``RunStarted``) before the run is launched, so a restart resumes that run by its id;
* serving is level-triggered: ``SetWeights`` applies the split the *current* state calls for, so an action
  made stale by a later transition cannot undo it, and a restart re-asserts the split;
* promotions and rollbacks stay in progress until the port call returned (``Applied``), and the registry's promote
  converges when repeated;
* what the state owes (launch the recorded run, move the champion alias, restore it, set the split) is derived
  from the state and re-driven after every transition and on every poll (``_drive``): a port that raises while
  the process lives is retried with exponential backoff (``status()['retrying']``), not only after a restart;
* no lock is held across a port call: ports run on their own threads under deadlines (``Deadlines``), all of a
  controller's port work on one work thread, so ``status``, ``events`` and commands answer while a port hangs;
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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from raymlops.control.blocking import DataBlock
from raymlops.control.canary import CanaryPolicy, WindowStats, analysis_due, analyze
from raymlops.control.state import (
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
    Restarted,
    RunFinished,
    RunStarted,
    TriggerFired,
    step,
)
from raymlops.control.statefile import Saved
from raymlops.control.triggers import QualitySignal, TriggerContext, TriggerPolicy, evaluate_triggers
from raymlops.core.drift import DriftResult
from raymlops.errors import ConcurrentUpdateError, ControllerError

__all__ = ["DATA_VALIDATION", "DECISION_KINDS", "Controller", "Deadlines", "MonitorSignal", "PortTimeout", "Ports",
           "RunOutcome", "Schemas"]

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


# ------------------------------------------------------------------------------------------ port calls
class PortTimeout(ControllerError):
    """A port call did not return within its deadline (it goes on in the background; the shell retries later)."""


@dataclass(frozen=True)
class Deadlines:
    """Seconds the shell waits for one call of each port before it counts the call as failed.

    A call past its deadline cannot be cancelled (Python threads cannot be killed): it goes on in the background,
    and its port takes no new call until it returned, so a hung port never gets a pile of calls. Meanwhile the
    other ports, status, events and commands go on.
    """

    serving_s: float = 300.0  # serve.run waits until every replica loaded the versions it serves
    registry_s: float = 120.0  # MLflow retries an unreachable tracking server for minutes
    observer_s: float = 120.0  # landing listings and canary windows read logs
    runner_s: float = 60.0
    monitor_s: float = 30.0
    schemas_s: float = 60.0
    pipelines_s: float = 120.0
    notes_s: float = 30.0  # lineage notes in the registry and notifications

    def of(self, lane: str) -> float:
        return float(getattr(self, f"{lane}_s"))


class _Lane:
    # One port's calls, on its own thread, one at a time; a call past its deadline keeps the lane busy.

    def __init__(self, name: str):
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raymlops-port-{name}")
        self._late: Future | None = None

    def call(self, fn: Callable[..., Any], args: tuple, deadline_s: float) -> Any:
        what = getattr(fn, "__qualname__", repr(fn))
        if self._late is not None and not self._late.done():
            raise PortTimeout(f"the {self.name} port is still busy with a call that passed its deadline; {what} "
                              "waits for it to return (check the service behind that port)")
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=deadline_s)
        except FutureTimeout:
            if future.done():
                raise  # the call itself raised a TimeoutError
            self._late = future
            raise PortTimeout(f"{what} did not return within {deadline_s:g} s (the {self.name} port's deadline); "
                              "it is retried with backoff once it returns") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Retry:
    failures: int
    next_at: float
    error: str
    what: str


# ------------------------------------------------------------------------------------------------- shell
class Controller:
    """One pipeline's controller. Thread-safe.

    Three kinds of threads meet here. The *work* thread (one) does everything that calls a port: each ``tick``,
    the effects of a command, the start. Port calls run on one thread per port and are waited for under a
    deadline (``Deadlines``). Callers of ``status``, ``events`` and ``command`` never wait for a port: state
    transitions take a short lock (compute, persist), and ``status``/``events`` read the last state without it
    (a state is never changed in place: ``step`` returns a new one).
    """

    def __init__(self, canary: CanaryPolicy, triggers: TriggerPolicy, ports: Ports, *,
                 trigger_interval_s: float = 5.0, monitor_interval_s: float | None = 60.0, pre_exposure: bool = False,
                 clock: Callable[[], float] = time.time, new_run_id: Callable[[], str] | None = None,
                 say: Callable[[str], None] = lambda _msg: None, deadlines: Deadlines | None = None,
                 command_wait_s: float | None = 0.8, retry_base_s: float = 1.0, retry_max_s: float = 60.0):
        self.canary, self.triggers, self.ports = canary, triggers, ports
        self.trigger_interval_s, self.monitor_interval_s = trigger_interval_s, monitor_interval_s
        self.pre_exposure = pre_exposure
        self.clock, self.say = clock, say
        self.new_run_id = new_run_id or (lambda: f"ctl-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                                         f"{uuid.uuid4().hex[:6]}")
        self.deadlines = deadlines or Deadlines()
        # How long a command waits for its effects before answering (they go on): keeps commands under 1 s.
        self.command_wait_s = command_wait_s
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._lock = threading.RLock()  # state transitions only: never held across a port call
        self.state = ControllerState(canary_steps=list(canary.steps))
        self.timeline: list[list[Any]] = []  # [at, weights] each time serving changed
        self.monitor_history: list[dict[str, Any]] = []
        self._signal: MonitorSignal | None = None
        self._last_trigger_at = -math.inf
        self._last_monitor_at = -math.inf
        self._applied: dict[str, float] | None = None
        self._exposure: tuple[str, Future] | None = None  # the version under pre-exposure tests, and their result
        self._exposure_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymlops-exposure")
        self._work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raymlops-controller-work")
        self._local = threading.local()
        self._lanes: dict[str, _Lane] = {}
        self._outbox: deque[LogEntry] = deque()  # entries to notify, in order, by the work thread
        self._retry: dict[str, _Retry] = {}  # owed effects that failed: when to try again
        self._fenced: str | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the persisted state (or begin from the registry's aliases) and re-issue what is owed."""
        self._on_work(self._start, None)

    def tick(self, on_demand: Sequence[str] = ()) -> None:
        """One poll: collect a finished run, judge the canary when due, evaluate triggers, run the monitor, and
        re-drive every effect the state still owes (promotion, rollback, serving split, run launch)."""
        self._on_work(lambda: self._tick(on_demand), None)

    def fence(self, reason: str) -> None:
        """Stop acting for good (the lease was lost): every later tick and command raises ``ControllerError``."""
        self._fenced = reason
        self.say(f"fenced: {reason}")

    def close(self) -> None:
        """Let the threads go (a call past its deadline finishes in the background)."""
        self._work.shutdown(wait=False, cancel_futures=True)
        self._exposure_pool.shutdown(wait=False, cancel_futures=True)
        for lane in list(self._lanes.values()):
            lane.close()

    # ------------------------------------------------------------------------------------------- commands
    def trigger(self, request_id: str | None = None, operator: str | None = None) -> str:
        """An on-demand run request (honoured once per ``request_id``); returns the request id.

        ``operator`` (who asked) is recorded as a ``trigger_requested`` event, once per request id.
        """
        self._check_fenced()
        rid = request_id or f"req-{uuid.uuid4().hex[:10]}"
        if operator:
            with self._lock:
                seen = rid in self.state.triggers.handled_requests or any(
                    e.kind == "trigger_requested" and e.data.get("request_id") == rid for e in self.state.events)
                if not seen:
                    self._handle(Observed("trigger_requested", f"run requested by {operator} ({rid})",
                                          {"request_id": rid, "operator": operator}))
        self._on_work(lambda: self._tick([rid]), self.command_wait_s)
        return rid

    def command(self, command: str, request_id: str | None = None, version: str | None = None,
                operator: str | None = None) -> LogEntry | None:
        """An operator command (promote, rollback, pause, resume, approve); returns the first event it logged.

        Every event it logs names ``operator`` (who acted; "unknown" when not given).

        The decision is taken and persisted at once; its effects (registry, serving) are carried out by the work
        thread, waited for up to ``command_wait_s``. An operator's rollback also retries at once every owed
        effect that failed before (no backoff wait).
        """
        with self._lock:
            before = self.state.next_seq
            self._handle(Manual(command, request_id or f"op-{uuid.uuid4().hex[:10]}", version, operator or ""))
            new = [e for e in self.state.events if e.seq >= before]
        if command == "rollback":
            self._retry.clear()
        self._on_work(self._drive, self.command_wait_s)
        return new[0] if new else None

    def observe(self, kind: str, message: str, **data: Any) -> None:
        """Log (and notify) something the shell's owner saw or did, e.g. taking over the lease."""
        self._handle(Observed(kind, message, data))
        self._on_work(self._flush_notes, self.command_wait_s)

    def status(self) -> dict[str, Any]:
        """A JSON-safe summary: champion, run in flight, queue, rollout, weights, data blocked by validation, last
        monitor pass, effects being retried. Never waits for a port or a transition."""
        s = self.state  # a state is replaced, never changed in place: this one stays consistent
        return {
            "champion": s.champion, "previous": s.previous, "paused": s.paused,
            "run": s.run.to_dict() if s.run else None, "queue": [t.to_dict() for t in s.queue],
            "rollout": s.rollout.to_dict(), "pending_canary": s.pending_canary, "weights": s.weights(),
            "restore_alias": s.restore_alias,
            "blocked": s.blocked.to_dict() if s.blocked else None,
            "monitor": self.monitor_history[-1] if self.monitor_history else None,
            "last_event": dict(vars(s.events[-1])) if s.events else None,
            "retrying": {k: {"what": r.what, "failures": r.failures, "next_at": r.next_at, "error": r.error}
                         for k, r in dict(self._retry).items()},
            "fenced": self._fenced,
        }

    def events(self, since_seq: int = 0) -> list[dict[str, Any]]:
        """The event log after ``since_seq`` (never waits for a port or a transition)."""
        return [dict(vars(e)) for e in self.state.events if e.seq > since_seq]

    # ------------------------------------------------------------------------------------------ threads
    def _on_work(self, fn: Callable[[], Any], wait_s: float | None) -> Any:
        self._check_fenced()
        if getattr(self._local, "on_work", False):
            return fn()  # already on this controller's work thread

        def on_work() -> Any:
            self._local.on_work = True
            return fn()

        future = self._work.submit(on_work)
        try:
            return future.result(timeout=wait_s)
        except FutureTimeout:
            if future.done():
                raise
            future.add_done_callback(self._report_late)  # it goes on; its outcome is logged, not lost
            return None

    def _report_late(self, future: Future) -> None:
        err = None if future.cancelled() else future.exception()
        if err is not None:
            self.say(f"warning: work after a command failed: {type(err).__name__}: {err}")

    def _check_fenced(self) -> None:
        if self._fenced is not None:
            raise ControllerError(f"this controller stopped acting: {self._fenced}")

    def _port(self, lane: str, fn: Callable[..., Any], *args: Any) -> Any:
        if lane not in self._lanes:
            self._lanes[lane] = _Lane(lane)
        return self._lanes[lane].call(fn, args, self.deadlines.of(lane))

    # ------------------------------------------------------------------------------------------ the work
    def _start(self) -> None:
        doc = self.ports.store.load()
        with self._lock:
            if doc is None:
                aliases = self._port("registry", self.ports.registry.aliases)
                self.state = ControllerState(canary_steps=list(self.canary.steps),
                                             champion=aliases.get("champion"), previous=aliases.get("previous"))
            else:
                saved = Saved.from_doc(doc)
                self.state = ControllerState.from_dict(saved.state)
                self.timeline, self.monitor_history = saved.timeline, saved.monitor
            self.state.pre_exposure = self.pre_exposure  # configuration, not history: the config in force wins
            self._handle(Restarted())
        self._drive()

    def _tick(self, on_demand: Sequence[str]) -> None:
        self._check_fenced()
        now = self.clock()
        self._collect_run()
        self._collect_exposure()
        self._collect_monitor()
        if on_demand or now - self._last_trigger_at >= self.trigger_interval_s:
            self._last_trigger_at = now
            files = self._files()
            self._check_blocked(files)  # first: a retry it starts serves the triggers that fire with it
            self._evaluate_triggers(now, on_demand, files)
        self._drive()
        self._attempt("analysis", "the canary analysis", lambda: self._analyse(now))
        self._maybe_monitor(now)
        self._drive()

    def _handle(self, event: Event) -> None:
        with self._lock:
            self._check_fenced()
            new, actions = step(self.state, event, self.clock())
            if new is self.state:
                return  # already processed
            old, self.state = self.state, new
            try:
                self._save()  # before acting: a crash from here on re-issues the owed effects on restart
            except ConcurrentUpdateError as err:
                self.state = old
                self.fence(str(err))
                raise
            except BaseException:
                self.state = old  # not persisted, so not decided: nothing may act on it
                raise
            # The other actions are owed by the state itself and carried out by _drive (level-triggered).
            self._outbox.extend(a.entry for a in actions if isinstance(a, Notify))

    def _drive(self) -> None:
        """Carry out what the state owes until nothing changes: notifications first (they tell of the transition
        that owed the rest), then the run launch, the alias moves and the serving split. A failure is retried on
        later calls with backoff (``_attempt``); every call re-reads the state, so a stale effect is not redone."""
        for _ in range(25):
            self._flush_notes()
            before = self.state
            self._drive_run()
            restore = self.state.restore_alias
            if restore is not None:
                self._attempt(f"restore:{restore}", f"restoring the champion alias to {restore}",
                              lambda v=restore: self._move_alias("restore", v))
            r = self.state.rollout
            if r.phase == "promoting":
                self._attempt(f"promote:{r.canary_version}", f"the promotion of {r.canary_version}",
                              lambda v=r.canary_version: self._move_alias("promote", v))
            self._attempt("serving", "setting the serving split", self._sync_serving)
            self._drive_exposure()
            if self.state is before:
                break
        self._flush_notes()

    def _attempt(self, key: str, what: str, fn: Callable[[], Any]) -> None:
        now = self.clock()
        retry = self._retry.get(key)
        if retry is not None and now < retry.next_at:
            return
        try:
            fn()
        except ConcurrentUpdateError:
            raise  # another controller wrote the state: this one is fenced, not retrying
        except Exception as err:  # noqa: BLE001 - a failing port must not wedge what the state owes
            failures = 1 if retry is None else retry.failures + 1
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** (failures - 1))
            text = f"{type(err).__name__}: {err}"
            self._retry[key] = _Retry(failures, now + delay, text, what)
            self.say(f"warning: {what} failed (attempt {failures}, next in {delay:g} s): {text}")
            if failures == 1:
                self._handle(Observed("retrying", f"{what} failed: {text}; retried on every poll with backoff "
                                      "(`raymlops controller status CONFIG` shows the attempts)", {"what": key}))
            return
        if retry is not None:
            del self._retry[key]
            self.say(f"{what} succeeded after {retry.failures} failed attempt(s)")

    def _drive_run(self) -> None:
        run = self.state.run
        if run is None:
            return
        if run.run_id is None:
            self._attempt("run:start", "launching a pipeline run", self._start_run)
        elif not self.ports.runner.active(run.run_id):
            # Recorded but not running here: its launch failed, or this process took over; resume it by id.
            self._attempt(f"run:{run.run_id}", f"resuming pipeline run {run.run_id}",
                          lambda rid=run.run_id: self._relaunch(rid))

    def _start_run(self) -> None:
        run_id = self.new_run_id()
        self._handle(RunStarted(run_id))  # recorded first, so a crash during the launch resumes this id
        if self.state.run is not None and self.state.run.run_id == run_id:
            self._port("runner", self.ports.runner.start, run_id, False)

    def _relaunch(self, run_id: str) -> None:
        self.say(f"resuming pipeline run {run_id}")
        self._port("runner", self.ports.runner.start, run_id, True)

    def _move_alias(self, kind: str, version: str) -> None:
        # promote converges when repeated (moving an alias to where it points), so a retry is safe.
        self._port("registry", self.ports.registry.promote, version)
        self._handle(Applied(kind, version))

    def _drive_exposure(self) -> None:
        r = self.state.rollout
        if r.phase != "testing" or (self._exposure is not None and self._exposure[0] == r.canary_version):
            return
        if self.ports.exposure is None:
            self._handle(ExposureTested(r.canary_version, True))
        else:  # seconds of preview app and load test: on their own thread, collected by a later tick
            future = self._exposure_pool.submit(self.ports.exposure.test, r.canary_version, r.champion_version)
            self._exposure = (r.canary_version, future)

    def _sync_serving(self) -> None:
        # Level-triggered: serve what the state calls for now (a later transition may have changed it).
        weights = {v: w for v, w in self.state.weights().items() if w > 0}
        if weights and weights != self._applied:
            self._port("serving", self.ports.serving.apply, weights)
            with self._lock:
                self._applied = dict(weights)
                self.timeline = (self.timeline + [[self.clock(), weights]])[-_TIMELINE_POINTS:]
                self._save()
        s = self.state
        r = s.rollout
        current = {v: w for v, w in s.weights().items() if w > 0}
        # A rollback is done once the champion serves alone, and the champion alias is where it belongs.
        if r.phase == "rolling_back" and current and current == self._applied and r.canary_version not in current \
                and s.restore_alias is None:
            self._handle(Applied("rollback", r.canary_version))

    def _flush_notes(self) -> None:
        while self._outbox:
            self._notify(self._outbox.popleft())

    def _notify(self, entry: LogEntry) -> None:
        version = entry.data.get("version")
        if entry.kind in DECISION_KINDS and version is not None:
            self._safely("notes", self.ports.registry.record_decision, str(version), entry)
        self._safely("notes", self.ports.notifier.send, entry)

    def _safely(self, lane: str, fn: Callable[..., Any], *args: Any) -> Any:
        # A notification or a lineage note must never stop the loop; the event log keeps the event.
        try:
            return self._port(lane, fn, *args)
        except Exception as err:  # noqa: BLE001 - reported, never raised
            self.say(f"warning: {getattr(fn, '__qualname__', fn)} failed: {type(err).__name__}: {err}")
            return None

    def _collect_run(self) -> None:
        run = self.state.run
        if run is None or run.run_id is None or not self.ports.runner.active(run.run_id):
            return  # nothing launched here to collect (_drive relaunches a recorded run)
        try:
            outcome = self._port("runner", self.ports.runner.poll, run.run_id)
        except Exception as err:  # noqa: BLE001 - polled again next tick
            self.say(f"warning: polling run {run.run_id} failed: {type(err).__name__}: {err}")
            return
        if outcome is None:
            return
        block = self._data_block(outcome) if outcome.status == "blocked" and outcome.blocked_by == DATA_VALIDATION \
            else None
        self._handle(RunFinished(outcome.run_id, outcome.status, outcome.version, outcome.error, block))
        if self.ports.pipelines is not None:
            for kind, message in self._safely("pipelines", self.ports.pipelines.run_finished, outcome) or ():
                self._handle(Observed(kind, message, {"impl": outcome.impl}))

    def _data_block(self, outcome: RunOutcome) -> DataBlock:
        # The block must be recorded even when its report cannot be read: the message then says why.
        block = DataBlock(outcome.report_uri, note=None if outcome.report_uri else "the run left no report")
        if self.ports.schemas is not None:
            try:
                block = self._port("schemas", self.ports.schemas.blocked, outcome.report_uri)
            except Exception as err:  # noqa: BLE001 - reported in the blocked event
                block = replace(block, note=f"report {outcome.report_uri} unreadable: {type(err).__name__}: {err}")
                self.say(f"warning: {block.note}")
        if block.schema_version is None:
            block = replace(block, schema_version=self._schema_version())
        return replace(block, files=self._files())

    def _files(self) -> frozenset[str] | None:
        try:
            return self._port("observer", self.ports.observer.files)
        except Exception as err:  # noqa: BLE001 - not observed this poll (None): nothing fires on it
            self.say(f"warning: the landing files could not be listed: {type(err).__name__}: {err}")
            return None

    def _schema_version(self) -> int | None:
        if self.ports.schemas is None:
            return None
        try:
            return self._port("schemas", self.ports.schemas.version)
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
        try:
            result = future.result()
        except Exception as err:  # noqa: BLE001 - a test that cannot run must not let the version through
            result = ExposureTested(version, False, (f"the pre-exposure tests could not run: {type(err).__name__}: "
                                                     f"{err}",))
        self._handle(result)  # ignored by the state machine if that version is no longer being tested
        self._exposure = None

    def _evaluate_triggers(self, now: float, on_demand: Sequence[str], files: frozenset[str] | None) -> None:
        sig = self._signal
        with self._lock:  # the trigger bookkeeping is read and replaced in one transition
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
        # The reads run outside the lock: a command meanwhile makes this decision stale, and step ignores it.
        canary = self._port("observer", self.ports.observer.window, r.canary_version, start, now, since)
        # At 100% the champion has no traffic in the window: compare with its traffic since the rollout began.
        champion = self._port("observer", self.ports.observer.window, r.champion_version,
                              since if r.weight >= 100 else start, now, since)
        decision, _ = analyze(self.canary, r, canary, champion, now)
        self._handle(CanaryAnalysis(decision))

    def _maybe_monitor(self, now: float) -> None:
        mon = self.ports.monitor
        if mon is None or self.monitor_interval_s is None or now - self._last_monitor_at < self.monitor_interval_s:
            return
        self._last_monitor_at = now
        roles = {v: ("champion" if v == self.state.champion else "canary") for v in self.state.weights()}
        self._safely("monitor", mon.start, self.state.champion, roles, list(self.timeline),
                     list(self.monitor_history))

    def _collect_monitor(self) -> None:
        mon = self.ports.monitor
        signal = self._safely("monitor", mon.poll) if mon is not None else None
        if signal is None:
            return
        with self._lock:
            self._signal = signal
            self.monitor_history = (self.monitor_history + [signal.summary])[-_MONITOR_HISTORY:]
            self._save()

    def _save(self) -> None:
        self.ports.store.save(Saved(self.state.to_dict(), self.timeline, self.monitor_history).to_doc())


def weights_text(weights: Mapping[str, float]) -> str:
    """``v1 95% · v2 5%`` for logs and the status command."""
    return " · ".join(f"v{v} {w:g}%" for v, w in sorted(weights.items(), key=lambda kv: int(kv[0])))
