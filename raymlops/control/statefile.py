"""The controller's persisted state and its lease: where they live and their layout, the one owner of both.

The controller writes its state after every transition (through ``FileStateStore``); ``raymlops status``,
``raymlops events`` and the demo read it without Ray through ``read_saved``.

One controller at a time may write a pipeline's state: the one holding its lease (``Lease``, ``lease.json`` beside
the state), which it renews while it runs and releases when stopped. A second controller (another cluster sharing
the storage, a forgotten process) is refused at start with the holder's name, and every state write is a
compare-and-swap on the state's generation (``raymlops.storage.cas``), so a controller that lost its lease cannot
overwrite what the new holder wrote: its next save fails and it stops acting.

Every state write keeps the version it replaced as ``state.json.prev``: when ``state.json`` is not valid JSON (a
crash or a full disk on a filesystem that dropped the fsync), the state loads from ``.prev`` (one transition older;
the controller re-derives its owed effects on restart) with a warning, and the next save replaces the bad file.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from raymlops import storage
from raymlops.errors import ConcurrentUpdateError, ControllerError
from raymlops.storage import cas

__all__ = ["FORMAT", "FileStateStore", "Lease", "LeaseInfo", "Saved", "controller_dir", "lease_uri", "read_lease",
           "read_saved", "state_uri"]

FORMAT = 1

logger = logging.getLogger(__name__)


def controller_dir(cfg: Any) -> str:
    """``{storage_uri}/controller/{name}``: the state file and the runs' result files."""
    return storage.join(cfg.storage_uri, "controller", cfg.name)


def state_uri(cfg: Any) -> str:
    """Where the controller persists its state (readable without Ray: `raymlops events` and `status` use it)."""
    return storage.join(controller_dir(cfg), "state.json")


@dataclass
class Saved:
    """One saved document: the state machine's state (as its dict), the weights timeline and monitor passes."""

    state: dict[str, Any]
    timeline: list[Any] = field(default_factory=list)
    monitor: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.state.get("events", []))

    def to_doc(self) -> dict[str, Any]:
        return {"format": FORMAT, "state": self.state, "timeline": self.timeline, "monitor": self.monitor}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Saved:
        return cls(state=doc["state"], timeline=list(doc.get("timeline", [])), monitor=list(doc.get("monitor", [])))


class FileStateStore:
    """The controller's ``StateStore`` port on storage: atomic writes, each a compare-and-swap on the generation
    this store last loaded or wrote (``ConcurrentUpdateError`` when another controller wrote in between), each
    keeping the version it replaced as ``state.json.prev``."""

    def __init__(self, uri: str):
        self.uri = uri
        self.generation = 0

    def load(self) -> dict[str, Any] | None:
        """The saved document (None before the first save); from ``state.json.prev`` when ``state.json`` is not
        valid JSON. ``ControllerError`` naming both files when neither is readable."""
        try:
            found = cas.read(self.uri)
        except ValueError as err:
            found = self._load_previous(err)
        self.generation = found.generation
        return found.doc

    def _load_previous(self, err: ValueError) -> cas.Versioned:
        prev = storage.previous_uri(self.uri)
        try:
            found = cas.read(prev)
        except ValueError:
            found = cas.Versioned(None, 0)
        if found.doc is None:
            raise ControllerError(
                f"{self.uri} is not valid JSON ({err}) and {prev} holds no readable earlier version: the "
                "controller's state is lost; move the file aside and start the controller again (it starts from "
                "the registry's aliases)") from None
        logger.warning("%s is not valid JSON (%s); loaded the previous version from %s (one transition older); "
                       "the next save replaces the unreadable file", self.uri, err, prev)
        return found

    def save(self, doc: dict[str, Any]) -> None:
        try:
            self.generation = cas.write(self.uri, doc, self.generation, keep_previous=True)
        except ConcurrentUpdateError as err:
            holder = read_lease_uri(lease_uri_of(self.uri))
            raise ConcurrentUpdateError(
                f"{err}; the lease is held by {holder.holder if holder else 'nobody'}: this controller lost its "
                "lease and stops writing (see `raymlops status CONFIG`)") from None


# ------------------------------------------------------------------------------------------------- lease
def lease_uri(cfg: Any) -> str:
    """Where the controller's lease lives (beside its state)."""
    return storage.join(controller_dir(cfg), "lease.json")


