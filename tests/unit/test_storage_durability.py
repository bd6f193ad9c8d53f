"""Storage writes are private (0600 files, 0700 directories, whatever the umask), fsynced, and keep `.prev`."""

from __future__ import annotations

import os
import stat

import pytest

from raymlops import storage


@pytest.fixture
def open_umask():
    old = os.umask(0o000)  # the worst case: everything created world-writable unless the code says otherwise
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_are_private_whatever_the_umask(tmp_path, open_umask):
    target = tmp_path / "store" / "a" / "b" / "state.json"
    storage.atomic_write_text(str(target), "{}")
    assert mode(target) == 0o600
    for d in (tmp_path / "store", tmp_path / "store" / "a", tmp_path / "store" / "a" / "b"):
        assert mode(d) == 0o700, d
    assert storage.mode_of(str(target)) == 0o600


def test_an_existing_world_readable_file_becomes_private_when_rewritten(tmp_path, open_umask):
    target = tmp_path / "log.parquet"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    storage.atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_makedirs_and_staged_dirs_are_private(tmp_path, open_umask):
    storage.makedirs(str(tmp_path / "x" / "y"))
    assert mode(tmp_path / "x") == 0o700 and mode(tmp_path / "x" / "y") == 0o700
    with storage.staged_dir(str(tmp_path / "out")) as tmp:
        assert mode(tmp) == 0o700
        (open(os.path.join(tmp, "_SUCCESS"), "w")).close()
    assert mode(tmp_path / "out") == 0o700


def test_the_file_and_its_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.basename(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    storage.atomic_write_bytes(str(tmp_path / "f.bin"), b"data")
    assert events == [("fsync", False), ("replace", "f.bin"), ("fsync", True)]


def test_keep_previous_keeps_the_replaced_version(tmp_path):
    uri = str(tmp_path / "state.json")
    storage.atomic_write_text(uri, "v1", keep_previous=True)
    assert not os.path.exists(storage.previous_uri(uri))  # nothing was replaced yet
    storage.atomic_write_text(uri, "v2", keep_previous=True)
    storage.atomic_write_text(uri, "v3", keep_previous=True)
    assert storage.read_text(uri) == "v3" and storage.read_text(storage.previous_uri(uri)) == "v2"
    assert mode(storage.previous_uri(uri)) == 0o600
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    uri = str(tmp_path / "f.txt")
    storage.atomic_write_text(uri, "old")

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        storage.atomic_write_text(uri, "new")
    assert storage.read_text(uri) == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
