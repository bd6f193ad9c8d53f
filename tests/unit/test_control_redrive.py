"""A transient failure must not wedge a rollback or a promotion (issue 13, item 2).

The ports here raise an ordinary exception while the process lives (the shell tests in test_controller_shell model
every failure as a process death): the owed effect is re-driven on later polls with backoff, and an operator's
rollback is never refused as "in progress".
"""

from __future__ import annotations

from raymlops.control.canary import RolloutState
from raymlops.control.state import Applied, ControllerState, Manual, Restarted, RestoreAlias, SetWeights, step
from tests.unit.test_controller_shell import Clock, World, canary_of_2, healthy, make


class Flaky:
    """Makes a World port raise ``OSError`` for the next ``n`` calls, then behave."""

    def __init__(self, world: World, name: str, n: int):
        self.world, self.n, self.calls = world, n, 0
        self.real = getattr(world, name)
        setattr(world, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.n > 0:
            self.n -= 1
            raise OSError("Serve controller unreachable (transient)")
        return self.real(*args, **kwargs)


# --------------------------------------------------------------------------------------------- state machine
def promoting_state() -> ControllerState:
    s = ControllerState(canary_steps=[10.0, 100.0], champion="1")
    s.rollout = RolloutState("promoting", "2", "1", [], 0, 100.0, 0, 0.0, 0.0)
    s.handled_versions = ["2"]
    return s


def test_an_operator_rollback_during_a_rollback_is_accepted_not_refused():
    s = ControllerState(canary_steps=[10.0, 100.0], champion="1")
    s.rollout = RolloutState("rolling_back", "2", "1", [10.0, 100.0], 0, 0.0, 0, 0.0, 0.0)
    s2, actions = step(s, Manual("rollback", "op-1"), 10.0)
    assert s2.events[-1].kind == "rollback_retried" and s2.rollout.phase == "rolling_back"
    assert all(e.kind != "rejected" for e in s2.events)


def test_an_operator_rollback_stops_a_promotion_and_restores_the_champion_alias():
    s2, actions = step(promoting_state(), Manual("rollback", "op-1"), 10.0)
    assert s2.rollout.phase == "rolling_back" and s2.restore_alias == "1"
    assert RestoreAlias("1") in actions and SetWeights({"1": 100.0}) in actions
    # A restart before the alias was restored owes it again.
    _, redo = step(s2, Restarted(), 11.0)
    assert RestoreAlias("1") in redo
    s3, _ = step(s2, Applied("restore", "1"), 12.0)
    s4, _ = step(s3, Applied("rollback", "2"), 13.0)
    assert s4.restore_alias is None and s4.rollout.phase == "idle" and s4.champion == "1"
    assert [e.kind for e in s4.events][-2:] == ["alias_restored", "rolled_back"]


def test_a_rollback_of_the_first_promotion_is_refused_with_the_reason():
    s = ControllerState(canary_steps=[10.0, 100.0])
    s.rollout = RolloutState("promoting", "1", None, [], 0, 100.0, 0, 0.0, 0.0)
    s2, _ = step(s, Manual("rollback", "op-1"), 10.0)
    assert s2.events[-1].kind == "rejected" and "no champion to return to" in s2.events[-1].message


# ----------------------------------------------------------------------------------------------- the shell
def test_a_serving_failure_during_a_rollback_is_retried_with_backoff_until_it_goes_through():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    flaky = Flaky(world, "apply", 3)
    entry = ctl.command("rollback", "op-1")
    assert entry.kind == "rolling_back"
    assert ctl.state.rollout.phase == "rolling_back" and world.weights == {"1": 90.0, "2": 10.0}
    retry = ctl.status()["retrying"]["serving"]
    assert retry["failures"] == 1 and "unreachable" in retry["error"]
    # The operator asks again: accepted (not "in progress"), and retried at once without waiting for the backoff.
    again = ctl.command("rollback", "op-2")
    assert again.kind == "rollback_retried" and flaky.calls == 2
    for _ in range(5):  # polls while the process lives: the backoff (1, 2, 4 s ...) lets each one retry
        clock.t += 61
        ctl.tick()
    assert world.weights == {"1": 100.0} and ctl.state.rollout.phase == "idle"
    assert ctl.status()["retrying"] == {} and flaky.calls == 4
    kinds = [e.kind for e in ctl.state.events]
    assert "retrying" in kinds and kinds[-1] == "rolled_back"


def test_a_registry_failure_during_a_promotion_is_retried_on_later_polls():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    world.stats = {"1": healthy("1"), "2": healthy("2")}
    flaky = Flaky(world, "promote", 2)
    ctl.command("promote", "op-1")
    assert ctl.state.rollout.phase == "promoting" and world.aliases == {"champion": "1"}
    clock.t += 0.5
    ctl.tick()  # inside the backoff: not retried yet
    assert flaky.calls == 1
    for _ in range(3):
        clock.t += 61
        ctl.tick()
    assert world.aliases == {"champion": "2", "previous": "1"} and ctl.state.champion == "2"
    assert ctl.state.rollout.phase == "idle" and world.weights == {"2": 100.0}


def test_an_operator_rollback_during_a_failing_promotion_restores_the_alias_and_the_split():
    world, clock = World(), Clock()
    ctl = canary_of_2(world, clock)
    Flaky(world, "apply", 1)  # the promotion moves the alias, then serving fails once
    ctl.command("promote", "op-1")
    assert world.aliases["champion"] == "2" and ctl.state.champion == "2"
    # Promoted already: a rollback now returns to the previous champion (a promotion of 1).
    entry = ctl.command("rollback", "op-2")
    assert entry.kind == "promoting" and world.aliases["champion"] == "1" and world.weights == {"1": 100.0}

    world2, clock2 = World(), Clock()
    ctl2 = canary_of_2(world2, clock2)
    Flaky(world2, "promote", 100)  # the registry is down: the promotion cannot finish
    ctl2.command("promote", "op-1")
    assert ctl2.state.rollout.phase == "promoting"
    entry = ctl2.command("rollback", "op-2")
    assert entry.kind == "rolling_back" and ctl2.state.restore_alias == "1"
    clock2.t += 61
    ctl2.tick()  # restoring the alias still fails: the rollback waits for it, the champion serves alone
    assert ctl2.state.rollout.phase == "rolling_back" and world2.weights == {"1": 100.0}
    world2.promote = world2.promote.real  # the registry is back
    clock2.t += 61
    ctl2.tick()
    assert ctl2.state.rollout.phase == "idle" and ctl2.state.restore_alias is None
    assert world2.aliases == {"champion": "1"} and ctl2.state.champion == "1"


def test_a_run_launch_that_raises_is_relaunched_by_id_on_a_later_poll():
    world, clock = World({"champion": "1"}), Clock()
    world.registered = 1
    ctl = make(world, clock)
    world.finish = False
    flaky = Flaky(world, "start", 2)  # the launch, and its immediate retry by id
    ctl.trigger("r1")
    run_id = ctl.state.run.run_id
    assert run_id is not None and world.launched == []
    clock.t += 61
    ctl.tick()
    assert world.launched == [(run_id, True)] and flaky.calls >= 2
