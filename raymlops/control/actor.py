"""The detached controller actor (one per pipeline, namespace ``raymlops``) and the calls the CLI makes to it.

The actor is a thin shell: a loop thread that calls ``Controller.tick`` every ``controller.poll_interval_s``, and
methods that forward operator commands. ``max_restarts=-1``: Ray restarts a killed actor, which reloads the state
file and carries on where the old one stopped (``Controller.start``).

Before it acts, the actor takes the pipeline's controller lease (``raymlops.control.statefile.Lease``) under its Ray
actor id, which survives restarts, and renews it from its own thread; a controller of the same pipeline elsewhere
(another cluster on the same storage) is refused with the holder's name, unless started with ``take_over``. A
controller that loses its lease stops acting (``Controller.fence``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from raymlops.config import Config
from raymlops.errors import ControllerError, RaymlopsError

__all__ = ["NAMESPACE", "ControllerActor", "absolute_config", "actor_name", "call", "get_controller", "lease_ttl_s",
           "start_controller", "stop_controller"]

NAMESPACE = "raymlops"


def lease_ttl_s(cfg: Config) -> float:
    """How long a controller's lease lasts unrenewed: long enough for a restart by Ray, short enough that a dead
    cluster's controller does not block a new one for long."""
    return max(30.0, 10.0 * cfg.controller.poll_interval_s)


def actor_name(cfg: Config) -> str:
    return f"controller-{cfg.name}"


def absolute_config(cfg: Config, base: str | None = None) -> Config:
    """``cfg`` with local relative paths made absolute: actors and tasks do not run in the caller's directory."""
    root = Path(base or os.getcwd())

    def fix(uri: str | None) -> str | None:
        if uri is None or "://" in uri or Path(uri).is_absolute():
            return uri
        return str((root / uri).resolve())

    def fix_tracking(uri: str) -> str:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + fix(uri[len("sqlite:///"):])
        return uri

    paths = {"storage_uri": fix, "data.source": fix, "triggers.landing_uri": fix, "tracking_uri": fix_tracking}
    doc = cfg.model_dump(mode="json")
    doc["storage_uri"] = fix(doc["storage_uri"])
    doc["data"]["source"] = fix(doc["data"]["source"])
    doc["triggers"]["landing_uri"] = fix(doc["triggers"]["landing_uri"])
    doc["tracking_uri"] = fix_tracking(doc["tracking_uri"])
    # Other environments are derived from this config later (pipeline promotion): their paths too.
    defaults = Config().model_dump(mode="json")
    for settings in [env["set"] for env in doc["environments"].values()] + [doc["environment_base"]]:
        for key, value in settings.items():
            if key in paths and value == "__default__":  # the default is a relative path too
                value = functools.reduce(lambda node, part: node[part], key.split("."), defaults)
            if key in paths and isinstance(value, str):
                settings[key] = paths[key](value)
    return Config.model_validate(doc)


class ControllerActor:
    """Wrapped with ``ray.remote`` by ``start_controller``; plain so that it stays importable without Ray."""

    def __init__(self, cfg_doc: dict[str, Any], take_over: bool = False):
        self.cfg = Config.model_validate(cfg_doc)
        self.started_at = time.time()
        self.last_error: str | None = None
        self.refused: str | None = None  # set when another controller holds the lease: this one never acts
        self._take_over = take_over
        self._ready, self._stop = threading.Event(), threading.Event()
        self._ctl = None
        self._gauges = None
        self._lease = None
        self._taken = None  # the lease this controller took over, if any
        # The loop starts here, not in a method call: a restarted actor runs only its constructor.
        self._thread = threading.Thread(target=self._main, name="raymlops-controller", daemon=True)
        self._thread.start()

    def _say(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} controller {self.cfg.name}: {msg}", flush=True)

    def _main(self) -> None:
        from raymlops.control.canary import CanaryPolicy
        from raymlops.control.controller import Controller
        from raymlops.control.gauges import start_controller_gauges
        from raymlops.control.ports import build_ports
        from raymlops.control.triggers import TriggerPolicy

        cfg = self.cfg
        if not self._take_lease():
            self._ready.set()
            return
        while not self._stop.is_set():
            try:
                ctl = Controller(CanaryPolicy.from_config(cfg.canary),
                                 TriggerPolicy.from_config(cfg.triggers, cfg.canary.min_labels),
                                 build_ports(cfg, self._say), trigger_interval_s=cfg.triggers.poll_interval_s,
                                 monitor_interval_s=cfg.monitoring.interval_s,
                                 pre_exposure=cfg.pre_exposure.enabled, say=self._say)
                ctl.start()
                self._ctl = ctl
                self._gauges = start_controller_gauges(cfg.name, ctl)  # Prometheus: phase, weights, drift, quality
                if self._taken is not None:
                    ctl.observe("lease_taken_over", f"lease taken over from {self._taken.holder} (--take-over)")
                break
            except Exception as err:  # noqa: BLE001 - e.g. the tracking store is briefly unreachable: retry
                self._fail("start", err)
                self._stop.wait(min(30.0, 2 * cfg.controller.poll_interval_s))
        self._ready.set()
        threading.Thread(target=self._renew, name="raymlops-controller-lease", daemon=True).start()
        while not self._stop.wait(cfg.controller.poll_interval_s):
            if self._ctl is None or self._ctl.status()["fenced"]:
                break  # lost the lease: another controller acts now
            try:
                self._ctl.tick()
                self.last_error = None
            except Exception as err:  # noqa: BLE001 - one failed poll must not end the loop
                self._fail("poll", err)

    def _take_lease(self) -> bool:
        import ray

        from raymlops.control.statefile import Lease, lease_uri

        owner = ray.get_runtime_context().get_actor_id() or f"process-{os.getpid()}"
        self._lease = Lease(lease_uri(self.cfg), owner, Lease.describe(owner), lease_ttl_s(self.cfg))
        self._taken = None
        while not self._stop.is_set():
            try:
                self._taken = self._lease.acquire(self.cfg.name, take_over=self._take_over)
                return True
            except ControllerError as err:  # held by another controller: refuse, do not retry
                self.refused = self.last_error = str(err)
                self._say(f"refused: {err}")
                return False
            except Exception as err:  # noqa: BLE001 - storage briefly unreachable: retry
                self._fail("lease", err)
                self._stop.wait(min(30.0, 2 * self.cfg.controller.poll_interval_s))
        return False

    def _renew(self) -> None:
        every = min(self.cfg.controller.poll_interval_s, lease_ttl_s(self.cfg) / 3)
        while not self._stop.wait(every):
            try:
                self._lease.renew()
            except ControllerError as err:  # taken over: stop acting at once
                self.last_error = str(err)
                if self._ctl is not None:
                    self._ctl.fence(str(err))
                return
            except Exception as err:  # noqa: BLE001 - storage briefly unreachable: the next renewal retries
                self._fail("lease renewal", err)

    def _fail(self, what: str, err: Exception) -> None:
        self.last_error = f"{what}: {type(err).__name__}: {err}"
        self._say(f"{what} failed: {''.join(traceback.format_exception(err))}")

    def _controller(self):
        if self.refused is not None:
            raise ControllerError(self.refused)
        if not self._ready.wait(120) or self._ctl is None:
            raise RaymlopsError(f"the controller of {self.cfg.name!r} is not ready: {self.last_error}")
        return self._ctl

    def ping(self) -> dict[str, Any]:
        return {"ready": self._ready.is_set() and self._ctl is not None, "pid": os.getpid(),
                "started_at": self.started_at, "last_error": self.last_error, "refused": self.refused}

    def status(self) -> dict[str, Any]:
        return {**self._controller().status(), "actor": self.ping()}

    def trigger(self, request_id: str | None = None, operator: str | None = None) -> str:
        return self._controller().trigger(request_id, operator)

    def command(self, command: str, request_id: str | None = None, version: str | None = None,
                operator: str | None = None) -> dict | None:
        entry = self._controller().command(command, request_id, version, operator)
        return None if entry is None else vars(entry)

    def events(self, since_seq: int = 0) -> list[dict[str, Any]]:
        return self._controller().events(since_seq)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._ctl is not None:
            self._ctl.close()
        if self._gauges is not None:
            self._gauges.stop()
        if self._lease is not None and self.refused is None:
            self._lease.release()  # the next controller of this pipeline may start at once


