"""Online stores: the latest value of each feature view per entity key, for low-latency lookups.

A store keeps, per (view, entity key), the event time of the row (epoch microseconds, UTC) and the features as a
JSON object, plus per view the materialisation watermark (the end of the last materialised interval). A write
and its watermark commit together (one SQLite transaction, one Redis MULTI), so a crash never leaves a watermark
ahead of the data. A write never replaces a newer event with an older one, so incremental runs may overlap.

``SQLiteOnlineStore`` (embedded, default) and ``RedisOnlineStore`` (shared, for several serving nodes) are real
implementations; ``MemoryOnlineStore`` is the in-memory fake for unit tests.

Serving opens its store with ``open_online_store(..., serving=True)``: short timeouts (Redis connect/socket
timeouts, no client-side retries; SQLite busy timeout) from the definition's ``connect_timeout_s`` and
``read_timeout_s``, so a stalled store fails a read with ``FeatureStoreUnavailable`` (answered 503 with
Retry-After) instead of holding a request for minutes. Materialisation keeps long timeouts: its writes are big.
A Redis password comes from the environment variable ``password_env`` names, never from what travels to replicas.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from raymlops.core.redact import redact_url
from raymlops.errors import FeatureStoreError, FeatureStoreUnavailable

__all__ = ["MemoryOnlineStore", "OnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "open_online_store"]

_CHUNK = 500  # keys per lookup statement: well under SQLite's bound-parameter limit
_BATCH_TIMEOUT_S = 30.0  # materialisation: big writes, nobody waiting on a request


@runtime_checkable
class OnlineStore(Protocol):
    """What materialisation writes and serving reads (see the module docstring)."""

    def write(self, view: str, keys: Sequence[str], event_us: Sequence[int], values: Sequence[str], *,
              watermark_us: int | None, replace: bool) -> None:
        """Upsert rows (newer events win) and set the view's watermark (None: leave it as it is); ``replace``
        first drops the view's rows."""

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
        if watermark_us is not None:
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

    def __init__(self, path: str | Path, *, busy_timeout_s: float = _BATCH_TIMEOUT_S):
        """``busy_timeout_s``: how long a statement waits for another connection's lock before failing (serving
        passes its short ``read_timeout_s``; a locked read then fails with ``FeatureStoreUnavailable``)."""
        self.path = str(Path(path).expanduser().resolve())
        self.busy_timeout_s = busy_timeout_s
        from raymlops.storage import FILE_MODE, private_dirs

        # SQLite would create the file 0644 (and its -wal/-shm files with the file's mode): create it 0600 first,
        # in 0700 directories. An existing file is left as it is (it may be shared on purpose).
        try:
            private_dirs(os.path.dirname(self.path))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise FeatureStoreError(f"cannot create the SQLite online store {self.path}: {err}; check the path "
                                    "(online_store.path) and its permissions") from None
        self._local = threading.local()  # one connection per thread: sqlite3 connections are not thread-safe
        # The schema is created once, on a connection of its own with the long timeout: opening a store must
        # not fail because a materialisation holds the write lock for a moment.
        setup = self._connect(_BATCH_TIMEOUT_S)
        try:
            setup.executescript(
                "CREATE TABLE IF NOT EXISTS online (view TEXT NOT NULL, key TEXT NOT NULL, event_us INTEGER NOT "
                "NULL, value TEXT NOT NULL, PRIMARY KEY (view, key)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS watermarks (view TEXT PRIMARY KEY, end_us INTEGER NOT NULL);"
            )
        finally:
            setup.close()

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as err:
            if _locked(err):
                raise self._unavailable(err) from None
            raise FeatureStoreError(f"cannot open the SQLite online store {self.path}: {err}; check the path "
                                    "(online_store.path) and its permissions") from None
        except sqlite3.Error as err:
            raise FeatureStoreError(f"cannot open the SQLite online store {self.path}: {err}; check the path "
                                    "(online_store.path) and its permissions") from None
        return db

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect(self.busy_timeout_s)
        return db

    def _unavailable(self, err: Exception) -> FeatureStoreUnavailable:
        return FeatureStoreUnavailable(
            f"the SQLite online store {self.path} stayed locked for over {self.busy_timeout_s:g}s ({err}); retry "
            "shortly, or raise online_store.read_timeout_s if materialisations hold the lock longer")

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
            if watermark_us is not None:
                db.execute("INSERT INTO watermarks (view, end_us) VALUES (?, ?) ON CONFLICT (view) DO UPDATE SET "
                           "end_us = excluded.end_us", (view, int(watermark_us)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def read(self, view, keys):
        db = self._conn()
        found: dict[str, tuple[int, str]] = {}
        try:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for k, t, v in db.execute(
                        f"SELECT key, event_us, value FROM online WHERE view = ? AND key IN ({marks})", (view, *chunk)):
                    found[k] = (t, v)
        except sqlite3.OperationalError as err:
            if _locked(err):
                raise self._unavailable(err) from None
            raise
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
    """Redis store: one hash per view (``{prefix}:{view}``: key -> ``event_us|json``), watermarks in a hash.

    Every command runs under ``connect_timeout_s`` / ``socket_timeout_s`` with ``retries`` client-side retries;
    a timeout or a lost connection raises ``FeatureStoreUnavailable`` (transient), whose message shows the URL
    without its password. ``password`` (from the environment, see ``open_online_store``) overrides none in the URL.
    """

    def __init__(self, url: str, prefix: str = "raymlops", *, password: str | None = None,
                 connect_timeout_s: float = 5.0, socket_timeout_s: float = _BATCH_TIMEOUT_S, retries: int = 2):
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError:
            raise FeatureStoreError("online_store type redis needs the redis client; pip install 'raymlops[redis]'"
                                    ) from None
        self._errors = (redis.TimeoutError, redis.ConnectionError)
        self.url, self.prefix = url, prefix
        self.connect_timeout_s, self.socket_timeout_s = connect_timeout_s, socket_timeout_s
        extra: dict[str, Any] = {} if password is None else {"password": password}
        # redis-py retries a timed-out command 3 times with backoff by default: on the serving path that would
        # multiply the deadline, so the retry count is explicit (0 when serving).
        self._r: Any = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries), **extra)
        try:
            self._r.ping()
        except redis.RedisError as err:
            raise FeatureStoreError(f"cannot reach the Redis online store at {redact_url(url)}: {err}; start "
                                    "redis-server, fix online_store.url, or set the password in the variable "
                                    "online_store.password_env names") from None

    def _key(self, view: str) -> str:
        return f"{self.prefix}:{view}"

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as err:
            raise FeatureStoreUnavailable(
                f"the Redis online store at {redact_url(self.url)} did not answer (connect timeout "
                f"{self.connect_timeout_s:g}s, read timeout {self.socket_timeout_s:g}s): {err}; check redis-server, "
                "or raise online_store.connect_timeout_s / read_timeout_s") from None

    def write(self, view, keys, event_us, values, *, watermark_us, replace):
        key = self._key(view)
        new = {k: (int(t), v) for k, t, v in zip(keys, event_us, values, strict=True)}
        if not replace and new:  # keep newer stored events (one materialiser at a time, see the module docstring)
            names = list(new)
            for k, old in zip(names, self._call(self._r.hmget, key, names), strict=True):
                if old is not None and int(old.split(b"|", 1)[0]) > new[k][0]:
                    del new[k]
        pipe = self._r.pipeline(transaction=True)
        if replace:
            pipe.delete(key)
        if new:
            pipe.hset(key, mapping={k: f"{t}|{v}" for k, (t, v) in new.items()})
        if watermark_us is not None:
            pipe.hset(f"{self.prefix}:__watermarks", view, int(watermark_us))
        self._call(pipe.execute)

    def read(self, view, keys):
        if not keys:
            return []
        out: list[tuple[int, str] | None] = []
        for raw in self._call(self._r.hmget, self._key(view), list(keys)):
            if raw is None:
                out.append(None)
            else:
                t, _, v = raw.decode().partition("|")
                out.append((int(t), v))
        return out

    def watermark(self, view):
        raw = self._call(self._r.hget, f"{self.prefix}:__watermarks", view)
        return None if raw is None else int(raw)

    def close(self) -> None:
        self._r.close()


