"""Deploy the serving application from the registry's aliases, change its traffic live, inspect and remove it.

One Serve application per model, with ONE ingress deployment (``ModelServer``) whose replicas co-host every live
version (see ``raymlops.serve.app``). Everything that changes while serving (which versions are live, their
packages, weights, shadow, request limits) travels in the deployment's ``user_config``; the deployment's code
version is pinned to a hash of what cannot change in place (model name, storage, replica resources, raymlops
code). So a second ``deploy``/``set_weights`` is a Serve *lightweight update*: each running replica gets
``reconfigure(user_config)`` and keeps its process (no restart, no dropped request); only a change of replica
resources or of the code restarts replicas (rolling, by Serve).

Packages are verified against the registry's digest here, on the driver, before anything is sent to Serve, and
again by each replica when it loads them: a tampered package is refused with ``PackageError``.

The ingress (``serving.ingress``, see ``raymlops.serve.ingress``): by default Serve's HAProxy on
``serving.host:serving.port`` balances over every replica's own port (30000 and up, bound to ``serving.host``):
one URL for N replicas at the speed of a replica's own port. Without the HAProxy binary, Serve's Python proxy
serves that URL and each replica also serves its own port (``DeployInfo.direct_urls``). Like the HTTP host and
port, the ingress is decided when Serve first starts on the cluster; a later deploy follows the running Serve.
Replicas are ``serving.num_replicas`` or, with ``serving.autoscaling``, Serve's autoscaling between its bounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymlops.config import Config
from raymlops.core.routing import RoutingTable, validate_weights
from raymlops.errors import PackageError, RegistryError, ServingError
from raymlops.registry.models import CHALLENGER, CHAMPION, ModelRegistry, ModelVersionInfo
from raymlops.serve.auth import auth_spec
from raymlops.serve.ingress import controller_env, free_port, replica_env, resolve_ingress, running_ingress
from raymlops.serve.urls import base_url, model_url, predict_url, route_prefix

__all__ = [
    "DEPLOYMENT_NAME", "DeployInfo", "app_name", "build_app", "deploy", "plan", "set_weights", "status", "undeploy",
    "verify_version",
]

DEPLOYMENT_NAME = "ModelServer"
_RETRY_AFTER_S = 1.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployInfo:
    """What is being served: the base URL, live versions with their roles, weights and shadow."""

    app_name: str
    model: str
    url: str
    versions: dict[str, str]  # version -> role (champion, canary, shadow)
    weights: dict[str, float]
    shadow: str | None = None
    shadow_pct: float = 0.0
    direct_urls: list[str] = field(default_factory=list)  # each replica's own port (not needed under HAProxy)
    revision: str = ""  # GET /v1/models/{name} reports it once a replica has applied this deploy
    ingress: str = ""  # haproxy, direct or proxy (see raymlops.serve.ingress)

    @property
    def predict_url(self) -> str:
        """``POST`` here to predict (the one ingress URL, whatever the replica count)."""
        return predict_url(self.url, self.model)


# ------------------------------------------------------------------------------------------------ planning
def plan(
    cfg: Config,
    registry: ModelRegistry,
    *,
    weights: dict[str, float] | None = None,
    shadow: str | None = None,
    shadow_pct: float | None = None,
) -> dict[str, Any]:
    """The ``user_config`` of the serving deployment: live versions (package, digest, role), weights, shadow.

    Default weights: the champion gets ``100 - serving.challenger_weight_pct`` and the challenger the rest
    (when there is one and that percent is > 0). ``weights`` keys may be version numbers (``"3"``, ``"v3"``) or
    aliases. With ``serving.shadow_pct > 0`` and no explicit shadow, a challenger that gets no live weight is
    the shadow. Raises ``ServingError`` (no champion, bad weights, bad shadow) or ``PackageError`` (a package
    does not match its registry digest).
    """
    name = cfg.name
    champion = registry.get_by_alias(name, CHAMPION)
    if champion is None:
        raise ServingError(
            f"model '{name}' has no champion yet, so there is nothing to serve; promote a version first: "
            f"`raymlops promote CONFIG VERSION` (list versions with `raymlops status CONFIG`)"
        )
    challenger = registry.get_by_alias(name, CHALLENGER)
    infos: dict[str, ModelVersionInfo] = {str(champion.version): champion}
    if weights is None:
        pct = cfg.serving.challenger_weight_pct
        raw = {str(champion.version): 100.0}
        if challenger is not None and challenger.version != champion.version and pct > 0:
            infos[str(challenger.version)] = challenger
            raw = {str(champion.version): 100.0 - pct, str(challenger.version): pct}
    else:
        raw = {}
        for ref, w in weights.items():
            info = _resolve(registry, name, ref)
            if str(info.version) in raw:
                raise ServingError(f"version {info.version} is named twice in the weights ({ref!r}); give each "
                                   "version one weight")
            infos[str(info.version)] = info
            raw[str(info.version)] = w
    resolved = validate_weights(raw, infos.keys())

    if shadow is None and shadow_pct is None and cfg.serving.shadow_pct > 0 and challenger is not None:
        if resolved.get(str(challenger.version), 0.0) == 0 and challenger.version != champion.version:
            shadow = str(challenger.version)
    shadow_version: str | None = None
    pct = 0.0
    if shadow is not None:
        info = _resolve(registry, name, shadow)
        shadow_version = str(info.version)
        infos[shadow_version] = info
        pct = cfg.serving.shadow_pct if shadow_pct is None else float(shadow_pct)
        if pct <= 0:
            raise ServingError(
                f"shadow version {shadow_version} would get no mirrored traffic (shadow_pct is {pct:g}); pass "
                "--shadow-pct P (percent of requests to mirror) or set serving.shadow_pct in the config"
            )
    elif shadow_pct:
        raise ServingError(f"shadow_pct is {shadow_pct:g} but no shadow version is given; pass --shadow VERSION")
    RoutingTable(resolved, shadow_version, pct)  # refuses e.g. a shadow that also carries live weight

    versions: dict[str, dict[str, str]] = {}
    for v, info in sorted(infos.items(), key=lambda kv: int(kv[0])):
        if v != str(champion.version) and v != shadow_version and resolved.get(v, 0.0) == 0:
            continue  # named with weight 0 and not the shadow: nothing would reach it
        verify_version(info, cfg)
        role = "champion" if v == str(champion.version) else "shadow" if v == shadow_version else "canary"
        versions[v] = {"uri": info.package_uri, "digest": info.digest, "role": role}
    resolved = {v: w for v, w in resolved.items() if v in versions}
    return {
        # A fresh revision makes every deploy a reconfigure (which also drains the logs), even an unchanged one.
        "revision": uuid.uuid4().hex[:12],
        "model": name,
        "champion": str(champion.version),
        "versions": versions,
        "weights": resolved,
        "shadow": shadow_version,
        "shadow_pct": pct,
        "limits": _limits(cfg), "auth": auth_spec(cfg),  # token hashes only; the id secret stays in storage
        "num_replicas": _configured_replicas(cfg),  # for GET /v1/models/{name}; scaling must not restart replicas
        "features": _features_spec(cfg),  # feature service for key-only requests (None: clients send features)
        "package_policy": cfg.model.policy().to_dict(),  # what the packages may run: the config decides, not them
    }


def _limits(cfg: Config) -> dict[str, Any]:
    s = cfg.serving
    return {"max_body_bytes": s.max_body_bytes, "max_instances": s.max_instances,
            "max_string_length": s.max_string_length, "body_timeout_s": s.body_timeout_s}


def _features_spec(cfg: Config) -> dict[str, Any] | None:
    from raymlops.features.serving import serving_spec

    return serving_spec(cfg)


def _resolve(registry: ModelRegistry, name: str, ref: str | int) -> ModelVersionInfo:
    try:
        return registry.resolve(name, ref)
    except RegistryError as err:
        raise ServingError(f"cannot route traffic to '{ref}': {err}") from None


def verify_version(info: ModelVersionInfo, cfg: Config) -> None:
    """What serving checks before it loads a registered version: a digest in the registry, and the package matches
    it under the config's package policy. Raises ``PackageError``."""
    from raymlops.model.package import verify_package

    if not info.digest:
        raise PackageError(
            f"version {info.version} of model '{info.name}' has no package digest in the registry, so its package "
            "cannot be verified and will not be served; register the package again (`raymlops run CONFIG`)"
        )
    verify_package(info.package_uri, info.digest, policy=cfg.model.policy())


