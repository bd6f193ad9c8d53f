"""A Ray cluster of a head and two worker nodes on this one machine, each node a ``ray start --block`` in its own
session, so that one node (its raylet and every worker it forked) can be killed by pid without touching anything
else — another engineer's Ray on the same machine included.

* the head has no CPUs (as on a production cluster: drivers, the job supervisor, GCS and the dashboard, no
  tasks), so every task, Train worker, Serve replica and CPU actor lands on a worker node;
* a node is the process tree of its ``ray start`` (Ray 2.60 gives each worker a process group of its own), so
  ``kill`` walks the tree by parent pid;
* worker nodes ``a`` and ``b`` carry a custom resource (``{"node_a": 1}``) and a label (``raymlops-node=a``);
* every port is explicit and free; each node has its own short ``--temp-dir`` (Ray's socket paths have a length
  limit) under one ``/tmp/rmc-*`` directory; token authentication is on (``RAY_AUTH_MODE=token``);
* Serve's worker-node proxies bind ``RAY_SERVE_WORKER_PROXY_HTTP_PORT``, a port of the node's own: on one machine
  the nodes share the loopback interface (on a real cluster each node has its own address).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKERS = ("a", "b")
WORKER_CPUS = 2


_TAKEN: set[int] = set()  # ports handed out: the OS may offer a just-closed port again


def free_port() -> int:
    """A free loopback port not handed out before in this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def _node_ports() -> list[str]:
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "runtime-env-agent-port")
    return [f"--{n}={free_port()}" for n in names]


@dataclass
class RayCluster:
    """The running cluster: the dashboard (Jobs API) address, the GCS address, the environment of a client."""

    root: Path
    env: dict[str, str]
    gcs: str = ""
    dashboard: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # node ids

    @classmethod
    def start(cls, extra_env: dict[str, str]) -> RayCluster:
        root = Path(tempfile.mkdtemp(prefix="rmc-", dir="/tmp"))  # short: socket paths
        # PYTHONPATH: the cluster's workers import tests.controller_helpers (the controller test's fake pipeline).
        # The cluster's own token, in the environment of its nodes and clients: without one, `ray start` in token
        # mode would write ~/.ray/auth_token, which turns every later local Ray of this user to token mode.
        env = {**os.environ, **extra_env, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": secrets.token_hex(32), "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)
        cluster = cls(root, env)
        try:
            cluster._start_head()
            for name in WORKERS:  # one after the other: a raylet has 30 s to register, hard to meet under load
                cluster.start_worker(name)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        temp = self.root / name
        temp.mkdir(exist_ok=True)
        log = (self.root / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args, *_node_ports(), f"--temp-dir={temp}",
             "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"],
            env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_head(self) -> None:
        port, dash, client = free_port(), free_port(), free_port()
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        self._spawn("head", ["--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                             "--include-dashboard=true", f"--ray-client-server-port={client}", "--num-cpus=0",
                             "--object-store-memory=200000000", "--labels=raymlops-node=head"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.procs["head"].poll() is not None:
                raise RuntimeError(f"the Ray head exited:\n{self.log('head')}")
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", self.dashboard], env=self.env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray head did not answer within 120 s:\n{self.log('head')}")

    def start_worker(self, name: str, attempts: int = 3) -> None:
        """Start (or restart, after ``kill``) worker node ``name`` with its resource and label; returns once it is
        alive. Ray gives a raylet 30 s to register with the GCS (hard-coded); on a loaded 2-core machine it can
        take longer, and ``ray start`` then exits: it is started again."""
        for _ in range(attempts):
            env = {**self.env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port())}
            self._spawn(name, [f"--address={self.gcs}", f"--num-cpus={WORKER_CPUS}",
                               f"--resources={json.dumps({f'node_{name}': 1})}", f"--labels=raymlops-node={name}",
                               "--object-store-memory=150000000"], env)
            deadline = time.monotonic() + 120
            while self.procs[name].poll() is None and time.monotonic() < deadline:
                if name in self.node_ids():
                    return
                time.sleep(1)
            self.kill(name)  # what is left of the failed start
        raylet = sorted((self.root / name).glob("session_*/logs/raylet.out"))
        tail = raylet[-1].read_text()[-2000:] if raylet else ""
        raise RuntimeError(f"worker node {name} did not join in {attempts} attempts:\n{self.log(name)}\n{tail}")

    def nodes(self) -> list[dict]:
        """The alive nodes as Ray's state API lists them (node_id, labels, resources_total, ...)."""
        r = subprocess.run([str(BIN / "ray"), "list", "nodes", "--format=json", "--filter=state=ALIVE",
                            f"--address={self.dashboard}"], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ray list nodes failed: {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    def node_ids(self) -> dict[str, str]:
        """``{"head": node_id, "a": ..., "b": ...}`` from each alive node's label (a killed node is left out even
        while the GCS still counts it alive: it notices a dead raylet only after missed health checks)."""
        return {n["labels"]["raymlops-node"]: n["node_id"] for n in self.nodes() if n["node_id"] not in self.killed}

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (alive := len(self.nodes())) < count:
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}:\n{self.log(n)}" for n in self.procs)
                raise RuntimeError(f"{alive} of {count} Ray nodes alive after {timeout_s:.0f} s\n{logs}")
            time.sleep(1)

    def kill(self, name: str, node_id: str | None = None) -> None:
        """SIGKILL node ``name`` (whose id is ``node_id``, looked up when not given): ``ray start``, its raylet and
        every worker it forked (its process tree, and the group of ``ray start``)."""
        proc = self.procs[name]
        if proc.poll() is None and (node_id := node_id or self.node_ids().get(name)):
            self.killed.add(node_id)
        tree = [pid for pid, _ in self._processes().get(name, [])]
        for pid in [proc.pid, *tree]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # gone already
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _processes(self) -> dict[str, list[tuple[int, str]]]:
        """Each alive node's processes, ``(pid, command line)``: the descendants of its ``ray start``. Ray 2.60 puts
        each worker in a process group of its own (``RAY_process_group_cleanup_enabled``), so a node is its
        process tree, not one group."""
        rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in rows.splitlines():
            pid, ppid, args = (line.split(None, 2) + [""])[:3]
            children.setdefault(int(ppid), []).append((int(pid), args))
        out = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                todo, tree = [proc.pid], []
                while todo:
                    for child in children.get(todo.pop(), []):
                        tree.append(child)
                        todo.append(child[0])
                out[name] = tree
        return out

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGKILL every node's process group, workers first (a throwaway cluster: nothing to shut down cleanly)."""
        for name in [*WORKERS, "head"]:
            if name in self.procs:
                self.kill(name, node_id="-")  # no need to look up its id: the cluster goes
        shutil.rmtree(self.root, ignore_errors=True)
