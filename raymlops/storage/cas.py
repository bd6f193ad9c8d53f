"""JSON documents with a generation number, written by compare-and-swap.

Several writers share a few small documents (a pipeline environment's ``deployments.json``, the controller's
``state.json`` and its lease): the CLI, and one or more controllers. A plain read-modify-write loses the update of
whoever wrote in between. Here every document carries ``generation`` (0: no document yet), a writer says which
generation its change was computed from, and the write is refused with ``ConcurrentUpdateError`` when the document
moved on meanwhile; ``update`` re-reads and re-applies a pure change a few times before giving up.

On a local (or shared POSIX) filesystem the check and the rename happen under an exclusive ``flock`` of a sidecar
``.lock`` file, so two processes cannot both win. Object stores reachable through pyarrow offer neither a lock nor a
conditional put: there the generation is checked right before the write, which narrows the window but does not close
it. SECURITY.md says so; the controller lease (one writer of ``state.json``) is the protection there.

``keep_previous`` keeps the replaced version as ``NAME.prev`` (``storage.previous_uri``): a reader that finds the
document unreadable (a crash or a full disk on a filesystem that did not honour the fsync) falls back to it, and the
next write, computed from that version, replaces the unreadable one (``write`` checks the generation of ``.prev``
then, and does not keep the unreadable version as the new ``.prev``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from raymlops import storage
from raymlops.errors import ConcurrentUpdateError

__all__ = ["GENERATION", "Versioned", "read", "update", "write"]

GENERATION = "generation"  # the key each document keeps its generation under


@dataclass(frozen=True)
class Versioned:
    """A document as read (None when absent) and its generation (0 when absent)."""

    doc: dict[str, Any] | None
    generation: int


def read(uri: str) -> Versioned:
    """The document at ``uri`` and its generation."""
    if not storage.exists(uri):
        return Versioned(None, 0)
    doc = json.loads(storage.read_text(uri))
    return Versioned(doc, int(doc.get(GENERATION, 0)))


@contextmanager
def _exclusive(uri: str) -> Iterator[None]:
    if not storage.is_local(uri):
        yield  # no lock on object stores: see the module docstring
        return
    import fcntl

    path = storage.resolve(uri)[1] + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a rename: microseconds to milliseconds
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write(uri: str, doc: dict[str, Any], expected: int, *, indent: int | None = None,
          keep_previous: bool = False) -> int:
    """Write ``doc`` at ``uri`` if its generation is still ``expected``; returns the new generation.

    Raises ``ConcurrentUpdateError`` (naming the file and both generations) when another writer got there first.
    ``keep_previous``: the version replaced stays readable at ``storage.previous_uri(uri)``; when the current
    document is not valid JSON, ``expected`` is checked against that previous version (the one a reader fell back
    to) and the unreadable document is replaced without being kept.
    """
    with _exclusive(uri):
        try:
            current = read(uri).generation
        except ValueError:  # not JSON (a truncated write): only a writer that keeps versions has one to go by
            if not keep_previous:
                raise
            current = read(storage.previous_uri(uri)).generation
            keep_previous = False  # .prev stays the last readable version
        if current != expected:
            raise ConcurrentUpdateError(
                f"{uri} changed while this change was prepared (generation {current}, expected {expected}): another "
                "command or controller wrote it; read it again and retry (`raymlops status CONFIG` shows the state)")
        new = expected + 1
        storage.atomic_write_text(uri, json.dumps({**doc, GENERATION: new}, indent=indent, allow_nan=False),
                                  keep_previous=keep_previous)
        return new


def update(uri: str, change: Callable[[dict[str, Any] | None], dict[str, Any]], *, attempts: int = 5,
           indent: int | None = None) -> dict[str, Any]:
    """Read, apply ``change`` (a pure function of the current document), write; retried on a concurrent update.

    Returns the document written (with its new generation).
    """
    for attempt in range(attempts):
        current = read(uri)
        doc = change(None if current.doc is None else {k: v for k, v in current.doc.items() if k != GENERATION})
        try:
            return {**doc, GENERATION: write(uri, doc, current.generation, indent=indent)}
        except ConcurrentUpdateError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