# ------------------------------------------------------------------------------------------------ the app
def build_app(
    cfg: Config,
    *,
    weights: dict[str, float] | None = None,
    shadow: str | None = None,
    shadow_pct: float | None = None,
    ingress: str | None = None,
) -> Any:
    """The Serve ``Application`` for ``cfg`` (see ``plan`` for the routing it starts with).

    ``ingress`` (default ``serving.ingress``) sets the replicas' environment; the Serve that runs the app must
    have been started with the same ingress (``deploy`` does both; see ``raymlops.serve.ingress``).
    """
    user_config = plan(cfg, ModelRegistry(cfg.tracking_uri), weights=weights, shadow=shadow, shadow_pct=shadow_pct)
    return _application(cfg, user_config, resolve_ingress(ingress or cfg.serving.ingress))


def _application(cfg: Config, user_config: dict[str, Any], mode: str) -> Any:
    from ray import serve

    from raymlops.serve.app import ModelServer

    s = cfg.serving
    init = {
        "name": cfg.name,
        "storage_uri": str(Path(cfg.storage_uri).resolve()) if "://" not in cfg.storage_uri else cfg.storage_uri,
        "log": s.prediction_log.model_dump(),
    }
    actor_options: dict[str, Any] = {"num_cpus": s.num_cpus}
    if env := replica_env(mode):
        actor_options["runtime_env"] = {"env_vars": env}
    deployment = serve.deployment(ModelServer, name=DEPLOYMENT_NAME).options(
        **_scaling(cfg),
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": _RETRY_AFTER_S},
        ray_actor_options=actor_options,
        user_config=user_config,
    )
    # Serve gives every serve.run a random code version unless one is set, and a new code version restarts
    # every replica. Pinning it to what needs a restart makes a routing change a reconfigure instead.
    # (`version` is internal-only in Deployment.options since Ray 2.x; Serve's own config deploys do the same.)
    deployment = deployment.options(version=_code_version(init, actor_options), _internal=True)
    return deployment.bind(**init)


