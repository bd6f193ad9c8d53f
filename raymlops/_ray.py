"""Starting or joining Ray, for the CLI, the Python API and the tests: the one place that calls ``ray.init``.

Nothing happens at import. ``ENV_DEFAULTS`` are the environment settings every local Ray of ours starts with
(tests set the same ones, from here).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raymlops.errors import ControllerError

__all__ = ["ENV_DEFAULTS", "LogFile", "apply_env_defaults", "cli_output", "cluster_address", "connect",
           "connect_cluster", "ensure_ray", "init_ray", "init_ray_later", "log_under", "quiet_ray_data",
           "raylet_message"]

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
    verbose = _output["verbose"]
    _route_ray()  # before ray.init, which logs (token authentication ...) and starts the raylet listener
    if address:
        # Workers' prints reach the driver (the job's log) unless the CLI runs quiet (then they stay in Ray's logs).
        ray.init(address=address, log_to_driver=verbose is not False,
                 configure_logging=verbose is not False)  # True would add a stderr handler to Ray's logger
    else:
        # Worker logs stay in /tmp/ray/session_latest/logs: the steps report progress (and errors) themselves.
        ray.init(include_dashboard=False, object_store_memory=512 * 1024 * 1024, configure_logging=False,
                 log_to_driver=bool(verbose))
    if verbose is False:
        _note_session_logs()
    if not verbose:
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


# ------------------------------------------------------------------------------------------------- CLI output
# The CLI prints its own lines only. Ray's logger, Python warnings (pkg_resources / setuptools deprecations ...)
# and the raylet's messages (which Ray prints to stdout, where they would break `--json | jq`) go to a log file
# under the storage dir; `raymlops -v` shows them on stderr instead. None: not the CLI, Ray's own behaviour.
_output: dict[str, Any] = {"verbose": None, "handler": None}
LOG_NAME = "raymlops.log"


class LogFile(logging.Handler):
    """Appends records to a file opened at the first record, so a command that logs nothing writes nothing.

    The path can change until then (``log_under``, once the config names the storage dir).
    """

    def __init__(self, path: str):
        super().__init__(logging.DEBUG)
        self.path = path
        self._stream: Any = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def retarget(self, path: str) -> None:
        with self.lock:
            if self._stream is not None and path != self.path:
                self._stream.close()
                self._stream = None
            self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._stream is None:  # private like everything under storage (0700 dir, 0600 file, no links)
                os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
                self._stream = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - kept open across records
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # a log file must never fail a command
            self.handleError(record)

    def close(self) -> None:
        with self.lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        super().close()


def _log_path(storage_uri: str | None) -> str:
    from raymlops import storage

    root = storage_uri or os.environ.get("RAYMLOPS_STORAGE") or "./.raymlops"
    if not storage.is_local(root):  # s3:// and the like: a log file is a local thing
        import tempfile

        root = os.path.join(tempfile.gettempdir(), f"raymlops-{os.getuid()}")  # per user: not a shared dir
    return os.path.join(root.removeprefix("file://"), "logs", LOG_NAME)


def log_under(storage_uri: str) -> str | None:
    """Point the CLI's log file at ``{storage_uri}/logs/raymlops.log`` (a temp dir for remote storage); its path,
    or None when output is not quiet."""
    handler = _output["handler"]
    if handler is None:
        return None
    handler.retarget(_log_path(storage_uri))
    return handler.path


def raylet_message(line: str) -> None:
    """A message the raylet sends the driver (e.g. "N worker processes have been started"): logged when quiet,
    else on stderr (never stdout, which carries the command's results)."""
    if _output["verbose"] is False:
        logging.getLogger("ray.raylet").warning(line)
    else:
        print(f"(raylet) {line}", file=sys.stderr)


def _route_raylet(original: Any) -> Any:
    def route(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                raylet_message(line)
        else:
            original(data, ignore_prefix)

    return route


@contextmanager
def cli_output(verbose: bool = False) -> Iterator[LogFile | None]:
    """Inside: Ray's logs, Python warnings and raylet messages go to the log file (``verbose=False``) or stderr.

    Restores what it changed on exit, so a command run in process (tests) leaves no trace on the next one.
    """
    saved = dict(_output)
    handler = None if verbose else LogFile(_log_path(None))
    _output.update(verbose=verbose, handler=handler, restore=[])
    warn_logger, own = logging.getLogger("py.warnings"), logging.getLogger("raymlops")
    kept = (list(warn_logger.handlers), warn_logger.propagate, logging.lastResort, list(own.handlers))
    if handler is not None:
        warn_logger.handlers[:], warn_logger.propagate = [handler], False
        logging.captureWarnings(True)
        # Records of loggers nobody configured land in logging.lastResort (stderr): Ray's, once ray.init(
        # configure_logging=False) has cleared its handlers (the token-authentication notice comes right after).
        logging.lastResort = handler
        # ... but our own warnings stay on stderr, as before.
        mine = logging.StreamHandler(sys.stderr)
        mine.setLevel(logging.WARNING)
        mine.setFormatter(logging.Formatter("warning: %(message)s"))
        own.handlers[:] = [mine]
        _output["restore"].extend(_divert_handlers(name, handler) for name in _OWN_HANDLERS)
    if "ray" in sys.modules:  # else init_ray does it: importing Ray installs its own stderr handler
        _route_ray()
    try:
        yield handler
    finally:
        for undo in reversed(_output["restore"]):
            undo()
        if handler is not None:
            logging.captureWarnings(False)
            handler.close()
        warn_logger.handlers[:], warn_logger.propagate, logging.lastResort, own.handlers[:] = kept
        _output.clear()
        _output.update(saved)


# Loggers that Ray libraries give their own stderr handler when imported (`import ray.serve` does, and costs
# seconds, so it is not imported here to be configured): handlers they add while the CLI is quiet go to the file.
_OWN_HANDLERS = ("ray.serve",)


def _divert_handlers(name: str, handler: logging.Handler):
    """Make ``logging.getLogger(name)`` take ``handler`` instead of any stream handler added from now on (Serve adds
    one at import); returns the undo."""
    logger = logging.getLogger(name)
    kept = list(logger.handlers)
    logger.handlers[:] = [handler]

    def add(h: logging.Handler) -> None:
        logging.Logger.addHandler(logger, handler if type(h) is logging.StreamHandler else h)

    logger.addHandler = add  # type: ignore[method-assign] - an instance attribute shadows the method, undone below

    def undo() -> None:
        del logger.addHandler
        logger.handlers[:] = kept

    return undo


def _route_ray() -> None:
    """Inside ``cli_output``: Ray's logger to the log file when quiet, and the raylet's messages off stdout."""
    if _output["verbose"] is None or _output.get("ray_routed"):
        return
    import ray._private.worker as ray_worker  # the raylet's messages are printed here, to stdout

    ray_logger = logging.getLogger("ray")
    kept = (list(ray_logger.handlers), ray_logger.propagate, ray_worker.print_to_stdstream)

    def undo() -> None:
        ray_logger.handlers[:], ray_logger.propagate, ray_worker.print_to_stdstream = kept
        _output["ray_routed"] = False

    if _output["handler"] is not None:
        ray_logger.handlers[:], ray_logger.propagate = [_output["handler"]], False
    # Ray's module-level printer, looked up on each message by its listener thread; guarded: a Ray without it
    # just prints as before.
    if callable(kept[2]):
        ray_worker.print_to_stdstream = _route_raylet(kept[2])
    _output["restore"].append(undo)
    _output["ray_routed"] = True


def _note_session_logs() -> None:
    """Say in the log file where the workers' own logs are (Ray keeps them in its session dir)."""
    try:
        import ray

        logging.getLogger("ray").info("Ray session logs (workers, raylet): %s",
                                      ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # only a hint; a Ray without this private path is fine
        pass
