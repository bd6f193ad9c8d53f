"""The controller's persisted state: where it lives and its layout, the one owner of both.

The controller writes it after every transition (through ``FileStateStore``); ``raymlops status``, ``raymlops
events`` and the demo read it without Ray through ``read_saved``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raymlops import storage

__all__ = ["FORMAT", "FileStateStore", "Saved", "controller_dir", "read_saved", "state_uri"]

FORMAT = 1


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
    """The controller's ``StateStore`` port on storage; writes are atomic."""

    def __init__(self, uri: str):
        self.uri = uri

    def load(self) -> dict[str, Any] | None:
        if not storage.exists(self.uri):
            return None
        return json.loads(storage.read_text(self.uri))

    def save(self, doc: dict[str, Any]) -> None:
        storage.atomic_write_text(self.uri, json.dumps(doc, allow_nan=False))


def read_saved(cfg: Any) -> Saved | None:
    """The controller's last saved document for ``cfg``, or None when no controller has run."""
    doc = FileStateStore(state_uri(cfg)).load()
    return None if doc is None else Saved.from_doc(doc)