def _scaling(cfg: Config) -> dict[str, Any]:
    """``num_replicas``, or Serve's ``autoscaling_config`` from ``serving.autoscaling``."""
    a = cfg.serving.autoscaling
    if a is None:
        return {"num_replicas": cfg.serving.num_replicas}
    return {"autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                   "initial_replicas": a.min_replicas,
                                   "target_ongoing_requests": a.target_ongoing_requests}}


def _code_version(init: dict[str, Any], actor_options: dict[str, Any]) -> str:
    import importlib

    import raymlops

    h = hashlib.sha256(json.dumps([raymlops.__version__, init, actor_options], sort_keys=True).encode())
    # By module name: the attribute raymlops.serve.app is the application builder, not the module.
    for name in ("raymlops.serve.app", "raymlops.serve.predlog", "raymlops.serve.auth", "raymlops.serve.json_errors",
                 "raymlops.core.routing", "raymlops.core.request_validation", "raymlops.core.auth",
                 "raymlops.core.protocols"):
        h.update(Path(importlib.import_module(name).__file__).read_bytes())  # new serving code restarts replicas
    return h.hexdigest()[:16]


def app_name(cfg: Config) -> str:
    """The Serve application name: ``serving.app_name`` or the pipeline name."""
    return cfg.serving.app_name or cfg.name