def _locked(err: sqlite3.OperationalError) -> bool:
    return "locked" in str(err) or "busy" in str(err)


def open_online_store(definition: Any, project: str = "default", *, serving: bool = False) -> OnlineStore:
    """The store an ``online_store`` definition (``OnlineStoreDef`` or its dict) names.

    ``serving=True`` (a replica's lookups) uses the definition's short timeouts and no retries; otherwise
    (materialisation) long ones. A Redis password is read here, from the variable ``password_env`` names.
    """
    doc = definition if isinstance(definition, dict) else definition.model_dump()
    read_s = float(doc.get("read_timeout_s") or 0.5)
    connect_s = float(doc.get("connect_timeout_s") or 0.2)
    if doc["type"] == "sqlite":
        return SQLiteOnlineStore(doc["path"], busy_timeout_s=read_s if serving else _BATCH_TIMEOUT_S)
    if doc["type"] == "redis":
        password = None
        env = doc.get("password_env")
        if env:
            password = os.environ.get(env)
            if password is None:
                raise FeatureStoreError(f"online_store.password_env names {env}, which is not set in this process "
                                        f"(pid {os.getpid()}); export {env} before `ray start` on every node (and "
                                        "wherever materialisation runs)")
        timeouts = (dict(connect_timeout_s=connect_s, socket_timeout_s=read_s, retries=0) if serving else {})
        return RedisOnlineStore(doc["url"], prefix=f"raymlops:{project}", password=password, **timeouts)
    raise FeatureStoreError(f"unknown online_store type {doc['type']!r}; use sqlite or redis")
