"""The controller state machine: ``step(state, event, now) -> (new_state, actions)``, pure and clock-injected.

The actor shell feeds it events (fired triggers, run results, canary decisions, operator commands, confirmations
of what it applied), persists the new state, then carries out the actions in order. Every action is idempotent
on the shell's side (moving an alias to where it points, setting the weights already set), and the state says
what is still owed: after a restart, ``step(state, Restarted(), now)`` re-issues it (resume the run in flight,
re-assert the weights, finish a promotion or a rollback). Promotions and rollbacks are two-phase for that
reason: ``promoting`` / ``rolling_back`` last until the shell reports ``Applied``. The shell re-drives what a state
owes on every poll (with backoff after a failure), not only after a restart, so a port that fails once while the
process lives wedges nothing; and an operator's rollback always goes through: during a rollback it asks for the
retry now, during a promotion it stops it (the champion alias is restored: ``RestoreAlias``).

Replaying an event with an idempotency key already processed is a no-op, and structural guards back the keys
up: a version gets at most one rollout, a run's result is taken once, a stale canary decision is ignored.

A run that data validation stopped (``RunFinished`` with a ``block``) parks its data: the ``blocked`` record names
the anomalies and the commands that fix them, automatic triggers start no run meanwhile (no retrain storm), and the
shell's ``DataChecked`` each poll retries the data once when the schema version in force changes or blocked files
leave the landing area (the rule is ``raymlops.control.blocking.retry_reasons``). An operator's on-demand run is
always honoured, and counts as the retry.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from raymlops.control.blocking import BlockRecord, DataBlock, block_message, retry_reasons
from raymlops.control.canary import ACTIVE_PHASES, Decision, RolloutState, apply_decision
from raymlops.control.triggers import REQUESTED_KINDS, TriggerEvent, TriggerState
from raymlops.core.redact import redact, redact_data

__all__ = [
    "MANUAL_COMMANDS",
    "Action",
    "Applied",
    "CanaryAnalysis",
    "ControllerState",
    "DataChecked",
    "Event",
    "LogEntry",
    "Manual",
    "Notify",
    "PromoteAlias",
    "Observed",
    "ExposureTested",
    "RestoreAlias",
    "Restarted",
    "ResumeRun",
    "RunFinished",
    "RunRecord",
    "RunStarted",
    "SetWeights",
    "StartRun",
    "TestExposure",
    "TriggerFired",
    "step",
]

MANUAL_COMMANDS = ("promote", "rollback", "pause", "resume", "approve")


# ---------------------------------------------------------------------------------------------- records
@dataclass
class RunRecord:
    """The pipeline run in flight; ``run_id`` is None until the shell reports ``RunStarted``."""

    run_id: str | None
    triggers: list[TriggerEvent]
    requested_at: float
    started_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "triggers": [t.to_dict() for t in self.triggers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        return cls(**{**d, "triggers": [TriggerEvent.from_dict(t) for t in d["triggers"]]})


@dataclass
class LogEntry:
    """One line of the controller's event log (``seq`` rises by one per entry); ``data`` is JSON-safe."""

    seq: int
    at: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class TriggerFired:
    """Triggers that fired (from ``evaluate_triggers``), with the trigger bookkeeping to store atomically."""

    triggers: tuple[TriggerEvent, ...] = ()
    trigger_state: TriggerState | None = None

    @property
    def key(self) -> str | None:
        return "trigger:" + "|".join(t.key for t in self.triggers) if self.triggers else None


@dataclass(frozen=True)
class RunStarted:
    """The shell started the requested run and got its id."""

    run_id: str

    @property
    def key(self) -> str:
        return f"run-started:{self.run_id}"


@dataclass(frozen=True)
class RunFinished:
    """A run ended: ``status`` completed | failed | blocked; ``version`` is the registered challenger, if any.

    ``block`` is set when data validation stopped the run (a blocked model gate leaves it None).
    """

    run_id: str
    status: str
    version: str | None = None
    error: str | None = None
    block: DataBlock | None = None

    @property
    def key(self) -> str:
        return f"run-finished:{self.run_id}"