def lease_uri_of(state: str) -> str:
    return state.rsplit("/", 1)[0] + "/lease.json"


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a controller's lease: an owner id, a readable description of the holder, and until when."""

    owner: str
    holder: str
    acquired_at: float
    renewed_at: float
    expires_at: float

    def live(self, now: float) -> bool:
        return now < self.expires_at


def read_lease_uri(uri: str) -> LeaseInfo | None:
    doc = cas.read(uri).doc
    if doc is None or doc.get("owner") is None:
        return None
    return LeaseInfo(**{k: doc[k] for k in ("owner", "holder", "acquired_at", "renewed_at", "expires_at")})


def read_lease(cfg: Any) -> LeaseInfo | None:
    """The last lease written for ``cfg``'s controller (check ``live(time.time())``), or None."""
    return read_lease_uri(lease_uri(cfg))


def take_over_hint(name: str) -> str:
    return (f"stop it with `raymlops controller stop CONFIG --address ADDRESS` on its cluster, or take the lease "
            f"over with `raymlops controller start CONFIG --take-over` (only once that controller of {name!r} is "
            "gone: two writers would fight over serving)")


class Lease:
    """The single-writer lease of one pipeline's controller.

    ``owner`` must stay the same across restarts of the same controller (the Ray actor id), so that a restarted
    actor gets its own lease back at once; anyone else must wait for it to expire or take it over explicitly.
    """

    def __init__(self, uri: str, owner: str, holder: str, ttl_s: float, clock=time.time):
        self.uri, self.owner, self.holder, self.ttl_s, self.clock = uri, owner, holder, ttl_s, clock
        self.generation = -1  # -1: not held

    @staticmethod
    def describe(owner: str) -> str:
        return f"controller {owner} (pid {os.getpid()} on {socket.gethostname()})"

    def acquire(self, name: str, take_over: bool = False) -> LeaseInfo | None:
        """Take the lease; returns the previous holder's lease when one was taken over (or had expired).

        Raises ``ControllerError`` naming the holder and how to take over while another owner holds it.
        """
        found = cas.read(self.uri)
        now = self.clock()
        prev = None if found.doc is None or found.doc.get("owner") is None else read_lease_uri(self.uri)
        if prev is not None and prev.owner != self.owner and prev.live(now) and not take_over:
            until = time.strftime("%H:%M:%S", time.localtime(prev.expires_at))
            raise ControllerError(f"another controller of {name!r} holds its lease until {until}: {prev.holder}; "
                                  f"{take_over_hint(name)}")
        self._write(now, now, found.generation)
        return None if prev is None or prev.owner == self.owner else prev

    def renew(self) -> None:
        """Extend the lease; ``ControllerError`` when it was taken over or released meanwhile (stop acting then)."""
        found = cas.read(self.uri)
        doc = found.doc or {}
        if doc.get("owner") != self.owner or found.generation != self.generation:
            other = doc.get("holder") or "nobody (released)"
            raise ControllerError(f"this controller lost its lease to {other}; it stops acting")
        self._write(doc["acquired_at"], self.clock(), found.generation)

    def release(self) -> None:
        """Give the lease up (a stopped controller), unless someone else holds it by now."""
        found = cas.read(self.uri)
        if found.doc is None or found.doc.get("owner") != self.owner:
            return
        try:
            cas.write(self.uri, {"owner": None, "released_by": self.holder, "released_at": self.clock()},
                      found.generation)
        except ConcurrentUpdateError:
            pass  # taken over in between: theirs now
        self.generation = -1

    def _write(self, acquired_at: float, now: float, expected: int) -> None:
        info = LeaseInfo(self.owner, self.holder, acquired_at, now, now + self.ttl_s)
        try:
            self.generation = cas.write(self.uri, asdict(info), expected)
        except ConcurrentUpdateError:
            raise ControllerError(f"the lease {self.uri} changed while this controller took or renewed it; another "
                                  "controller is starting: check `raymlops status CONFIG`") from None


def read_saved(cfg: Any) -> Saved | None:
    """The controller's last saved document for ``cfg``, or None when no controller has run."""
    doc = FileStateStore(state_uri(cfg)).load()
    return None if doc is None else Saved.from_doc(doc)