# ------------------------------------------------------------------------------------------------ actions
def deploy(
    cfg: Config,
    *,
    weights: dict[str, float] | None = None,
    shadow: str | None = None,
    shadow_pct: float | None = None,
    ingress: str | None = None,
) -> DeployInfo:
    """Deploy (or update in place) the serving app of ``cfg`` and wait until every replica serves it.

    Ray must be initialised. Starts Serve when it is not running, bound to ``serving.host:serving.port``
    (127.0.0.1 unless configured) with the ingress ``ingress`` (default ``serving.ingress``). A running app with
    the same replica settings is reconfigured in place: newly listed packages are loaded before traffic moves to
    them, and no replica restarts.
    """
    user_config = plan(cfg, ModelRegistry(cfg.tracking_uri), weights=weights, shadow=shadow, shadow_pct=shadow_pct)
    mode, url = _start_serve(cfg, ingress)
    return _run(cfg, user_config, _app_mode(cfg, mode), url)


def is_deployed(cfg: Config) -> bool:
    """Whether ``cfg``'s serving app runs (False when Serve itself is not started)."""
    from ray import serve

    try:
        return app_name(cfg) in serve.status().applications
    except Exception:  # noqa: BLE001 - Serve not started yet
        return False


def plan_alone(cfg: Config, info: ModelVersionInfo, reference: ModelVersionInfo | None = None) -> dict[str, Any]:
    """A ``user_config`` serving ``info`` alone, as the app's champion, so that its own schema validates requests.

    ``reference`` is loaded beside it without weight (role ``reference``): only a request pinned to its version
    reaches it, so a load test can measure both versions in the same replica at the same moments.
    """
    versions: dict[str, dict[str, str]] = {}
    for each, role in ((info, "champion"), (reference, "reference")):
        if each is not None:
            verify_version(each, cfg)  # a tampered package is refused before Serve loads it
            versions[str(each.version)] = {"uri": each.package_uri, "digest": each.digest, "role": role}
    v = str(info.version)
    return {
        "revision": uuid.uuid4().hex[:12], "model": cfg.name, "champion": v,
        "versions": versions,
        "weights": {v: 100.0}, "shadow": None, "shadow_pct": 0.0,
        "limits": _limits(cfg), "auth": auth_spec(cfg),  # token hashes only; the id secret stays in storage
        "num_replicas": _configured_replicas(cfg), "features": _features_spec(cfg),
        "package_policy": cfg.model.policy().to_dict(),
    }


def deploy_alone(cfg: Config, info: ModelVersionInfo, *, reference: ModelVersionInfo | None = None,
                 ingress: str | None = None) -> DeployInfo:
    """Serve one version alone in ``cfg``'s app, whatever the registry's aliases say (preview apps: pre-exposure
    tests), with ``reference`` loaded beside it for pinned requests only. A running app is reconfigured in place."""
    mode, url = _start_serve(cfg, ingress)
    return _run(cfg, plan_alone(cfg, info, reference), _app_mode(cfg, mode), url)


def set_weights(
    cfg: Config,
    weights: dict[str, float],
    shadow: str | None = None,
    shadow_pct: float | None = None,
) -> DeployInfo:
    """Change live versions, weights and shadow of the RUNNING app in place (no replica restarts).

    ``weights`` is the complete split (percent per version number or alias, summing to 100); the shadow is
    exactly what is passed (None: no shadow). Raises ``ServingError`` when the app is not deployed.
    """
    from ray import serve

    name = app_name(cfg)
    if name not in serve.status().applications:
        raise ServingError(f"serving app '{name}' is not deployed; deploy it first with `raymlops deploy CONFIG`")
    # shadow=None means no shadow here (not the config's default shadow): the caller gives the whole routing.
    user_config = plan(cfg, ModelRegistry(cfg.tracking_uri), weights=weights, shadow=shadow,
                       shadow_pct=0.0 if shadow is None else shadow_pct)
    # The tokens stay those of the deploy: env tokens (RAYMLOPS_SERVING_TOKENS) were hashed in the deploying shell,
    # and a weight change comes from the controller or another shell without them.
    running = _running_user_config(cfg)
    if running and "auth" in running:
        user_config["auth"] = running["auth"]
    return _run(cfg, user_config, _app_mode(cfg, running_ingress() or "proxy"), _proxy_url(cfg))