@dataclass(frozen=True)
class CanaryAnalysis:
    """A decision from ``canary.analyze`` for the rollout in this state."""

    decision: Decision

    @property
    def key(self) -> str | None:
        d = self.decision
        if d.hold_on in (["interval"], ["phase"]):
            return None  # nothing was judged: not worth remembering
        return f"analysis:{d.version}:{d.step_index}:{d.at!r}"


@dataclass(frozen=True)
class Manual:
    """An operator command (``MANUAL_COMMANDS``); ``request_id`` makes a retried command count once; every event
    it logs names ``operator`` (who acted: ``--as`` or the OS user; "unknown" when not given)."""

    command: str
    request_id: str
    version: str | None = None
    operator: str = ""

    @property
    def key(self) -> str:
        return f"manual:{self.request_id}"


@dataclass(frozen=True)
class Applied:
    """The shell carried out a promotion (``kind='promote'``), a rollback of ``version``, or restored the champion
    alias to ``version`` (``kind='restore'``)."""

    kind: str
    version: str

    @property
    def key(self) -> str | None:
        # A restore to the same champion can be owed twice in a controller's life; the state guards its replay.
        return None if self.kind == "restore" else f"applied:{self.kind}:{self.version}"


@dataclass(frozen=True)
class ExposureTested:
    """The pre-exposure tests of ``version`` ended (``reasons``: one line per failed check)."""

    version: str
    passed: bool
    reasons: tuple[str, ...] = ()
    checks: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"exposure:{self.version}"


