"""No lock across a port call (issue 13, item 7): while a port hangs, status, events and commands still answer.

Each test blocks a port on an Event and checks, while it is still blocked, that the controller answered. The only
timeouts are safety nets so that a regression fails instead of hanging the suite; nothing asserts a duration.
"""

from __future__ import annotations

import threading

from raymlops.control.controller import Controller, Deadlines
from tests.unit.test_controller_shell import POLICY, TRIGGERS, Clock, World, canary_of_2, healthy

SAFETY_S = 30.0  # a regression (a lock held across the call) would wait for the port forever: fail instead


class Hang:
    """Replaces a World port: the call signals ``entered`` and blocks until ``release``."""

    def __init__(self, world: World, name: str):
        self.real = getattr(world, name)
        self.entered, self.release, self.returned = threading.Event(), threading.Event(), threading.Event()
        setattr(world, name, self)

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(SAFETY_S)
        try:
            return self.real(*args, **kwargs)
        finally:
            self.returned.set()


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err
        finally:
            out["done"] = True

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def answers(fn):
    """Call ``fn`` on another thread; its value once it returned (None if it did not within the safety net)."""
    t, out = in_thread(fn)
    t.join(SAFETY_S)
    if "error" in out:
        raise out["error"]
    return out.get("value", None) if out.get("done") else None


def test_status_events_and_commands_answer_while_the_canary_analysis_reads_logs():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    world.stats = {"1": healthy("1"), "2": healthy("2")}
    hang = Hang(world, "window")
    clock.t += 61
    ticker, _ = in_thread(ctl.tick)
    assert hang.entered.wait(SAFETY_S)

    status = answers(ctl.status)
    assert status is not None and status["rollout"]["phase"] == "canary"
    assert not hang.returned.is_set()
    events = answers(ctl.events)
    assert events and events[-1]["kind"] == "canary_started"
    paused = answers(lambda: ctl.command("pause", "op-1"))
    assert paused is not None and paused.kind == "paused"
    assert not hang.returned.is_set()  # all of it answered while the analysis was still reading

    hang.release.set()
    ticker.join(SAFETY_S)
    # Paused meanwhile: the analysis that was in flight takes no decision.
    assert ctl.state.paused and ctl.state.rollout.phase == "canary" and world.weights == {"1": 90.0, "2": 10.0}


def test_a_rollback_is_decided_and_persisted_while_serving_hangs_and_carried_out_after():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    hang = Hang(world, "apply")
    entry = answers(lambda: ctl.command("rollback", "op-1"))  # its effect (the split) hangs in the serving port
    assert hang.entered.wait(SAFETY_S)
    assert entry is not None and entry.kind == "rolling_back"
    assert world.doc["state"]["rollout"]["phase"] == "rolling_back"  # decided and persisted before acting
    assert answers(ctl.status)["rollout"]["phase"] == "rolling_back" and not hang.returned.is_set()
    hang.release.set()
    assert hang.returned.wait(SAFETY_S)
    ctl.tick()
    assert world.weights == {"1": 100.0} and ctl.state.rollout.phase == "idle"


def test_a_port_call_past_its_deadline_is_retried_and_the_loop_goes_on():
    world, clock = World(), Clock()
    world.aliases, world.registered = {"champion": "1"}, 1
    ctl = Controller(POLICY, TRIGGERS, world.ports(), trigger_interval_s=0.0, monitor_interval_s=None, clock=clock,
                     deadlines=Deadlines(serving_s=0.05))
    hang = Hang(world, "apply")
    ctl.start()  # serving the champion hangs past its deadline: start returns all the same
    assert hang.entered.is_set() and not hang.returned.is_set()
    retry = ctl.status()["retrying"]["serving"]
    assert "did not return within 0.05 s" in retry["error"]
    clock.t += 61
    ctl.tick()  # the hung call still holds the serving port: no second call piles up
    assert ctl.status()["retrying"]["serving"]["failures"] == 2 and "still busy" in \
        ctl.status()["retrying"]["serving"]["error"]
    hang.release.set()
    assert hang.returned.wait(SAFETY_S)
    clock.t += 61
    ctl.tick()
    assert world.weights == {"1": 100.0} and ctl.status()["retrying"] == {}