def undeploy(cfg: Config) -> bool:
    """Delete the serving app (replicas drain their prediction logs on shutdown); False when it was not running."""
    from ray import serve

    name = app_name(cfg)
    if name not in serve.status().applications:
        return False
    serve.delete(name)
    return True


def status(cfg: Config) -> dict[str, Any]:
    """Serve's view of the app (status, ingress, replicas running / target, replica states) plus, when reachable,
    the app's own ``GET`` model info."""
    import httpx
    from ray import serve

    name = app_name(cfg)
    apps = serve.status().applications
    if name not in apps:
        return {"app": name, "status": "NOT_DEPLOYED"}
    app = apps[name]
    mode = _deployed_mode(name)
    out: dict[str, Any] = {
        "app": name,
        "status": str(app.status.value if hasattr(app.status, "value") else app.status),
        "message": app.message,
        "url": _proxy_url(cfg),
        "ingress": mode,
        "replicas": _replica_counts(name),
        "direct_urls": _direct_urls(cfg, name, mode),
        "deployments": {
            d: {"status": str(getattr(s.status, "value", s.status)),
                "replicas": {str(getattr(k, "value", k)): n for k, n in s.replica_states.items()}}
            for d, s in app.deployments.items()
        },
    }
    try:
        from raymlops.serve.auth import client_headers

        r = httpx.get(model_url(_proxy_url(cfg), cfg.name), timeout=5, headers=client_headers())
        out["model"] = r.json() if r.status_code == 200 else {"http_status": r.status_code}
    except (httpx.HTTPError, ValueError) as err:
        out["model"] = {"error": f"{type(err).__name__}: {err}"}
    return out


