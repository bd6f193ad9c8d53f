"""Who acted (issue 13, item 13): every event an operator command logs names the operator, from the state machine
through the controller shell to `raymlops events`; the default is the OS user. No Ray."""

from __future__ import annotations

import getpass

from typer.testing import CliRunner

from raymlops.control import operations
from raymlops.control.state import Manual, step
from tests.unit.test_controller_shell import POLICY, TRIGGERS, Clock, World
from tests.unit.test_controller_state import new_state, with_canary


def test_every_event_of_a_manual_command_names_its_operator():
    s, clock = with_canary()
    before = s.next_seq
    s, _ = step(s, Manual("promote", "op-1", operator="alice"), clock())
    s, _ = step(s, Manual("rollback", "op-2", operator="bob"), clock())  # stops the promotion
    s, _ = step(s, Manual("approve", "op-3", operator="carol"), clock())  # refused: the refusal names her too
    by = {e.kind: e.data.get("operator") for e in s.events if e.seq >= before}
    assert by.pop("rejected") == "carol"
    assert by == {"promoting": "alice", "rolling_back": "bob"}
    s2, _ = step(new_state("1"), Manual("pause", "op-4"), clock())
    assert s2.events[-1].data["operator"] == "unknown"  # a command that did not say who: never silently blank


def test_the_controller_records_the_operator_of_commands_and_run_requests():
    from raymlops.control.controller import Controller

    world, clock = World({"champion": "1"}), Clock()
    ctl = Controller(POLICY, TRIGGERS, world.ports(), trigger_interval_s=0.0, monitor_interval_s=None, clock=clock)
    ctl.start()
    assert ctl.command("pause", "op-1", operator="dana").data["operator"] == "dana"
    rid = ctl.trigger("req-1", operator="erin")
    ctl.trigger("req-1", operator="erin")  # a retried request counts (and is recorded) once
    asked = [e for e in ctl.state.events if e.kind == "trigger_requested"]
    assert [(e.data["operator"], e.data["request_id"]) for e in asked] == [("erin", rid)]
    ctl.close()


def test_the_operator_defaults_to_the_os_user_and_never_fails(monkeypatch):
    assert operations.operator_name("frank") == "frank"
    assert operations.operator_name(None) == getpass.getuser()

    def no_user():
        raise OSError("no user name for uid 1234")  # a container running under a bare uid

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert operations.operator_name(None) == "unknown"


def test_events_are_printed_with_their_operator(capsys):
    from raymlops.cli._common import echo_event

    echo_event({"seq": 7, "at": 0.0, "kind": "paused", "message": "controller paused", "data": {"operator": "gina"}})
    echo_event({"seq": 8, "at": 0.0, "kind": "run_requested", "message": "run requested by schedule", "data": {}})
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("controller paused  (by gina)") and out[1].endswith("run requested by schedule")


def test_every_operator_command_takes_as():
    from raymlops.cli import app

    for argv in (["promote"], ["rollback"], ["approve"], ["controller", "pause"], ["controller", "resume"],
                 ["trigger"]):
        help_text = CliRunner().invoke(app, [*argv, "--help"], terminal_width=200).output
        assert "--as" in help_text and "who is acting" in help_text, argv