# --------------------------------------------------------------------------------------------- client side
def get_controller(cfg: Config):
    """The running controller actor of ``cfg``, or None. Ray must be initialised."""
    import ray

    try:
        return ray.get_actor(actor_name(cfg), namespace=NAMESPACE)
    except ValueError:
        return None


def start_controller(cfg: Config, *, wait_s: float = 120.0, take_over: bool = False) -> tuple[Any, bool]:
    """Start the detached controller of ``cfg`` (or find the running one); returns (handle, started_now).

    Raises ``ControllerError`` naming the holder when another controller of ``cfg`` (elsewhere, on the same
    storage) holds the lease; ``take_over`` takes it anyway (that controller stops acting at its next renewal).
    """
    import ray

    from raymlops.control.statefile import read_lease, take_over_hint

    found = get_controller(cfg)
    if found is not None:
        return found, False
    cfg = absolute_config(cfg)
    held = read_lease(cfg)
    if held is not None and held.live(time.time()) and not take_over:
        raise ControllerError(f"another controller of {cfg.name!r} holds its lease (renewed "
                              f"{time.time() - held.renewed_at:.0f} s ago): {held.holder}; {take_over_hint(cfg.name)}")
    handle = ray.remote(ControllerActor).options(
        name=actor_name(cfg), namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_task_retries=3, max_concurrency=8, num_cpus=cfg.controller.num_cpus,
    ).remote(cfg.model_dump(mode="json"), take_over)
    deadline = time.monotonic() + wait_s
    while not (ping := ray.get(handle.ping.remote(), timeout=wait_s))["ready"]:
        if ping["refused"]:
            ray.kill(handle, no_restart=True)
            raise ControllerError(ping["refused"])
        if time.monotonic() > deadline:
            raise RaymlopsError(f"the controller of {cfg.name!r} did not get ready in {wait_s:g} s: "
                                f"{ray.get(handle.ping.remote())['last_error']}")
        time.sleep(0.2)
    return handle, True


def stop_controller(cfg: Config) -> bool:
    """Stop the controller for good (its state stays in storage; serving keeps running). False if none ran."""
    import ray

    handle = get_controller(cfg)
    if handle is None:
        return False
    try:
        ray.get(handle.shutdown.remote(), timeout=90)
    finally:
        ray.kill(handle, no_restart=True)
    return True


def call(cfg: Config, method: str, *args: Any, timeout_s: float = 300.0) -> Any:
    """Call a method of the running controller; RaymlopsError naming the fix when none runs."""
    import ray

    handle = get_controller(cfg)
    if handle is None:
        raise ControllerError(f"no controller is running for {cfg.name!r}; start one with "
                            "`raymlops controller start CONFIG` (on a cluster: --address or RAY_ADDRESS)")
    try:
        return ray.get(getattr(handle, method).remote(*args), timeout=timeout_s)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
        if isinstance(cause, RaymlopsError):
            raise cause from None
        raise
