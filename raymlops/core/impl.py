"""Pipeline implementations per environment, as pure state: which one is deployed, its history, the runs it
produced, and when it has earned promotion to the next environment.

``EnvPipelines`` is what one environment persists; every function returns a new one. The clock is passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["Deployment", "EnvPipelines", "deploy", "promotion_due", "record_run", "rollback", "tree_digest"]


def tree_digest(files: Iterable[tuple[str, str]]) -> str:
    """Content digest of a source tree from ``(relative path, sha256 of the bytes)`` pairs, order-free."""
    h = hashlib.sha256()
    for path, sha in sorted(files):
        h.update(f"{sha}  {path}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Deployment:
    """One implementation deployed to an environment, and why."""

    digest: str
    deployed_at: float
    reason: str


@dataclass(frozen=True)
class EnvPipelines:
    """An environment's implementations: the current one, what was deployed before, runs per implementation."""

    current: str | None = None
    history: tuple[Deployment, ...] = ()
    runs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # digest -> {"runs": n, "models": n}
    pending_approval: str | None = None  # digest that earned promotion and waits for an operator
    promoted: tuple[str, ...] = ()  # digests already handed to the next environment

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "history": [asdict(d) for d in self.history],
                "runs": {k: dict(v) for k, v in self.runs.items()}, "pending_approval": self.pending_approval,
                "promoted": list(self.promoted)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvPipelines:
        return cls(d.get("current"), tuple(Deployment(**x) for x in d.get("history", [])),
                   {k: dict(v) for k, v in d.get("runs", {}).items()}, d.get("pending_approval"),
                   tuple(d.get("promoted", [])))


def deploy(state: EnvPipelines, digest: str, now: float, reason: str) -> EnvPipelines:
    """Make ``digest`` current (a no-op when it already is)."""
    if state.current == digest:
        return state
    return replace(state, current=digest, history=(*state.history, Deployment(digest, now, reason)))


def rollback(state: EnvPipelines, now: float) -> EnvPipelines:
    """Back to the implementation deployed before the current one; ``ValueError`` when there is none."""
    earlier = [d.digest for d in state.history if d.digest != state.current]
    if not earlier:
        raise ValueError("no earlier pipeline implementation was deployed to this environment")
    return deploy(state, earlier[-1], now, f"rollback from {(state.current or '')[:12]}")


def record_run(state: EnvPipelines, digest: str, registered_model: bool) -> EnvPipelines:
    """Count a finished run of ``digest`` (and whether it registered a blessed model)."""
    runs = {k: dict(v) for k, v in state.runs.items()}
    count = runs.setdefault(digest, {"runs": 0, "models": 0})
    count["runs"] += 1
    count["models"] += int(registered_model)
    return replace(state, runs=runs)


def promotion_due(state: EnvPipelines, after_runs: int | None) -> bool:
    """Whether the current implementation has produced ``after_runs`` blessed models and was not handed on yet."""
    if state.current is None or after_runs is None or state.current in state.promoted:
        return False
    return state.runs.get(state.current, {}).get("models", 0) >= after_runs
