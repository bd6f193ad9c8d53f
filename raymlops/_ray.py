"""Starting or joining Ray, for the CLI, the Python API and the tests: the one place that calls ``ray.init``.

Nothing happens at import. ``ENV_DEFAULTS`` are the environment settings every local Ray of ours starts with
(tests set the same ones, from here).
"""

from __future__ import annotations

import os
from typing import Any

from raymlops.errors import ControllerError

__all__ = ["ENV_DEFAULTS", "apply_env_defaults", "cluster_address", "connect", "connect_cluster", "ensure_ray",
           "init_ray", "init_ray_later", "quiet_ray_data"]

ENV_DEFAULTS = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # Train v2 collects worker reports every 2 s, which floors every epoch at 2 s (bench_train.py); a local Ray
    # started here inherits this. On a cluster, set it in the cluster's environment.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_env_defaults() -> None:
    """Set ``ENV_DEFAULTS`` where the user has not set them (before Ray starts, so its workers inherit them)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def cluster_address(cfg: Any = None, address: str | None = None) -> str | None:
    """The cluster to use: ``address`` (--address), else the config environment's address, else $RAY_ADDRESS."""
    env_address = cfg.environments[cfg.environment].address if cfg is not None and cfg.environment else None
    return address or env_address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None) -> None:
    """Connect to the given cluster, $RAY_ADDRESS (as under `ray job submit`), or start a small local Ray."""
    import ray

    if ray.is_initialized():
        return
    apply_env_defaults()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Worker logs stay in /tmp/ray/session_latest/logs: the steps report progress (and errors) themselves.
        ray.init(include_dashboard=False, object_store_memory=512 * 1024 * 1024, configure_logging=False,
                 log_to_driver=False)
    quiet_ray_data()


_later: dict[str, str | None] = {}


def init_ray_later(address: str | None = None) -> None:
    """Remember where ``ensure_ray`` starts or joins Ray, without starting it now.

    For commands whose small inputs are handled in this process (``data.local_max_rows``): starting a local Ray costs
    seconds that a small validation does not need.
    """
    _later["address"] = address


def ensure_ray() -> None:
    """Start or join Ray, where ``init_ray_later`` said (else as ``init_ray()``), unless it is running."""
    import ray

    if not ray.is_initialized():
        init_ray(_later.get("address"))


def connect(cfg: Any = None, address: str | None = None) -> None:
    """Join the cluster that runs Serve: --address, the environment's, $RAY_ADDRESS, else a local `ray start`."""
    init_ray(cluster_address(cfg, address) or "auto")


def connect_cluster(cfg: Any = None, address: str | None = None) -> None:
    """Join the cluster where the controller runs; without any address it is an error that says what to give."""
    address = cluster_address(cfg, address)
    if not address:
        raise ControllerError("give the cluster the controller runs on: --address HOST:PORT or $RAY_ADDRESS (start "
                              "one with `ray start --head`; `raymlops controller start` without them runs it in "
                              "the foreground)")
    try:
        init_ray(address)
    except ConnectionError as err:
        raise ControllerError(f"cannot reach the Ray cluster at {address}: {err}; check --address / $RAY_ADDRESS") \
            from None


def quiet_ray_data() -> None:
    """Our steps print their own progress; Ray Data's bars and INFO lines would bury it."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we know
