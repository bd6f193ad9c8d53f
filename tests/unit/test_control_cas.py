"""Races (issue 13, item 9): compare-and-swap writes of deployments.json and state.json, the controller lease, and
traffic commands refused while a controller runs. Real files in a temporary directory; no Ray."""

from __future__ import annotations

import threading

import pytest

from raymlops.config import Config
from raymlops.control.statefile import FileStateStore, Lease, lease_uri, read_lease, state_uri
from raymlops.errors import ConcurrentUpdateError, ControllerError
from raymlops.pipeline import delivery
from raymlops.storage import cas
from tests.unit.test_controller_shell import POLICY, TRIGGERS, Clock, World


class Clocked:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(tmp_path, name: str = "races") -> Config:
    return Config(name=name, storage_uri=str(tmp_path / "store"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


# ---------------------------------------------------------------------------------------------------- cas
def test_a_write_from_a_stale_generation_is_refused_and_update_keeps_both_changes(tmp_path):
    uri = str(tmp_path / "doc.json")
    assert cas.read(uri) == cas.Versioned(None, 0)
    assert cas.write(uri, {"n": 1}, 0) == 1
    with pytest.raises(ConcurrentUpdateError, match="generation 1, expected 0"):
        cas.write(uri, {"n": 99}, 0)
    assert cas.read(uri).doc["n"] == 1
    done = cas.update(uri, lambda d: {"n": d["n"] + 1})
    assert done == {"n": 2, "generation": 2} and cas.read(uri).generation == 2


def test_two_run_counts_racing_on_deployments_json_both_count(tmp_path, monkeypatch):
    """One count reads, another reads, writes and returns, then the first writes: without a compare-and-swap the
    second count is lost. The interleaving is forced with events, not left to timing."""
    cfg = Config(name="dl", storage_uri=str(tmp_path / "store"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                 environments={"staging": {"set": {}}}, environment="staging")
    real = delivery.core.record_run
    first_read, second_done = threading.Event(), threading.Event()

    def record_run(state, digest, registered):
        if threading.current_thread().name == "first" and not first_read.is_set():
            first_read.set()
            assert second_done.wait(30)  # the other count completes between this read and its write
        return real(state, digest, registered)

    monkeypatch.setattr(delivery.core, "record_run", record_run)
    first = threading.Thread(target=delivery.on_run_finished, args=(cfg, "d" * 64, True), name="first")
    first.start()
    assert first_read.wait(30)
    delivery.on_run_finished(cfg, "d" * 64, True)
    second_done.set()
    first.join(30)
    assert delivery.env_state(cfg).runs["d" * 64] == {"runs": 2, "models": 2}


# ---------------------------------------------------------------------------------------------- state.json
def test_a_second_writer_of_the_state_file_is_refused_not_silently_overwritten(tmp_path):
    cfg = config(tmp_path)
    a, b = FileStateStore(state_uri(cfg)), FileStateStore(state_uri(cfg))
    assert a.load() is None and b.load() is None
    a.save({"state": {"champion": "1"}})
    with pytest.raises(ConcurrentUpdateError, match="lost its lease"):
        b.save({"state": {"champion": "2"}})  # computed from a state that is no longer the latest
    assert FileStateStore(state_uri(cfg)).load()["state"] == {"champion": "1"}
    assert b.load()["state"] == {"champion": "1"}  # after a fresh load it may write again
    b.save({"state": {"champion": "2"}})


def test_a_controller_whose_state_was_written_by_another_stops_acting(tmp_path):
    from raymlops.control.controller import Controller

    cfg = config(tmp_path)
    world, clock = World({"champion": "1"}), Clock()
    ports = world.ports()
    ports.store = FileStateStore(state_uri(cfg))
    ctl = Controller(POLICY, TRIGGERS, ports, trigger_interval_s=0.0, monitor_interval_s=None, clock=clock)
    ctl.start()
    other = FileStateStore(state_uri(cfg))
    other.save({**other.load(), "note": "another controller took over"})
    with pytest.raises(ConcurrentUpdateError):
        ctl.command("pause", "op-1")
    assert ctl.status()["fenced"] and not ctl.state.paused
    with pytest.raises(ControllerError, match="stopped acting"):
        ctl.tick()


# --------------------------------------------------------------------------------------------------- lease
def test_a_second_controller_is_refused_with_the_holder_and_how_to_take_over(tmp_path):
    cfg, clock = config(tmp_path), Clocked()
    first = Lease(lease_uri(cfg), "actor-a", "controller actor-a (pid 1 on host-a)", 30.0, clock)
    assert first.acquire(cfg.name) is None
    second = Lease(lease_uri(cfg), "actor-b", "controller actor-b (pid 2 on host-b)", 30.0, clock)
    with pytest.raises(ControllerError) as err:
        second.acquire(cfg.name)
    assert "actor-a (pid 1 on host-a)" in str(err.value) and "--take-over" in str(err.value)
    # A restart of the same actor (same owner id) gets its lease back at once.
    assert Lease(lease_uri(cfg), "actor-a", "controller actor-a (restarted)", 30.0, clock).acquire(cfg.name) is None


def test_a_taken_over_lease_stops_the_old_holder_at_its_next_renewal(tmp_path):
    cfg, clock = config(tmp_path), Clocked()
    old = Lease(lease_uri(cfg), "actor-a", "controller a", 30.0, clock)
    old.acquire(cfg.name)
    clock.t += 10
    old.renew()
    new = Lease(lease_uri(cfg), "actor-b", "controller b", 30.0, clock)
    taken = new.acquire(cfg.name, take_over=True)
    assert taken is not None and taken.holder == "controller a"
    with pytest.raises(ControllerError, match="lost its lease to controller b"):
        old.renew()
    old.release()  # not its lease any more: left alone
    assert read_lease(cfg).holder == "controller b"


def test_an_expired_or_released_lease_is_free(tmp_path):
    cfg, clock = config(tmp_path), Clocked()
    Lease(lease_uri(cfg), "actor-a", "controller a", 30.0, clock).acquire(cfg.name)
    clock.t += 31  # a is gone (its cluster died): after the lease ran out, b starts
    b = Lease(lease_uri(cfg), "actor-b", "controller b", 30.0, clock)
    assert b.acquire(cfg.name).holder == "controller a"
    b.release()
    assert read_lease(cfg) is None
    Lease(lease_uri(cfg), "actor-c", "controller c", 30.0, clock).acquire(cfg.name)


# -------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [["serve", "weights", "{config}", "1=100"], ["deploy", "{config}"],
                                  ["undeploy", "{config}"]])
def test_traffic_commands_are_refused_while_a_controller_holds_the_lease(tmp_path, argv, capsys):
    import time

    from raymlops.cli import main

    path = tmp_path / "races.yaml"
    path.write_text(f"name: races\nstorage_uri: {tmp_path / 'store'}\ntracking_uri: sqlite:///{tmp_path}/m.db\n")
    cfg = config(tmp_path)
    Lease(lease_uri(cfg), "actor-a", "controller actor-a (pid 1 on host-a)", 30.0, time.time).acquire(cfg.name)
    code = main([a.format(config=path) for a in argv])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert code == 2, text
    assert "refused" in text and "actor-a" in text and "raymlops promote CONFIG VERSION" in text
    assert "raymlops controller pause CONFIG" in text
