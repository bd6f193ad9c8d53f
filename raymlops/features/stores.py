"""Online stores: the latest value of each feature view per entity key, for low-latency lookups.

A store keeps, per (view, entity key), the event time of the row (epoch microseconds, UTC) and the features as a
JSON object, plus per view the materialisation watermark (the end of the last materialised interval). A write
and its watermark commit together (one SQLite transaction, one Redis MULTI), so a crash never leaves a watermark
ahead of the data. A write never replaces a newer event with an older one, so incremental runs may overlap.

``SQLiteOnlineStore`` (embedded, default) and ``RedisOnlineStore`` (shared, for several serving nodes) are real
implementations; ``MemoryOnlineStore`` is the in-memory fake for unit tests.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from raymlops.errors import FeatureStoreError

__all__ = ["MemoryOnlineStore", "OnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "open_online_store"]

_CHUNK = 500  # keys per lookup statement: well under SQLite's bound-parameter limit


@runtime_checkable
class OnlineStore(Protocol):
    """What materialisation writes and serving reads (see the module docstring)."""

    def write(self, view: str, keys: Sequence[str], event_us: Sequence[int], values: Sequence[str], *,
              watermark_us: int, replace: bool) -> None:
        """Upsert rows (newer events win) and set the view's watermark; ``replace`` first drops the view's rows."""

    def read(self, view: str, keys: Sequence[str]) -> list[tuple[int, str] | None]:
        """``(event_us, values_json)`` per key, None for a key the store does not have."""

    def watermark(self, view: str) -> int | None:
        """End of the last materialised interval (epoch us), None before the first run."""

    def close(self) -> None:
        """Release connections."""


class MemoryOnlineStore:
    """The in-memory fake: same semantics as the real stores, nothing persisted."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[int, str]]] = {}
        self.watermarks: dict[str, int] = {}

    def write(self, view, keys, event_us, values, *, watermark_us, replace):
        table = {} if replace else dict(self.rows.get(view, {}))
        for k, t, v in zip(keys, event_us, values, strict=True):
            old = table.get(k)
            if old is None or t >= old[0]:
                table[k] = (int(t), v)
        self.rows[view] = table
        self.watermarks[view] = int(watermark_us)

    def read(self, view, keys):
        table = self.rows.get(view, {})
        return [table.get(k) for k in keys]

    def watermark(self, view):
        return self.watermarks.get(view)

    def close(self) -> None:
        pass


class SQLiteOnlineStore:
    """Embedded store in one SQLite file (WAL mode: readers never wait for a materialisation)."""

    def __init__(self, path: str | Path):
        self.path = str(Path(path).expanduser().resolve())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._local = threading.local()  # one connection per thread: sqlite3 connections are not thread-safe
        with self._conn() as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS online (view TEXT NOT NULL, key TEXT NOT NULL, event_us INTEGER NOT "
                "NULL, value TEXT NOT NULL, PRIMARY KEY (view, key)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS watermarks (view TEXT PRIMARY KEY, end_us INTEGER NOT NULL);"
            )

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as err:
                raise FeatureStoreError(f"cannot open the SQLite online store {self.path}: {err}; check the path "
                                        "(online_store.path) and its permissions") from None
            self._local.db = db
        return db

    def write(self, view, keys, event_us, values, *, watermark_us, replace):
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                db.execute("DELETE FROM online WHERE view = ?", (view,))
            db.executemany(
                "INSERT INTO online (view, key, event_us, value) VALUES (?, ?, ?, ?) ON CONFLICT (view, key) DO "
                "UPDATE SET event_us = excluded.event_us, value = excluded.value "
                "WHERE excluded.event_us >= online.event_us",
                ((view, k, int(t), v) for k, t, v in zip(keys, event_us, values, strict=True)),
            )
            db.execute("INSERT INTO watermarks (view, end_us) VALUES (?, ?) ON CONFLICT (view) DO UPDATE SET "
                       "end_us = excluded.end_us", (view, int(watermark_us)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def read(self, view, keys):
        db = self._conn()
        found: dict[str, tuple[int, str]] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for k, t, v in db.execute(f"SELECT key, event_us, value FROM online WHERE view = ? AND key IN ({marks})",
                                      (view, *chunk)):
                found[k] = (t, v)
        return [found.get(k) for k in keys]

    def watermark(self, view):
        row = self._conn().execute("SELECT end_us FROM watermarks WHERE view = ?", (view,)).fetchone()
        return None if row is None else int(row[0])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisOnlineStore:
    """Redis store: one hash per view (``{prefix}:{view}``: key -> ``event_us|json``), watermarks in a hash."""

    def __init__(self, url: str, prefix: str = "raymlops"):
        try:
            import redis
        except ImportError:
            raise FeatureStoreError("online_store type redis needs the redis client; pip install 'raymlops[redis]'"
                                    ) from None
        self.url, self.prefix = url, prefix
        self._r: Any = redis.Redis.from_url(url)
        try:
            self._r.ping()
        except redis.RedisError as err:
            raise FeatureStoreError(f"cannot reach the Redis online store at {url}: {err}; start redis-server or "
                                    "fix online_store.url") from None

    def _key(self, view: str) -> str:
        return f"{self.prefix}:{view}"

    def write(self, view, keys, event_us, values, *, watermark_us, replace):
        key = self._key(view)
        new = {k: (int(t), v) for k, t, v in zip(keys, event_us, values, strict=True)}
        if not replace and new:  # keep newer stored events (one materialiser at a time, see the module docstring)
            names = list(new)
            for k, old in zip(names, self._r.hmget(key, names), strict=True):
                if old is not None and int(old.split(b"|", 1)[0]) > new[k][0]:
                    del new[k]
        pipe = self._r.pipeline(transaction=True)
        if replace:
            pipe.delete(key)
        if new:
            pipe.hset(key, mapping={k: f"{t}|{v}" for k, (t, v) in new.items()})
        pipe.hset(f"{self.prefix}:__watermarks", view, int(watermark_us))
        pipe.execute()

    def read(self, view, keys):
        if not keys:
            return []
        out: list[tuple[int, str] | None] = []
        for raw in self._r.hmget(self._key(view), list(keys)):
            if raw is None:
                out.append(None)
            else:
                t, _, v = raw.decode().partition("|")
                out.append((int(t), v))
        return out

    def watermark(self, view):
        raw = self._r.hget(f"{self.prefix}:__watermarks", view)
        return None if raw is None else int(raw)

    def close(self) -> None:
        self._r.close()


def open_online_store(definition: Any, project: str = "default") -> OnlineStore:
    """The store an ``online_store`` definition (``OnlineStoreDef`` or its dict) names."""
    doc = definition if isinstance(definition, dict) else definition.model_dump()
    if doc["type"] == "sqlite":
        return SQLiteOnlineStore(doc["path"])
    if doc["type"] == "redis":
        return RedisOnlineStore(doc["url"], prefix=f"raymlops:{project}")
    raise FeatureStoreError(f"unknown online_store type {doc['type']!r}; use sqlite or redis")