@dataclass(frozen=True)
class Observed:
    """Something the shell saw or did outside the state machine (e.g. a pipeline promotion), for the log."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> None:
        return None


@dataclass(frozen=True)
class DataChecked:
    """While data is blocked, what the shell saw this poll: the schema version validation would use now and the
    landing files (``None``: not observed)."""

    schema_version: int | None
    files: frozenset[str] | None = None

    @property
    def key(self) -> None:
        return None


@dataclass(frozen=True)
class Restarted:
    """The actor (re)started on a persisted state: re-issue what is still owed."""

    @property
    def key(self) -> None:
        return None


Event = (TriggerFired | RunStarted | RunFinished | CanaryAnalysis | Manual | Applied | ExposureTested | Observed
         | DataChecked | Restarted)


# ---------------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class StartRun:
    """Start a CT pipeline run for these triggers, then report ``RunStarted`` and later ``RunFinished``."""

    triggers: tuple[TriggerEvent, ...]


@dataclass(frozen=True)
class ResumeRun:
    """Resume the run in flight (after a restart), then report ``RunFinished``."""

    run_id: str


@dataclass(frozen=True)
class SetWeights:
    """Set the serving split to exactly these weights (percent per version, summing to 100)."""

    weights: dict[str, float]


@dataclass(frozen=True)
class PromoteAlias:
    """Move the ``champion`` alias to ``version`` (``previous`` to the old champion), then report ``Applied``."""

    version: str
    previous: str | None


@dataclass(frozen=True)
class RestoreAlias:
    """Point the ``champion`` alias back at ``version`` (a promotion stopped by an operator may have moved it), then
    report ``Applied('restore', version)``."""

    version: str


@dataclass(frozen=True)
class TestExposure:
    """Run the pre-exposure tests of ``version`` against ``champion`` (no live traffic), then report
    ``ExposureTested``."""

    version: str
    champion: str | None


@dataclass(frozen=True)
class Notify:
    """Send this event-log entry to the notification channels (webhook)."""

    entry: LogEntry


Action = StartRun | ResumeRun | SetWeights | PromoteAlias | RestoreAlias | TestExposure | Notify


# ------------------------------------------------------------------------------------------------ state
@dataclass
class ControllerState:
    """Everything the controller must remember across restarts; ``to_json``/``from_json`` round-trip exactly."""

    canary_steps: list[float] = field(default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0])
    champion: str | None = None
    previous: str | None = None
    run: RunRecord | None = None
    queue: list[TriggerEvent] = field(default_factory=list)  # at most one per trigger kind
    rollout: RolloutState = field(default_factory=RolloutState)
    pending_canary: str | None = None  # the newest challenger waiting for the rollout in progress
    restore_alias: str | None = None  # the champion alias must point here again (a stopped promotion)
    paused: bool = False
    pre_exposure: bool = False  # test each challenger before its canary (the shell sets it from the config)
    triggers: TriggerState = field(default_factory=TriggerState)
    handled_versions: list[str] = field(default_factory=list)  # got a rollout or a promotion: never again
    blocked: BlockRecord | None = None  # data parked by a validation STOP (raymlops.control.blocking)
    retrying: int = 0  # runs of the data now requested that stopped before (0: not a retry of blocked data)
    events: list[LogEntry] = field(default_factory=list)
    next_seq: int = 1
    processed_keys: list[str] = field(default_factory=list)
    max_events: int = 1000
    max_keys: int = 5000

    def weights(self) -> dict[str, float]:
        """The serving split the state calls for (empty before any champion)."""
        if self.rollout.phase == "idle":
            return {self.champion: 100.0} if self.champion else {}
        return self.rollout.weights()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict sharing nothing with the state."""
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControllerState:
        return cls(**{
            **d,
            "canary_steps": list(d["canary_steps"]),
            "run": RunRecord.from_dict(d["run"]) if d.get("run") else None,
            "queue": [TriggerEvent.from_dict(t) for t in d["queue"]],
            "rollout": RolloutState.from_dict(d["rollout"]),
            "triggers": TriggerState.from_dict(d["triggers"]),
            "handled_versions": list(d["handled_versions"]),
            "blocked": BlockRecord.from_dict(d["blocked"]) if d.get("blocked") else None,
            "events": [LogEntry(**e) for e in d["events"]],
            "processed_keys": list(d["processed_keys"]),
        })

    def to_json(self) -> str:
        """Strict JSON (no NaN or Infinity)."""
        # Built by hand rather than with asdict(), whose deep copy of the event log dominated the cost.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc.update(run=self.run.to_dict() if self.run else None, queue=[t.to_dict() for t in self.queue],
                   rollout=self.rollout.to_dict(), triggers=self.triggers.to_dict(),
                   blocked=self.blocked.to_dict() if self.blocked else None, events=[vars(e) for e in self.events])
        return json.dumps(doc, allow_nan=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ControllerState:
        return cls.from_dict(json.loads(text))


# ------------------------------------------------------------------------------------------- transitions
class _Tx:
    # One transition in progress: the copy of the state being changed, and the actions it calls for.

    def __init__(self, state: ControllerState, now: float):
        self.s, self.now, self.actions = state, now, []
        self.unchanged = False  # a handler that changed nothing says so: the shell then has nothing to persist
        self.tags: dict[str, Any] = {}  # added to every event this transition logs (a manual command's operator)

    def log(self, kind: str, message: str, notify: bool = False, **data: Any) -> None:
        # Redacted here, where every event is written: an error text may quote a URI with its password.
        entry = LogEntry(self.s.next_seq, self.now, kind, redact(message), redact_data({**data, **self.tags}))
        self.s.next_seq += 1
        self.s.events.append(entry)
        if notify:
            self.actions.append(Notify(entry))

    def reject(self, message: str, **data: Any) -> None:
        self.log("rejected", message, notify=True, **data)

    def start_run(self, triggers: list[TriggerEvent]) -> None:
        s = self.s
        if s.blocked is not None:  # only a request (on demand, retry) gets here while blocked: it is the retry
            self.unblock("run requested by " + ", ".join(t.kind for t in triggers))
        s.run, s.queue = RunRecord(None, list(triggers), self.now), []  # one run serves every queued trigger
        self.actions.append(StartRun(tuple(triggers)))
        self.log("run_requested", "run requested by " + ", ".join(t.kind for t in triggers),
                 triggers=[t.key for t in triggers])

    def block(self, run_id: str, block: DataBlock) -> None:
        s = self.s
        # Automatic triggers queued behind this run would read the same data: held, not run. Requests stay.
        held = [q.kind for q in s.queue if q.kind not in REQUESTED_KINDS]
        s.queue = [q for q in s.queue if q.kind in REQUESTED_KINDS]
        s.blocked = b = BlockRecord.of(run_id, self.now, block, attempts=s.retrying + 1)
        b.held = held
        # The entry gets copies: the record's lists change while the data stays blocked, the log must not.
        self.log("blocked", block_message(run_id, b), notify=True, run_id=run_id, report_uri=b.report_uri,
                 schema_version=b.schema_version, anomalies=copy.deepcopy(b.anomalies),
                 anomaly_count=b.anomaly_count, commands=list(b.commands), attempts=b.attempts, held=list(held))

    def unblock(self, reason: str) -> None:
        s, b = self.s, self.s.blocked
        if b is None:
            return
        s.blocked, s.retrying = None, b.attempts
        held = f" (held meanwhile: {', '.join(b.held)})" if b.held else ""
        self.log("unblocked", f"the data blocked in run {b.run_id} is tried again: {reason}{held}", notify=True,
                 run_id=b.run_id, reason=reason, held=list(b.held))

    def start_canary(self, version: str) -> None:
        s = self.s
        s.handled_versions.append(version)
        s.rollout = RolloutState.start(version, s.champion, s.canary_steps, self.now)
        self.actions.append(SetWeights(s.rollout.weights()))
        self.log("canary_started", f"version {version} on canary at {s.rollout.weight:g}% against champion "
                 f"{s.champion}", notify=True, version=version, weights=s.rollout.weights())

    def start_testing(self, version: str) -> None:
        s = self.s
        s.handled_versions.append(version)
        s.rollout = RolloutState("testing", version, s.champion, list(s.canary_steps), 0, 0.0, 0, self.now,
                                 self.now)
        self.actions.append(TestExposure(version, s.champion))
        self.log("exposure_testing", f"version {version}: contract, load and infrastructure tests before any live "
                 "traffic", version=version)

    def promote(self, version: str, reason: str, **data: Any) -> None:
        s, r = self.s, self.s.rollout
        if r.phase in ACTIVE_PHASES and r.canary_version == version:
            s.rollout = replace(r, phase="promoting", weight=100.0, last_change_at=self.now, hold_on=[])
        else:
            s.rollout = RolloutState("promoting", version, s.champion, [], 0, 100.0, 0, self.now, self.now)
        if version not in s.handled_versions:
            s.handled_versions.append(version)
        self.actions += [PromoteAlias(version, s.champion), SetWeights(s.rollout.weights())]
        self.log("promoting", f"promoting version {version} to champion: {reason}", notify=True,
                 version=version, previous=s.champion, **data)

    def rollback(self, reason: str, **data: Any) -> None:
        s = self.s
        s.rollout = replace(s.rollout, phase="rolling_back", weight=0.0, last_change_at=self.now, hold_on=[])
        self.actions.append(SetWeights(s.rollout.weights()))
        self.log("rolling_back", f"rolling back canary {s.rollout.canary_version}: {reason}", notify=True,
                 version=s.rollout.canary_version, **data)

    def next_work(self) -> None:
        s = self.s  # start what waited for the run or the rollout to end, unless paused
        if s.paused:
            return
        if s.run is None and s.queue:
            self.start_run(s.queue)
        if s.rollout.phase == "idle" and s.pending_canary is not None:
            version, s.pending_canary = s.pending_canary, None
            self.offer(version)

    def offer(self, version: str) -> None:
        s = self.s
        if version in s.handled_versions or version == s.champion:
            self.log("ignored", f"version {version} was already rolled out or promoted", version=version)
        elif s.rollout.phase == "idle" and not s.paused:
            if s.champion is None:
                self.promote(version, "first model: there is no champion to compare it with")
            elif s.pre_exposure:
                self.start_testing(version)
            else:
                self.start_canary(version)
        elif version != s.pending_canary:
            if s.pending_canary is not None:
                self.log("superseded", f"version {s.pending_canary} will not go on canary: {version} is newer",
                         notify=True, version=s.pending_canary)
            s.pending_canary = version
            phase = s.rollout.phase.replace("_", " ")
            why = "`resume`" if s.paused else f"the {phase} of {s.rollout.canary_version}"
            self.log("canary_queued", f"version {version} waits for {why}", version=version)


def _trigger_fired(tx: _Tx, e: TriggerFired) -> None:
    s = tx.s
    if e.trigger_state is not None:
        s.triggers = copy.deepcopy(e.trigger_state)
    for t in e.triggers:
        tx.log("trigger", f"{t.kind}: {t.reason}", notify=True, trigger=t.to_dict())
    if not e.triggers:
        return
    b = s.blocked
    if b is not None:
        if not any(t.kind in REQUESTED_KINDS for t in e.triggers):
            new = [t.kind for t in e.triggers if t.kind not in b.held]
            b.held += new
            tx.log("held", f"{', '.join(t.kind for t in e.triggers)}: no run while the data of run {b.run_id} is "
                   "blocked by validation (accept a schema version, fix the data, or `raymlops trigger`)",
                   kinds=[t.kind for t in e.triggers], run_id=b.run_id)
            return
        tx.unblock("an operator requested a run")  # the automatic triggers that fired with it ride along
    if s.run is None and not s.paused:
        tx.start_run(list(e.triggers))
        return
    queued = {q.kind for q in s.queue}
    for t in e.triggers:
        if t.kind not in queued:  # de-duplicated by kind: one queued run serves every trigger of that kind
            s.queue.append(t)
            queued.add(t.kind)
    why = "the controller is paused" if s.paused else f"run {s.run.run_id or '(starting)'} is in flight"
    tx.log("queued", f"queued ({', '.join(q.kind for q in s.queue)}): {why}")


def _run_started(tx: _Tx, e: RunStarted) -> None:
    run = tx.s.run
    if run is None or run.run_id not in (None, e.run_id):
        tx.log("ignored", f"run {e.run_id} started but is not the run in flight", run_id=e.run_id)
        return
    run.run_id, run.started_at = e.run_id, tx.now
    tx.log("run_started", f"run {e.run_id} started", run_id=e.run_id)


def _run_finished(tx: _Tx, e: RunFinished) -> None:
    s = tx.s
    if s.run is None or s.run.run_id not in (None, e.run_id):
        tx.log("ignored", f"result of run {e.run_id}, which is not the run in flight", run_id=e.run_id)
        return
    s.run = None
    version = None if e.version is None else str(e.version)
    if e.status == "blocked" and e.block is not None:
        tx.block(e.run_id, e.block)
    elif e.status == "completed" and version is not None:
        tx.log("run_finished", f"run {e.run_id} registered version {version}", notify=True, run_id=e.run_id,
               version=version)
        tx.offer(version)
    elif e.status == "completed":
        tx.log("run_finished", f"run {e.run_id} completed without a new version", notify=True, run_id=e.run_id)
    else:
        tx.log("run_failed", f"run {e.run_id} {e.status}: {e.error}", notify=True, run_id=e.run_id,
               status=e.status)
    s.retrying = 0
    tx.next_work()


def _canary_analysis(tx: _Tx, e: CanaryAnalysis) -> None:
    s, d = tx.s, e.decision
    r = s.rollout
    if s.paused or d.hold_on in (["interval"], ["phase"]):
        return  # nothing was judged, or judging is paused: not worth a log line every poll
    # A decision judges one window of one step: once applied, the window moves on, so a replay is stale.
    same_window = d.window_start is None or d.window_start == r.window_start
    if r.phase not in ACTIVE_PHASES or (d.version, d.step_index) != (r.canary_version, r.step_index) \
            or not same_window:
        tx.log("ignored", f"stale analysis of {d.version} step {d.step_index} (rollout: {r.phase} "
               f"{r.canary_version} step {r.step_index})")
        return
    new = apply_decision(r, d)
    checks = [asdict(c) for c in d.checks]
    if d.action == "promote":
        tx.promote(d.version, d.reason, checks=checks)
        return
    if d.action == "rollback":
        s.rollout = replace(r, failures=new.failures)  # the failure that reached the limit counts too
        tx.rollback(d.reason, checks=checks)
        return
    s.rollout = new
    if d.action == "advance":
        tx.actions.append(SetWeights(new.weights()))
        tx.log("canary_advanced", d.reason, version=d.version, weights=new.weights(), checks=checks)
    elif d.action == "wait_approval" and r.phase != "awaiting_approval":
        tx.log("awaiting_approval", f"{d.reason}; run `raymlops approve` to promote {d.version}", notify=True,
               version=d.version, checks=checks)
    elif d.action == "hold" and d.failed:
        tx.log("canary_check_failed", d.reason, notify=True, version=d.version, checks=checks)
    elif d.action == "hold" and new.hold_on != r.hold_on:
        tx.log("canary_hold", d.reason, version=d.version, checks=checks)


def _manual(tx: _Tx, e: Manual) -> None:
    tx.tags["operator"] = e.operator or "unknown"  # who acted, on the refusal as on every effect
    s, r, cmd = tx.s, tx.s.rollout, e.command
    version = None if e.version is None else str(e.version)
    busy = r.phase in ("promoting", "rolling_back")
    if cmd == "rollback" and busy:
        _rollback_while_busy(tx)
    elif cmd not in MANUAL_COMMANDS:
        tx.reject(f"unknown command {cmd!r}; use one of {', '.join(MANUAL_COMMANDS)}")
    elif cmd in ("pause", "resume"):
        if s.paused == (cmd == "pause"):
            tx.reject(f"{cmd}: the controller is already {'paused' if s.paused else 'running'}")
            return
        s.paused = cmd == "pause"
        tx.log(cmd + "d", "controller paused: no new runs, no canary decisions" if s.paused
               else "controller resumed", notify=True)
        tx.next_work()
    elif busy:
        tx.reject(f"{cmd}: a {r.phase.replace('_', ' ')} of {r.canary_version} is in progress; retry when it ends")
    elif r.phase == "testing" and cmd in ("rollback", "approve"):
        if cmd == "approve":
            tx.reject(f"approve: version {r.canary_version} is still in its pre-exposure tests")
            return
        tx.log("exposure_blocked", f"version {r.canary_version} gets no traffic: stopped by an operator during "
               "its pre-exposure tests", notify=True, version=r.canary_version)
        s.rollout = RolloutState()
        tx.next_work()
    elif cmd == "approve":
        if r.phase != "awaiting_approval":
            tx.reject(f"approve: nothing awaits approval (rollout phase: {r.phase})")
        elif version not in (None, r.canary_version):
            tx.reject(f"approve: version {version} is not the canary awaiting approval ({r.canary_version})")
        else:
            tx.promote(r.canary_version, "approved by an operator")
    elif cmd == "promote":
        version = version if version is not None else r.canary_version
        if r.phase in ACTIVE_PHASES and version != r.canary_version:
            tx.reject(f"promote: version {version} is not the canary ({r.canary_version}); roll it back first")
        elif version is None:
            tx.reject("promote: no canary in progress; name the version to promote")
        elif version == s.champion:
            tx.reject(f"promote: version {version} is already the champion")
        else:
            tx.promote(version, "promoted by an operator")
    elif r.phase in ACTIVE_PHASES:  # rollback of the canary
        tx.rollback("rolled back by an operator")
    elif s.previous is not None and s.previous != s.champion:
        tx.promote(s.previous, f"operator rollback of champion {s.champion} to the previous champion")
    else:
        tx.reject("rollback: no canary in progress and no previous champion to return to")


def _rollback_while_busy(tx: _Tx) -> None:
    # An operator's rollback is never refused as "in progress": a rollback that a failing port holds up is retried
    # at once, and a promotion is stopped with the champion alias restored (it may already have moved).
    s, r = tx.s, tx.s.rollout
    if r.phase == "rolling_back":
        tx.log("rollback_retried", f"rollback of canary {r.canary_version} is in progress; an operator asked "
               "again: it is retried now", notify=True, version=r.canary_version)
    elif r.champion_version is None:
        tx.reject(f"rollback: version {r.canary_version} is being promoted as the first model; there is no "
                  "champion to return to (promote another version instead)")
    else:
        s.restore_alias = r.champion_version
        tx.actions.append(RestoreAlias(r.champion_version))
        tx.rollback(f"promotion of {r.canary_version} stopped by an operator; champion alias back to "
                    f"{r.champion_version}")


def _applied(tx: _Tx, e: Applied) -> None:
    s, r = tx.s, tx.s.rollout
    if e.kind == "restore":
        if s.restore_alias != str(e.version):
            tx.log("ignored", f"champion alias restored to {e.version}, but no restore was owed", version=e.version)
            return
        s.restore_alias = None
        tx.log("alias_restored", f"champion alias points at {e.version} again", notify=True, version=str(e.version))
        return
    phase = {"promote": "promoting", "rollback": "rolling_back"}.get(e.kind)
    if phase is None or r.phase != phase or r.canary_version != str(e.version):
        tx.log("ignored", f"{e.kind} of {e.version} applied, but none was in progress", version=e.version)
        return
    if e.kind == "promote":
        s.previous, s.champion = s.champion, str(e.version)
        tx.log("promoted", f"version {e.version} is the champion" + (f"; {s.previous} kept as previous and "
               "drained" if s.previous else ""), notify=True, version=str(e.version), previous=s.previous)
    else:
        tx.log("rolled_back", f"canary {e.version} rolled back; champion {s.champion} serves all traffic "
               "(aliases unchanged)", notify=True, version=str(e.version))
    s.rollout = RolloutState()
    tx.next_work()


def _exposure_tested(tx: _Tx, e: ExposureTested) -> None:
    s, r = tx.s, tx.s.rollout
    if r.phase != "testing" or r.canary_version != str(e.version):
        tx.log("ignored", f"pre-exposure result of {e.version}, which is not being tested", version=e.version)
        return
    checks = [dict(c) for c in e.checks]
    if e.passed:
        tx.log("exposure_passed", f"version {e.version} passed its pre-exposure tests", version=e.version,
               checks=checks)
        s.rollout = RolloutState()
        tx.start_canary(str(e.version))
    else:
        tx.log("exposure_blocked", f"version {e.version} gets no traffic: " + "; ".join(e.reasons), notify=True,
               version=e.version, checks=checks)
        s.rollout = RolloutState()
        tx.next_work()


def _observed(tx: _Tx, e: Observed) -> None:
    tx.log(e.kind, e.message, notify=True, **e.data)


def _data_checked(tx: _Tx, e: DataChecked) -> None:
    s, b = tx.s, tx.s.blocked
    reasons = [] if b is None else retry_reasons(b, e.schema_version, e.files)
    if not reasons:
        tx.unchanged = True  # the usual poll while data is blocked: nothing to record
        return
    tx.unblock("; ".join(reasons))
    retry = TriggerEvent("retry", f"data of run {b.run_id}: " + "; ".join(reasons), tx.now)
    if s.run is None and not s.paused:
        tx.start_run([retry])
    elif all(q.kind != "retry" for q in s.queue):
        s.queue.append(retry)
        tx.log("queued", f"queued (retry): {'the controller is paused' if s.paused else 'a run is in flight'}")


def _restarted(tx: _Tx, e: Restarted) -> None:
    s, r = tx.s, tx.s.rollout
    if s.run is not None:
        tx.actions.append(ResumeRun(s.run.run_id) if s.run.run_id else StartRun(tuple(s.run.triggers)))
    if r.phase == "testing":
        tx.actions.append(TestExposure(r.canary_version, r.champion_version))
    if r.phase == "promoting":
        tx.actions.append(PromoteAlias(r.canary_version, s.champion))
    if s.restore_alias is not None:
        tx.actions.append(RestoreAlias(s.restore_alias))
    if s.weights():
        tx.actions.append(SetWeights(s.weights()))
    tx.log("restarted", f"controller restarted: run {'none' if s.run is None else s.run.run_id or '(starting)'}, "
           f"rollout {r.phase}", redo=len(tx.actions))


_HANDLERS = {TriggerFired: _trigger_fired, RunStarted: _run_started, RunFinished: _run_finished,
             CanaryAnalysis: _canary_analysis, Manual: _manual, Applied: _applied, ExposureTested: _exposure_tested,
             Observed: _observed, DataChecked: _data_checked, Restarted: _restarted}


def step(state: ControllerState, event: Event, now: float) -> tuple[ControllerState, list[Action]]:
    """Apply ``event`` at ``now``: the new state and the actions the shell must carry out, in order.

    ``state`` is not modified. An event whose idempotency key was already processed, or one that changes nothing
    (a ``DataChecked`` that does not retry), returns ``(state, [])``: the same object, so the shell saves nothing.
    """
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"unknown controller event {event!r}")
    key = event.key
    if key is not None and key in state.processed_keys:
        return state, []
    tx = _Tx(copy.deepcopy(state), now)
    handler(tx, event)
    if tx.unchanged:
        return state, []
    s = tx.s
    if key is not None:
        s.processed_keys = (s.processed_keys + [key])[-s.max_keys:]
    s.events = s.events[-s.max_events:]
    return s, tx.actions
