"""The controller shell over in-memory ports and a fake clock: ordering, restarts, crashes at every port call."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.control.blocking import DataBlock
from raymlops.control.canary import CanaryPolicy, WindowStats
from raymlops.control.controller import DATA_VALIDATION, Controller, MonitorSignal, Ports, RunOutcome
from raymlops.control.triggers import QualitySignal, TriggerPolicy
from raymlops.core.drift import DriftResult

POLICY = CanaryPolicy(steps=(10.0, 50.0, 100.0), interval_s=60.0, min_requests=100, min_labels=50, failure_limit=2)
TRIGGERS = TriggerPolicy(cooldown_s=0.0, min_labels=50)


class Crash(BaseException):
    """A simulated kill of the controller at a port call (a BaseException: the shell retries an Exception from a
    port with backoff, but a kill is not something it handles)."""


class World:
    """Every port, in memory; ``crash_at`` makes the n-th port call raise (the process 'dies' there)."""

    def __init__(self, aliases: dict[str, str] | None = None):
        self.doc = None
        self.aliases = dict(aliases or {})
        self.registered = 0
        self.runs: dict[str, dict] = {}  # run_id -> {"resumes": n, "done": bool}
        self.launched: list[tuple[str, bool]] = []
        self.weights: dict[str, float] = {}
        self.weight_changes: list[dict[str, float]] = []
        self.promotions: list[str] = []
        self.decisions: list[tuple[str, str]] = []
        self.sent: list[str] = []
        self.files = frozenset({"day1.parquet"})
        self.stats: dict[str, WindowStats] = {}
        self.calls = 0
        self.finish = True  # False: launched runs stay in flight
        self.crash_at: int | None = None
        self.saved_run_ids: list[str] = []
        self.saves = 0
        self.stop = False  # True: runs are stopped by data validation (a STOP report per run)
        self.schema_version = 1  # the schema version in force (``raymlops schema accept`` raises it)
        self.reports_read: list[str] = []

    def _call(self) -> None:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise Crash(f"killed at port call {self.calls}")

    # store
    def load(self):
        return copy.deepcopy(self.doc)

    def save(self, doc):
        self._call()
        self.saves += 1
        self.doc = json.loads(json.dumps(doc))
        run = doc["state"]["run"]
        if run and run["run_id"]:
            self.saved_run_ids.append(run["run_id"])

    # runner: a run finishes on the first poll after it was launched and registers one version per run id
    def start(self, run_id, resume):
        self._call()
        assert run_id in self.saved_run_ids, "a run must be recorded before it is launched"
        self.launched.append((run_id, resume))
        self.runs.setdefault(run_id, {"done": False})
        self.active_ids = getattr(self, "active_ids", set()) | {run_id}

    def poll(self, run_id):
        self._call()
        if run_id not in getattr(self, "active_ids", set()) or not self.finish:
            return None
        self.active_ids.discard(run_id)
        run = self.runs[run_id]
        if self.stop:
            return RunOutcome(run_id, "blocked", None, "DataValidationError: data validation stopped the pipeline",
                              blocked_by=DATA_VALIDATION, report_uri=f"/reports/{run_id}/report.json")
        if "version" not in run:  # registration is idempotent per run (by package digest in the real one)
            self.registered += 1
            run["version"] = str(self.registered)
        return RunOutcome(run_id, "completed", run["version"])

    def active(self, run_id):
        return run_id in getattr(self, "active_ids", set())

    # serving
    def apply(self, weights):
        self._call()
        self.weights = dict(weights)
        self.weight_changes.append(dict(weights))

    # registry
    def promote(self, version):
        self._call()
        if self.aliases.get("champion") != version:
            if "champion" in self.aliases:
                self.aliases["previous"] = self.aliases["champion"]
            self.aliases["champion"] = version
            self.promotions.append(version)

    def record_decision(self, version, entry):
        self.decisions.append((version, entry.kind))

    # observer
    def window(self, version, start, end, labels_since):
        self._call()
        return self.stats.get(version, WindowStats(version, 0, 0, None, [0] * 10, 0, None, "roc_auc"))

    # notifier
    def send(self, entry):
        self.sent.append(entry.kind)

    # schemas
    def version(self):
        return self.schema_version

    def blocked(self, report_uri):
        self.reports_read.append(report_uri)
        anomaly = {"feature": "tenure_months", "kind": "out_of_range", "observed": {"pct": 9.0, "min": 0, "max": 140},
                   "expected": {"max_pct": 1.0, "min": 1, "max": 79, "enforced": True}}
        return DataBlock(report_uri, self.schema_version, (anomaly,),
                         (f"raymlops schema diff CONFIG --from-report {report_uri}",
                          f"raymlops schema accept CONFIG --from-report {report_uri}"))

    def files_fn(self):
        return self.files

    def ports(self) -> Ports:
        world = self

        class Obs:
            def files(self):
                return world.files

            def window(self, *a):
                return world.window(*a)

        return Ports(store=self, runner=self, serving=self, registry=_Reg(self), observer=Obs(), notifier=self,
                     schemas=self)


class _Reg:
    def __init__(self, world):
        self.w = world

    def aliases(self):
        return dict(self.w.aliases)

    def promote(self, version):
        self.w.promote(version)

    def record_decision(self, version, entry):
        self.w.record_decision(version, entry)


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def healthy(version: str, quality: float = 0.80) -> WindowStats:
    return WindowStats(version, 500, 0, 10.0, [50] * 10, 200, quality, "roc_auc")


def make(world: World, clock: Clock, monitor=None) -> Controller:
    ids = iter(f"run-{i}" for i in range(1, 1000))
    ports = world.ports()
    ports.monitor = monitor
    ctl = Controller(POLICY, TRIGGERS, ports, trigger_interval_s=0.0, monitor_interval_s=None, clock=clock,
                     new_run_id=lambda: next(ids) + f"-{clock.t:.0f}")
    ctl.start()
    return ctl


# ----------------------------------------------------------------------------------------------- behaviour
def test_first_model_is_promoted_and_served_then_a_new_one_goes_on_canary():
    world, clock = World(), Clock()
    ctl = make(world, clock)
    assert world.weights == {} and ctl.state.champion is None
    ctl.trigger("r1")
    assert [resume for _, resume in world.launched] == [False]
    clock.t += 5
    ctl.tick()
    assert world.aliases["champion"] == "1" and world.weights == {"1": 100.0}
    ctl.trigger("r2")
    clock.t += 5
    ctl.tick()
    assert world.weights == {"1": 90.0, "2": 10.0} and ctl.state.rollout.phase == "canary"
    assert ("2", "canary_started") in world.decisions and "canary_started" in world.sent


def test_a_started_controller_takes_the_champion_from_the_registry_and_serves_it():
    world, clock = World({"champion": "3", "previous": "2"}), Clock()
    ctl = make(world, clock)
    assert (ctl.state.champion, ctl.state.previous) == ("3", "2") and world.weights == {"3": 100.0}


def canary_of_2(world: World, clock: Clock) -> Controller:
    world.aliases = {"champion": "1"}
    world.registered = 1
    ctl = make(world, clock)
    ctl.trigger("r")
    clock.t += 1
    ctl.tick()
    assert ctl.state.rollout.canary_version == "2"
    return ctl


def test_a_healthy_canary_steps_up_and_is_promoted():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    world.stats = {"1": healthy("1"), "2": healthy("2")}
    for expected in ({"1": 50.0, "2": 50.0}, {"2": 100.0}):
        clock.t += 61
        ctl.tick()
        assert world.weights == expected
    clock.t += 61
    ctl.tick()
    assert world.promotions == ["2"] and world.aliases == {"champion": "2", "previous": "1"}
    assert ctl.state.champion == "2" and ctl.state.rollout.phase == "idle" and world.weights == {"2": 100.0}


def test_a_worse_canary_is_rolled_back_after_failure_limit_windows_and_aliases_stay():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    world.stats = {"1": healthy("1", 0.80), "2": healthy("2", 0.60)}
    clock.t += 61
    ctl.tick()
    assert world.weights == {"1": 90.0, "2": 10.0} and "canary_check_failed" in world.sent
    clock.t += 61
    ctl.tick()
    assert world.weights == {"1": 100.0} and ctl.state.rollout.phase == "idle"
    assert world.aliases == {"champion": "1"} and world.promotions == []
    assert [k for v, k in world.decisions if v == "2"][-2:] == ["rolling_back", "rolled_back"]


def test_a_canary_without_traffic_holds_and_never_promotes():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    for _ in range(5):
        clock.t += 61
        ctl.tick()
    assert world.weights == {"1": 90.0, "2": 10.0} and ctl.state.rollout.phase == "canary"
    assert world.promotions == [] and any(e.kind == "canary_hold" for e in ctl.state.events)


def test_approval_is_required_when_configured():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1
    ids = iter(["a", "b"])
    ctl = Controller(CanaryPolicy(steps=(100.0,), interval_s=60.0, require_approval=True), TRIGGERS, world.ports(),
                     trigger_interval_s=0.0, monitor_interval_s=None, clock=clock, new_run_id=lambda: next(ids))
    ctl.start()
    ctl.trigger("r")
    clock.t += 1
    ctl.tick()
    world.stats = {"1": healthy("1"), "2": healthy("2")}
    clock.t += 61
    ctl.tick()
    assert ctl.state.rollout.phase == "awaiting_approval" and world.promotions == []
    ctl.command("approve", "op-1")
    assert world.promotions == ["2"] and world.weights == {"2": 100.0}


def test_a_new_version_waiting_for_the_rollout_goes_on_canary_right_after_the_promotion():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    ctl.trigger("r-next")  # v3 is registered while v2 is on canary
    clock.t += 1
    ctl.tick()
    assert ctl.state.pending_canary == "3"
    ctl.command("promote", "op-1")  # PromoteAlias, then a SetWeights that the next canary makes stale
    assert world.aliases["champion"] == "2"
    assert world.weights == {"2": 90.0, "3": 10.0} and ctl.state.rollout.canary_version == "3"


def test_drift_from_the_monitor_fires_a_retraining_run():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1

    class FakeMonitor:
        def __init__(self):
            self.signal = None

        def start(self, *a):
            pass

        def poll(self):
            s, self.signal = self.signal, None
            return s

    mon = FakeMonitor()
    ctl = make(world, clock, monitor=mon)
    mon.signal = MonitorSignal("1", [DriftResult("tenure", "psi", 0.9, 0.2, True)], "1",
                               QualitySignal("1", "roc_auc", 0.8, 100, 0.8), clock.t, {"at": clock.t})
    clock.t += 1
    ctl.tick()
    assert ctl.state.run is not None and ctl.state.run.triggers[0].kind == "drift"
    assert ctl.status()["monitor"] == {"at": clock.t - 1}


def test_new_files_fire_one_run_and_files_landing_during_it_queue_one_more():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1
    ctl = make(world, clock)
    ctl.tick()
    assert ctl.state.run is None  # the first listing is the baseline
    world.files = world.files | {"day2.parquet"}
    clock.t += 1
    ctl.tick()
    assert ctl.state.run is not None and ctl.state.run.triggers[0].kind == "new_data"
    world.finish = False  # keep the run in flight
    world.files = world.files | {"day3.parquet", "day4.parquet"}
    clock.t += 1
    ctl.tick()
    assert [t.kind for t in ctl.state.queue] == ["new_data"] and len(world.launched) == 1


def test_a_failing_notifier_never_stops_the_loop():
    world, clock = World(), Clock()

    def boom(entry):
        raise OSError("webhook down")

    ctl = make(world, clock)
    ctl.ports.notifier.send = boom  # type: ignore[method-assign]
    world.send = boom  # type: ignore[method-assign]
    ctl.trigger("r1")
    clock.t += 1
    ctl.tick()
    assert world.aliases.get("champion") == "1"


def test_restart_resumes_the_recorded_run_by_its_id():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1
    ctl = make(world, clock)
    ctl.trigger("r1")
    run_id = ctl.state.run.run_id
    world.active_ids = set()  # the process died: its task died with it
    make(world, clock)
    assert world.launched[-1] == (run_id, True)


def test_a_run_whose_launch_failed_is_relaunched_on_the_next_poll():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1
    ctl = make(world, clock)
    world.finish = False
    ctl.trigger("r1")
    run_id = ctl.state.run.run_id
    world.active_ids = set()  # e.g. Ray refused the task
    ctl.tick()
    assert world.launched == [(run_id, False), (run_id, True)]
    world.finish = True
    ctl.tick()
    assert ctl.state.run is None and world.registered == 2


# ------------------------------------------------------------------------------------------------ crashes
SCRIPT = ["trigger", "tick", "good", "tick", "tick", "tick", "trigger", "tick", "bad", "tick", "tick", "tick",
          "trigger", "tick", "good", "tick", "tick", "tick", "tick"]


def drive(world: World, clock: Clock, crash_points: list[int]) -> Controller:
    """Run SCRIPT; at each crash point the controller dies at that port call and a new one starts on the store."""
    pending = sorted(crash_points)
    ctl = None
    i = 0
    while i < len(SCRIPT):
        world.crash_at = pending[0] if pending else None
        try:
            if ctl is None:
                ctl = make(world, clock)
            op = SCRIPT[i]
            if op == "trigger":
                ctl.trigger(f"req-{i}")  # a retried request keeps its id
            elif op == "good":
                world.stats = {v: healthy(v) for v in map(str, range(1, 10))}
            elif op == "bad":
                champion = ctl.state.champion
                world.stats = {v: healthy(v, 0.80 if v == champion else 0.55) for v in map(str, range(1, 10))}
            else:
                clock.t += 61
                ctl.tick()
            i += 1
        except Crash:
            pending.pop(0)
            ctl = None
            world.active_ids = set()  # tasks owned by the dead process die with it
            clock.t += 1
    world.crash_at = None
    for _ in range(8):  # let the last decisions settle
        clock.t += 61
        ctl.tick()
    return ctl


def check_consistent(world: World, ctl: Controller) -> None:
    s = ctl.state
    assert world.aliases.get("champion") == s.champion
    assert len(world.promotions) == len(set(world.promotions)), world.promotions
    assert world.weights == {v: w for v, w in s.weights().items() if w > 0}
    seqs = [e.seq for e in s.events]
    assert seqs == sorted(set(seqs))
    promoted = [e.data["version"] for e in s.events if e.kind == "promoted"]
    assert len(promoted) == len(set(promoted)) and promoted == world.promotions
    runs = [rid for rid, _ in world.launched]
    assert len(set(runs)) == world.registered  # every run id registered exactly one version
    assert s.rollout.phase == "idle" and s.run is None


def test_without_crashes_the_script_promotes_the_good_versions_and_rolls_back_the_bad_one():
    world, clock = World(), Clock()
    ctl = drive(world, clock, [])
    check_consistent(world, ctl)
    assert world.promotions == ["1", "3"]
    assert [e.data["version"] for e in ctl.state.events if e.kind == "rolled_back"] == ["2"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=4, unique=True))
def test_crashes_at_any_port_calls_leave_a_consistent_world(points):
    world, clock = World(), Clock()
    ctl = drive(world, clock, points)
    check_consistent(world, ctl)
    assert world.promotions == ["1", "3"]


def test_the_persisted_doc_is_strict_json():
    world, clock = World(), Clock()
    drive(world, clock, [])
    text = json.dumps(world.doc, allow_nan=False)
    assert json.loads(text)["state"]["champion"] == "3"


@pytest.mark.parametrize("bad", ["promote", "approve"])
def test_commands_without_a_canary_are_rejected_with_a_reason(bad):
    world, clock = World({"champion": "1"}), Clock()
    ctl = make(world, clock)
    entry = ctl.command(bad, "op-1")
    assert entry.kind == "rejected" and world.promotions == []


class GatedExposure:
    """Pre-exposure tests that last until ``release`` (or raise ``error``), as a preview app and load test do."""

    def __init__(self, error: Exception | None = None):
        import threading

        self.release, self.started, self.error = threading.Event(), threading.Event(), error

    def test(self, version, champion):
        from raymlops.control.state import ExposureTested

        self.started.set()
        assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return ExposureTested(version, True, (), ({"name": "contract", "passed": True},))


def exposed(world: World, clock: Clock, exposure: GatedExposure) -> Controller:
    world.aliases, world.registered = {"champion": "1"}, 1
    ports = world.ports()
    ports.exposure = exposure
    ctl = Controller(POLICY, TRIGGERS, ports, trigger_interval_s=0.0, monitor_interval_s=None, clock=clock,
                     pre_exposure=True)
    ctl.start()
    ctl.trigger("r")
    clock.t += 1
    ctl.tick()
    assert exposure.started.wait(10) and ctl.state.rollout.phase == "testing"
    return ctl


def test_pre_exposure_tests_run_off_the_lock_and_their_result_is_collected_by_a_later_tick():
    world, clock, exposure = World(), Clock(), GatedExposure()
    ctl = exposed(world, clock, exposure)
    # While the tests run, the controller answers and serves only the champion.
    assert ctl.status()["rollout"]["phase"] == "testing" and world.weights == {"1": 100.0}
    ctl.tick()
    assert ctl.state.rollout.phase == "testing"
    exposure.release.set()
    ctl._exposure[1].result(timeout=10)
    ctl.tick()
    assert ctl.state.rollout.phase == "canary" and world.weights == {"1": 90.0, "2": 10.0}
    kinds = [e.kind for e in ctl.state.events]
    assert kinds.index("exposure_testing") < kinds.index("exposure_passed") < kinds.index("canary_started")


def test_pre_exposure_tests_that_cannot_run_block_the_version_with_the_reason():
    world, clock, exposure = World(), Clock(), GatedExposure(error=RuntimeError("preview app did not start"))
    ctl = exposed(world, clock, exposure)
    exposure.release.set()
    with pytest.raises(RuntimeError):
        ctl._exposure[1].result(timeout=10)
    ctl.tick()
    blocked = [e for e in ctl.state.events if e.kind == "exposure_blocked"]
    assert ctl.state.rollout.phase == "idle" and world.weights == {"1": 100.0}
    assert blocked and "preview app did not start" in blocked[-1].message


# ------------------------------------------------------------------------------------------ data blocked
def stopped_by_validation(world: World, clock: Clock) -> Controller:
    """New data landed, and its run was stopped by data validation against schema v1."""
    world.aliases, world.registered, world.stop = {"champion": "1"}, 1, True
    ctl = make(world, clock)
    ctl.tick()  # the first listing is the baseline
    world.files = world.files | {"day2.parquet"}
    clock.t += 1
    ctl.tick()  # new data: run-1 launched
    clock.t += 1
    ctl.tick()  # run-1 stopped
    assert len(world.launched) == 1 and ctl.state.blocked is not None
    return ctl


def test_a_stopped_run_is_reported_with_its_anomalies_and_no_run_follows_until_a_schema_is_accepted():
    world, clock = World(), Clock()
    ctl = stopped_by_validation(world, clock)
    run_id = world.launched[0][0]
    assert world.reports_read == [f"/reports/{run_id}/report.json"] and "blocked" in world.sent
    b = ctl.status()["blocked"]
    assert b["run_id"] == run_id and b["schema_version"] == 1 and b["files"] == ["day1.parquet", "day2.parquet"]
    assert b["commands"][1] == f"raymlops schema accept CONFIG --from-report /reports/{run_id}/report.json"
    message = ctl.state.events[-1].message
    assert "'tenure_months' out_of_range: 9.0% of values outside [1, 79]" in message and "schema diff" in message
    saves = world.saves
    for day in range(3, 8):  # no retrain storm: more data lands, polls go by, nothing runs
        world.files = world.files | {f"day{day}.parquet"}
        clock.t += 60
        ctl.tick()
        clock.t += 60
        ctl.tick()  # a quiet poll while blocked persists nothing
    assert len(world.launched) == 1 and ctl.state.run is None
    assert world.saves == saves + 5  # one per batch of new files (its trigger bookkeeping and the held note)
    world.schema_version = 2  # `raymlops schema accept` made v2
    clock.t += 1
    ctl.tick()
    assert len(world.launched) == 2 and ctl.state.run.triggers[0].kind == "retry"
    assert [e.kind for e in ctl.state.events[-3:]] == ["unblocked", "run_requested", "run_started"]
    world.stop = False
    clock.t += 1
    ctl.tick()
    assert ctl.state.blocked is None and ctl.state.rollout.canary_version == "2" and len(world.launched) == 2


def test_a_retry_that_stops_again_is_blocked_again_and_not_retried_in_a_loop():
    world, clock = World(), Clock()
    ctl = stopped_by_validation(world, clock)
    world.schema_version = 2
    for _ in range(10):
        clock.t += 1
        ctl.tick()
    assert len(world.launched) == 2  # the retry, once, and it stopped again
    assert ctl.state.blocked.attempts == 2 and ctl.state.blocked.schema_version == 2
    assert [e.kind for e in ctl.state.events].count("blocked") == 2


def test_an_unreadable_report_still_parks_the_data_and_says_why():
    world, clock = World(), Clock()

    def broken(report_uri):
        raise OSError("permission denied")

    world.blocked = broken  # type: ignore[method-assign]
    ctl = stopped_by_validation(world, clock)
    b = ctl.state.blocked
    assert b.schema_version == 1 and b.anomalies == [] and "permission denied" in b.note
    assert "anomalies unknown (report /reports/" in ctl.state.events[-1].message
    world.schema_version = 2
    clock.t += 1
    ctl.tick()
    assert len(world.launched) == 2


def test_a_restarted_controller_keeps_the_data_parked():
    world, clock = World(), Clock()
    stopped_by_validation(world, clock)
    ctl = make(world, clock)
    for _ in range(3):
        clock.t += 60
        ctl.tick()
    assert len(world.launched) == 1 and ctl.state.blocked is not None
    world.files = world.files - {"day2.parquet"}  # the bad file was removed at the source
    clock.t += 1
    ctl.tick()
    assert len(world.launched) == 2 and ctl.state.run.triggers[0].kind == "retry"
