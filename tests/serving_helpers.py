"""Shared by the serving tests: registered packages without Ray Train, configs, load, waiting.

``register_versions`` saves packages of ``tests.data_helpers.build_package`` with different seeds, so each version
gives different predictions; it registers them in MLflow and promotes the first.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from raymlops.config import Config, load_config
from raymlops.registry.models import ModelRegistry, ModelVersionInfo
from tests.data_helpers import IDS, LABEL, TS, build_package, instances

__all__ = ["IDS", "LABEL", "TS", "build_package", "free_port", "hammer", "instances", "register_versions",
           "serving_config", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_config(root: Path, tracking_uri: str, *overrides: str) -> Config:
    """A small config: storage under ``root``, the test's MLflow, a free port, a small MLP trained for a few epochs
    (the default budget of 50 is for users' data, not for tests of serving and control), fast log flushes."""
    return load_config(None, [
        f"storage_uri={root / 'store'}", f"tracking_uri={tracking_uri}", f"serving.port={free_port()}",
        "train.hidden_sizes=[16]", "train.dropout=0", "train.epochs=4", "serving.prediction_log.flush_interval_s=0.5",
        "serving.max_ongoing_requests=32", "serving.max_queued_requests=512", *overrides,
    ])


def register_versions(cfg: Config, root: Path, n: int = 2) -> list[ModelVersionInfo]:
    """Register ``n`` versions (seeds 1..n); version 1 is promoted to champion, version 2 is the challenger."""
    reg = ModelRegistry(cfg.tracking_uri)
    out = []
    for i in range(1, n + 1):
        info = build_package(cfg, root / "packages" / f"v{i}", seed=i)
        out.append(reg.register(cfg.name, info.uri, run_id=None, digest=info.digest, tags={}))
    reg.promote(cfg.name, out[0].version)
    if n >= 2:
        reg.set_alias(cfg.name, "challenger", out[1].version)
    return [reg.get(cfg.name, v.version) for v in out]


@dataclass
class LoadResult:
    """Responses of a load run: status codes, served versions, and any transport failures."""

    statuses: list[int] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)  # ``extract(response)`` of each 200
    failures: list[str] = field(default_factory=list)


def hammer(url: str, bodies: list[dict[str, Any]], *, concurrency: int = 16,
           headers: Callable[[int], dict[str, str]] | None = None,
           extract: Callable[[httpx.Response], Any] | None = None) -> LoadResult:
    """POST every body with ``concurrency`` requests in flight (httpx.AsyncClient); keeps order of results."""
    n = len(bodies)
    result = LoadResult(statuses=[0] * n, versions=[None] * n, values=[None] * n)

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with sem:
                    try:
                        r = await client.post(url, json=bodies[i], headers=headers(i) if headers else None)
                    except httpx.HTTPError as err:
                        result.failures.append(f"{type(err).__name__}: {err}")
                        return
                    result.statuses[i] = r.status_code
                    result.versions[i] = r.headers.get("x-model-version")
                    if extract is not None and r.status_code == 200:
                        result.values[i] = extract(r)

            await asyncio.gather(*(one(i) for i in range(len(bodies))))

    asyncio.run(main())
    return result


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
