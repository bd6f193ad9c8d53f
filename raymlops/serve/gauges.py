"""Gauges that stay exported: a daemon thread re-records sampled values through ``ray.util.metrics``.

Ray (2.60) exports a gauge value only in the report interval it was recorded in, and its metrics agent forgets a
series it has not heard of for two intervals (``RAY_metrics_report_interval_ms``, 10 s by default). A value set
once, e.g. a canary's weight, would vanish from Prometheus half a minute later. ``GaugeSampler`` calls a sampling
function every half interval and records what it returns; a series the function stops returning ages out, which
is what a version that left serving should do.

Scrape: every node's metrics agent serves ``/metrics`` on its metrics export port (``ray start
--metrics-export-port=8080``; ``ray.init(_metrics_export_port=...)`` for a local Ray; otherwise a free port, listed
as ``MetricsExportPort`` by ``ray.nodes()``). Names get Ray's ``ray_`` prefix, and every series carries Ray's own
labels (``WorkerId``, ``NodeAddress``, ``SessionName``...): aggregate over them, e.g. ``max by (model, version)``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping

__all__ = ["GaugeSampler", "Sample", "report_interval_s"]

_log = logging.getLogger("raymlops.metrics")

# (gauge name, tags, value)
Sample = tuple[str, Mapping[str, str], float]


def report_interval_s() -> float:
    """Ray's metrics report interval in seconds (its floor is 1 s), or 10 s when Ray cannot say."""
    try:
        import ray

        return max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
    except Exception:  # noqa: BLE001 - an older or stripped Ray: its documented default
        return 10.0


class GaugeSampler:
    """Records ``sample()`` into Ray gauges now and every half report interval, on a daemon thread.

    ``specs`` maps each gauge name to ``(description, tag_keys)``. Does nothing outside a running Ray (a unit test,
    a script without ``ray.init``), so callers need no guard. A failing ``sample`` is logged and retried next time.
    """

    def __init__(self, specs: Mapping[str, tuple[str, tuple[str, ...]]],
                 sample: Callable[[], Iterable[Sample]], *, name: str = "raymlops-gauges"):
        self.specs = dict(specs)
        self._sample = sample
        self._gauges: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name
        self._failed = False

    def start(self) -> GaugeSampler:
        """Start sampling (idempotent); a no-op unless Ray is initialized in this process."""
        ray = sys.modules.get("ray")  # never import Ray here: pure callers must stay pure
        if self._thread is not None or ray is None or not ray.is_initialized():
            return self
        from ray.util.metrics import Gauge

        self._gauges = {n: Gauge(n, description=d, tag_keys=keys) for n, (d, keys) in self.specs.items()}
        self.record()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def record(self) -> int:
        """Sample and record once (also called by the thread); returns how many values were recorded."""
        if not self._gauges:
            return 0
        try:
            n = 0
            for name, tags, value in self._sample():
                self._gauges[name].set(float(value), dict(tags))
                n += 1
            self._failed = False
            return n
        except Exception:  # noqa: BLE001 - metrics must never take the process down
            if not self._failed:  # once per failure streak, not every half interval
                _log.warning("gauges %s: sampling failed", self._name, exc_info=True)
            self._failed = True
            return 0

    def stop(self) -> None:
        """Stop the thread (the last values age out of Prometheus after two report intervals)."""
        self._stop.set()

    def _run(self) -> None:
        every = max(0.5, report_interval_s() / 2)
        while not self._stop.wait(every):
            self.record()
