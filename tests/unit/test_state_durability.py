"""Durability of what the controller and the feature store keep on disk (issue 13, item 13): ``state.json.prev``
takes over when ``state.json`` is unreadable, and the SQLite online store file is private. Real files, no Ray."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from raymlops import storage
from raymlops.config import Config
from raymlops.control.statefile import FileStateStore, read_saved, state_uri
from raymlops.errors import ControllerError
from raymlops.storage import cas
from tests.unit.test_controller_shell import POLICY, TRIGGERS, Clock, World


def config(tmp_path) -> Config:
    return Config(name="durable", storage_uri=str(tmp_path / "store"), tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_every_state_save_keeps_the_version_it_replaced(tmp_path):
    uri = state_uri(config(tmp_path))
    store = FileStateStore(uri)
    store.load()
    store.save({"state": {"champion": "1"}})
    store.save({"state": {"champion": "2"}})
    assert cas.read(storage.previous_uri(uri)).doc["state"] == {"champion": "1"}
    assert cas.read(uri).doc["state"] == {"champion": "2"}


def test_a_truncated_state_json_is_loaded_from_prev_and_the_controller_goes_on(tmp_path, caplog):
    from raymlops.control.controller import Controller

    cfg = config(tmp_path)
    uri = state_uri(cfg)
    world, clock = World({"champion": "1"}), Clock()
    ports = world.ports()
    ports.store = FileStateStore(uri)
    ctl = Controller(POLICY, TRIGGERS, ports, trigger_interval_s=0.0, monitor_interval_s=None, clock=clock)
    ctl.start()
    ctl.command("pause", "op-1")  # state.json: paused; state.json.prev: the state before
    ctl.command("resume", "op-2")  # state.json: running again; .prev: paused
    ctl.close()
    path = storage.resolve(uri)[1]
    with open(path, "rb+") as f:  # a crash or a full disk left half a document
        f.truncate(os.path.getsize(path) // 2)

    restarted = FileStateStore(uri)
    with caplog.at_level(logging.WARNING, logger="raymlops.control.statefile"):
        ctl2 = Controller(POLICY, TRIGGERS, _with_store(world, restarted),
                          trigger_interval_s=0.0, monitor_interval_s=None, clock=clock)
        ctl2.start()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert path in warned and storage.previous_uri(path) in warned
    assert ctl2.state.champion == "1" and ctl2.state.paused  # the .prev version: after pause, before resume
    ctl2.command("resume", "op-3")  # the next save replaces the unreadable file
    ctl2.close()
    assert read_saved(cfg).state["paused"] is False
    assert cas.read(storage.previous_uri(uri)).doc is not None  # the unreadable version was not kept as .prev


def _with_store(world, store):
    ports = world.ports()
    ports.store = store
    return ports


def test_an_unreadable_state_without_prev_is_refused_naming_both_files(tmp_path):
    uri = state_uri(config(tmp_path))
    storage.atomic_write_text(uri, '{"format": 1, "sta')
    with pytest.raises(ControllerError, match="state.json.prev") as err:
        FileStateStore(uri).load()
    assert "state.json is not valid JSON" in str(err.value)


def test_the_sqlite_online_store_is_private_whatever_the_umask(tmp_path):
    from raymlops.features.stores import SQLiteOnlineStore

    old = os.umask(0)
    try:
        store = SQLiteOnlineStore(tmp_path / "features" / "online.sqlite")
        store.write("v", ["k"], [1], ['{"x": 1}'], watermark_us=1, replace=False)
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "features"):  # the database and its WAL files
        assert stat.S_IMODE(os.stat(tmp_path / "features" / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(tmp_path / "features").st_mode) == 0o700
