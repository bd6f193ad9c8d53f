"""Cluster tier: the servers a team runs beyond a laptop, started for real on loopback and stopped by pid.

* object storage: ``moto``'s standalone S3 server (one bucket, ``raymlops``); the tier's tests reach it the way a
  user's config does, through ``storage_uri: s3://...`` and the standard AWS environment variables
  (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), which pyarrow, Ray Data, boto3 and MLflow all honour;
* MLflow: ``mlflow server`` on a PostgreSQL database (Debian's ``postgresql``: ``initdb`` into a temporary
  directory, ``postgres`` on a free port, as the ``postgres`` user when the tests run as root), its artifacts
  proxied to the S3 server.

Each server starts once for the tier (package scope: they are gone, and the environment restored, before the next
tier runs). PostgreSQL and MLflow take the longest (MLflow migrates a fresh database), so when a test of the tier
needs MLflow they are started in a background thread while the S3 tests run.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# free_port: one registry of ports for the servers and the Ray cluster, which start in parallel
from tests.cluster.ray_cluster import RayCluster, free_port

BUCKET = "raymlops"
_BIN = Path(sys.executable).parent
# What a user exports to reach an S3-compatible store; AWS_EC2_METADATA_DISABLED keeps the AWS SDK from probing an
# instance-metadata endpoint (seconds of timeouts off EC2).
_AWS_ENV = {"AWS_ACCESS_KEY_ID": "raymlops-test-key", "AWS_SECRET_ACCESS_KEY": "raymlops-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a server this tier started (its own process group: the server and the workers it forked)."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=3)  # test servers hold nothing worth a slow shutdown
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass(frozen=True)
class S3Server:
    """The S3 server: its endpoint, the bucket, and the environment a client needs."""

    endpoint: str
    env: dict[str, str]

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{BUCKET}", *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class MlflowServer:
    """``mlflow server`` on PostgreSQL: the tracking URI, the database URI (with its password) and that password."""

    tracking_uri: str
    database_uri: str
    password: str
    artifacts_uri: str
    log: Path


def _start_s3(root: Path) -> tuple[subprocess.Popen, S3Server]:
    port = free_port()
    log = root / "moto.log"
    proc = subprocess.Popen([str(_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    _wait(f"{endpoint}/moto-api/", proc, log)
    return proc, S3Server(endpoint, {**_AWS_ENV, "AWS_ENDPOINT_URL": endpoint})


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's versioned directory (the package does not link them)."""
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: `make system-deps` installs Debian's postgresql")
    return found


def _as_postgres() -> dict:
    """PostgreSQL refuses to run as root: drop to the Debian package's ``postgres`` user when root."""
    return dict(user="postgres", group="postgres", extra_groups=[]) if os.geteuid() == 0 else {}


def _start_postgres(root: Path, password: str) -> tuple[subprocess.Popen, int]:
    data, sock, pwfile = root / "pgdata", root / "pgsock", root / "pgpass"
    sock.mkdir()
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        for p in (sock, pwfile):
            shutil.chown(p, "postgres", "postgres")
    # scram-sha-256: the password is really checked, so a URI that carries it is a real secret to keep out of logs.
    subprocess.run([_pg_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--no-instructions"],
                   check=True, capture_output=True, cwd=root, **_as_postgres())
    port, log = free_port(), root / "postgres.log"
    # Durability settings off: a test database, thrown away with the directory.
    proc = subprocess.Popen([_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(sock),
                             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
                            **_as_postgres())
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(f"postgresql://mlflow:{password}@127.0.0.1:{port}/postgres", autocommit=True) as c:
                c.execute("CREATE DATABASE mlflow")
            return proc, port
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.1)


def _start_mlflow(root: Path, s3: S3Server, procs: list[tuple[subprocess.Popen, int]]) -> MlflowServer:
    password = "pg-" + os.urandom(8).hex()
    pg, pg_port = _start_postgres(root, password)
    procs.append((pg, signal.SIGINT))  # postgres: fast shutdown
    database_uri = f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{pg_port}/mlflow"
    port, log = free_port(), root / "mlflow.log"
    artifacts = s3.uri("mlflow-artifacts")
    env = {**os.environ, **s3.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process
    proc = subprocess.Popen([str(_BIN / "mlflow"), "server", "--backend-store-uri", database_uri,
                             "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    procs.append((proc, signal.SIGKILL))  # its database is thrown away: nothing to shut down cleanly
    tracking_uri = f"http://127.0.0.1:{port}"
    _wait(f"{tracking_uri}/health", proc, log, timeout_s=240)
    return MlflowServer(tracking_uri, database_uri, password, artifacts, log)


class _Background:
    """A start-up running in a thread; ``result()`` waits for it and re-raises its error."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self._value = fn(*args)
        except BaseException as err:  # handed to the test that waits for it
            self._error = err

    def wait(self) -> None:
        self._thread.join()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


@pytest.fixture(scope="package")
def _servers(request, tmp_path_factory) -> Iterator[tuple[S3Server, _Background | None, _Background | None]]:
    root = tmp_path_factory.mktemp("cluster")
    pg_root, background, ray_start = None, None, None
    procs: list[tuple[subprocess.Popen, int]] = []  # each server and the signal that stops it
    mp = pytest.MonkeyPatch()
    try:
        moto, s3 = _start_s3(root)
        procs.append((moto, signal.SIGTERM))
        for k, v in s3.env.items():
            mp.setenv(k, v)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=s3.endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        wants_mlflow = any("mlflow_server" in getattr(item, "fixturenames", ()) for item in request.session.items)
        # Not under pytest's base temp (0700, root's): the postgres user must reach its data directory.
        pg_root = Path(tempfile.mkdtemp(prefix="raymlops-pg-"))
        background = _Background(_start_mlflow, pg_root, s3, procs) if wants_mlflow else None
        wants_ray = any("ray_cluster" in getattr(item, "fixturenames", ()) for item in request.session.items)
        # The Ray cluster starts beside MLflow (each ~20-40 s under load), while the S3 tests run.
        ray_start = _Background(RayCluster.start, s3.env) if wants_ray else None
        yield s3, background, ray_start
    finally:
        if background is not None:
            background.wait()  # a start-up still running would start a server after this teardown
        if ray_start is not None:
            ray_start.wait()
            if ray_start._value is not None:
                ray_start._value.stop()
        mp.undo()
        for proc, sig in reversed(procs):  # MLflow before its database, the S3 server last
            _stop(proc, sig)
        if pg_root is not None:
            shutil.rmtree(pg_root, ignore_errors=True)


@pytest.fixture(scope="package")
def s3(_servers) -> S3Server:
    """The S3 server, with the AWS environment set for this tier (restored afterwards)."""
    return _servers[0]


@pytest.fixture(scope="package")
def mlflow_server(_servers) -> MlflowServer:
    """``mlflow server`` on PostgreSQL with artifacts on the S3 server (started in the background, waited for here)."""
    background = _servers[1]
    if background is None:
        raise RuntimeError("mlflow_server was not started: the tier starts it for tests that name the fixture")
    return background.result()


@pytest.fixture(scope="package")
def ray_cluster(_servers) -> RayCluster:
    """A Ray cluster of a head and two worker nodes (see ``tests.cluster.ray_cluster``), shared by the tier."""
    return _servers[2].result()


@pytest.fixture(scope="package")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A redis-server on a free loopback port (no persistence), stopped by pid after the tier."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `make system-deps` installs Debian's redis-server")
    root, port = tmp_path_factory.mktemp("redis"), free_port()
    log = root / "redis.log"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(root)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