def _replica_counts(name: str) -> dict[str, Any]:
    """``running`` and ``target`` replicas of the serving deployment, and its autoscaling bounds when it scales
    (Serve's controller details; private API, so ``{}`` when unreadable)."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote(), timeout=10)
        d = details["applications"][name]["deployments"][DEPLOYMENT_NAME]
    except Exception:  # noqa: BLE001 - private API
        return {}
    out: dict[str, Any] = {
        "running": sum(1 for r in d.get("replicas", []) if str(r.get("state")).endswith("RUNNING")),
        "target": d.get("target_num_replicas"),
    }
    auto = (d.get("deployment_config") or {}).get("autoscaling_config")
    if auto:
        out["autoscaling"] = {k: auto.get(k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests")}
    return out


def _configured_replicas(cfg: Config) -> int:
    """The fixed replica count, or the autoscaling minimum (shown by ``GET /v1/models/{name}``)."""
    a = cfg.serving.autoscaling
    return a.min_replicas if a is not None else cfg.serving.num_replicas


# ------------------------------------------------------------------------------------------------ helpers
def _run(cfg: Config, user_config: dict[str, Any], mode: str, url: str) -> DeployInfo:
    from ray import serve

    name = app_name(cfg)
    try:
        serve.run(_application(cfg, user_config, mode), name=name, route_prefix=route_prefix(cfg))
    except RuntimeError as err:  # DEPLOY_FAILED: the replica's constructor or reconfigure raised
        raise ServingError(
            f"serving app '{name}' failed to deploy: {err}; see the replica logs under "
            "/tmp/ray/session_latest/logs/serve/"
        ) from None
    versions = {v: d["role"] for v, d in user_config["versions"].items()}
    return DeployInfo(
        app_name=name,
        model=cfg.name,
        url=url,
        versions=versions,
        weights=dict(user_config["weights"]),
        shadow=user_config["shadow"],
        shadow_pct=user_config["shadow_pct"],
        direct_urls=_direct_urls(cfg, name, mode),
        revision=user_config["revision"],
        ingress=mode,
    )


def _start_serve(cfg: Config, ingress: str | None) -> tuple[str, str]:
    """Start Serve unless it runs, with the ingress asked for; returns the running Serve's ingress (``haproxy``
    or ``python``) and its URL."""
    from ray import serve

    asked = ingress or cfg.serving.ingress
    wanted = resolve_ingress(asked)
    running = running_ingress()
    env = controller_env(wanted, free_port(cfg.serving.host) if running is None else None)
    http = {"host": cfg.serving.host, "port": cfg.serving.port, "request_timeout_s": cfg.serving.request_timeout_s}
    # Options only apply when Serve starts; on a running Serve they are ignored, so its URL is read back.
    serve.start(http_options=http, controller_options={"runtime_env": {"env_vars": env}})
    if running is None:
        running = "haproxy" if wanted == "haproxy" else "python"
    elif asked != "auto" and (running == "haproxy") != (wanted == "haproxy"):
        logger.warning("Serve already runs with the %s ingress; serving.ingress=%s applies when Serve starts "
                       "(after `serve shutdown`)", running, asked)
    return running, _proxy_url(cfg)


def _app_mode(cfg: Config, running: str) -> str:
    """The replicas' ingress mode: the deployed app's own (a reconfigure must not restart replicas), else what the
    running Serve supports (HAProxy needs every replica behind it; the Python proxy takes direct or proxy)."""
    if running == "haproxy":
        return "haproxy"
    deployed = _deployed_mode(app_name(cfg))
    if deployed in ("direct", "proxy"):
        return deployed
    wanted = resolve_ingress(cfg.serving.ingress)
    return wanted if wanted in ("direct", "proxy") else "direct"


def _proxy_url(cfg: Config) -> str:
    host, port = cfg.serving.host, cfg.serving.port
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        host, port = http.host or host, http.port or port
    except Exception:  # private API: fall back to the configured address
        pass
    if (host, port) != (cfg.serving.host, cfg.serving.port):
        logger.warning("Serve was already running on %s:%s, not serving.host/port %s:%s (set when Serve starts)",
                       host, port, cfg.serving.host, cfg.serving.port)
    return base_url(cfg, host, port)


def _direct_urls(cfg: Config, name: str, mode: str | None) -> list[str]:
    """Each replica's own URL (Serve's controller knows the ports; private API, so best effort)."""
    import ray
    from ray.serve.context import _get_global_client

    if mode not in ("haproxy", "direct"):
        return []
    try:
        # Under HAProxy the controller answers other callers with HAProxy's own address; the replicas' ports are
        # what it gives the HAProxy manager.
        groups = ray.get(_get_global_client()._controller.get_target_groups.remote(name, mode == "haproxy"),
                         timeout=10)
    except Exception:
        return []
    local = cfg.serving.host in ("127.0.0.1", "localhost", "::1")  # then every replica is on this machine
    return sorted(
        base_url(cfg, "127.0.0.1" if local else t.ip, t.port)
        for g in groups
        if str(getattr(g.protocol, "value", g.protocol)) == "HTTP"
        for t in g.targets
        if t.name.startswith("SERVE_REPLICA::")
    )


def live_routing(cfg: Config) -> dict[str, Any] | None:
    """The routing the running app was last given (``weights``, ``shadow``), or None when unknown."""
    user_config = _running_user_config(cfg)
    if user_config is None:
        return None
    return {"weights": {str(v): float(w) for v, w in user_config.get("weights", {}).items()},
            "shadow": user_config.get("shadow")}


def _running_user_config(cfg: Config) -> dict[str, Any] | None:
    """The ``user_config`` the running app was last given, or None (not deployed, or Serve's private API moved)."""
    from ray.serve.context import _get_global_client

    try:
        info, _ = _get_global_client().get_deployment_info(DEPLOYMENT_NAME, app_name(cfg))
        return dict(info.deployment_config.user_config or {})
    except Exception:  # noqa: BLE001 - private API, or nothing deployed
        return None


def _deployed_mode(name: str) -> str | None:
    """The ingress mode the running app's replicas were deployed with (None: not deployed or unreadable)."""
    from ray.serve.context import _get_global_client

    try:
        info, _ = _get_global_client().get_deployment_info(DEPLOYMENT_NAME, name)
        env = ((info.replica_config.ray_actor_options or {}).get("runtime_env") or {}).get("env_vars", {})
    except Exception:  # private API, or nothing deployed
        return None
    for mode in ("haproxy", "direct"):
        if all(env.get(k) == v for k, v in replica_env(mode).items()):
            return mode
    return "proxy"
