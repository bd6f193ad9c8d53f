"""Pipeline implementations per environment, as pure state: which one is deployed, its history, the runs it
produced, and when it has earned promotion to the next environment; and the pure rules of what an implementation
may contain (which paths packaging leaves out, which zip entries may be unpacked).

``EnvPipelines`` is what one environment persists; every function returns a new one. The clock is passed in.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ntpath
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["IGNORE_FILE", "SECRET_PATTERNS", "Deployment", "EnvPipelines", "deploy", "exclusion", "ignore_patterns",
           "promotion_due", "record_run", "rollback", "tree_digest", "zip_entry_problems"]

# Never packaged, whatever `delivery.exclude` says: an implementation is copied into shared storage and onto every
# node, so a working tree's local secrets must not travel with it. Matched against every path component.
SECRET_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", ".pgpass", "credentials*", ".git", ".ssh", ".aws", ".gnupg",
)
IGNORE_FILE = ".raymlopsignore"  # at the root of the packaged tree: one pattern per line, like delivery.exclude


def exclusion(rel: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that leaves the relative path ``rel`` out of a package (None: it is packaged).

    A pattern matches the whole path, any one of its components, or a directory prefix (``benchmarks/results``).
    """
    parts = rel.split("/")
    for p in patterns:
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts) or rel.startswith(p + "/"):
            return p
    return None


def ignore_patterns(text: str) -> list[str]:
    """Patterns of an ignore file: one per line; blank lines and ``#`` comments skipped; a leading or trailing
    ``/`` dropped (``/data/`` and ``data`` both leave out the directory ``data``)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.strip("/"))
    return [p for p in out if p]


def zip_entry_problems(entries: Iterable[tuple[str, int, bool]], *, top: str, max_bytes: int) -> list[str]:
    """What makes a zip unsafe to unpack as an implementation, from its entries ``(name, unpacked size, is a
    symlink)``: a name that is absolute, holds ``..`` or a backslash, or lies outside the ``top`` directory (zip
    slip); a symlink; a name given twice; more than ``max_bytes`` unpacked in all. Empty: safe."""
    problems: list[str] = []
    seen: set[str] = set()
    total = 0
    for name, size, is_link in entries:
        if "\\" in name:
            problems.append(f"entry '{name}' holds a backslash (a path separator on Windows)")
        elif name.startswith("/") or ntpath.isabs(name) or ntpath.splitdrive(name)[0]:
            problems.append(f"entry '{name}' is an absolute path")
        elif ".." in name.split("/"):
            problems.append(f"entry '{name}' holds '..' (it would unpack outside its directory)")
        elif not name.startswith(top):
            problems.append(f"entry '{name}' lies outside {top}")
        if is_link:
            problems.append(f"entry '{name}' is a symlink (implementations hold regular files only)")
        if name in seen:
            problems.append(f"entry '{name}' appears twice")
        seen.add(name)
        total += max(size, 0)
    if total > max_bytes:
        problems.append(f"it unpacks to {total / 2**20:.1f} MiB, over the bound of {max_bytes / 2**20:.1f} MiB")
    return problems


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
