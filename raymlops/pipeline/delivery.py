"""Pipeline delivery: package a working tree as an implementation, pre-flight it, deploy it to an environment,
count its runs there and hand it on to the next environment once it has proven itself.

An implementation is a zip of the working tree (minus ``delivery.exclude``, ``.raymlopsignore`` and, always, the
secret patterns of ``raymlops.core.impl.SECRET_PATTERNS``) named by its full content digest, stored under
``{storage_uri}/pipelines/{name}/implementations/`` of each environment it is deployed to, with a manifest
(digest, sha256 of the zip, git commit, dirty flag, files, what was left out). ``deployments.json`` is the
environment's record (``raymlops.core.impl.EnvPipelines``) of which digest is deployed.

Before any run uses an implementation (and before it is copied into another environment) the zip is read once and
verified: its sha256 against the manifest, every entry against the unpacking rules (no absolute path, ``..``,
symlink or entry outside ``impl/``; at most ``delivery.max_mb`` unpacked), and the digest of its files against the
digest ``deployments.json`` records. Ray then fetches the zip from storage on each node (and caches it there under
its full-digest name): whoever can write ``storage_uri`` between the check and a node's first fetch could still swap
it, which is why write access to storage is the operator's to protect (SECURITY.md). The run and the model it
registers carry the digest and commit (lineage).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from raymlops import storage
from raymlops.config import Config, for_environment
from raymlops.core import impl as core
from raymlops.errors import ConcurrentUpdateError, PipelineError
from raymlops.storage import cas

__all__ = ["RUN_TAGS_ENV", "Implementation", "approve_into", "approve_promotion", "current_implementation",
           "deploy_implementation", "deploy_pipeline", "describe", "env_state", "get_implementation",
           "import_pipeline", "on_run_finished", "package_implementation", "preflight", "promote_current",
           "promote_implementation", "rollback_implementation", "run_tags", "runtime_env_for", "verify_implementation"]

RUN_TAGS_ENV = "RAYMLOPS_RUN_TAGS"  # JSON tags a run (and the model it registers) carries: set by the controller


@dataclass(frozen=True)
class Implementation:
    """A packaged pipeline implementation."""

    digest: str
    commit: str | None
    dirty: bool
    created_at: float
    source: str
    files: int
    size_bytes: int
    uri: str  # the zip
    zip_sha256: str = ""  # sha256 of the zip's bytes ("" in manifests written before it was recorded)
    secrets_excluded: tuple[str, ...] = ()  # paths left out because they look like secrets (SECRET_PATTERNS)
    excluded: int = 0  # further paths left out by delivery.exclude and .raymlopsignore

    @property
    def short(self) -> str:
        return self.digest[:12]


def _dir(cfg: Config) -> str:
    return storage.join(cfg.storage_uri, "pipelines", cfg.name)


def _state_uri(cfg: Config) -> str:
    return storage.join(_dir(cfg), "deployments.json")


def _zip_uri(cfg: Config, digest: str) -> str:
    # The full digest: a 12-hex-digit name lets two trees crafted to share a prefix take each other's place.
    return storage.join(_dir(cfg), "implementations", f"{digest}.zip")


def _legacy_zip_uri(cfg: Config, digest: str) -> str:
    """Where implementations packaged before full-digest names live (still readable: they are verified alike)."""
    return storage.join(_dir(cfg), "implementations", f"{digest[:12]}.zip")


TOP = "impl/"  # the one top-level directory of a stored zip


def _git(source: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def import_pipeline(path: str) -> Callable[..., Any]:
    """The function ``controller.pipeline`` names (``module:function``); ``PipelineError`` when it does not import."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise PipelineError(f"controller.pipeline {path!r} cannot be imported ({err}); give `module:function` of "
                            "a function importable on the cluster") from None


# ------------------------------------------------------------------------------------------------ package
@dataclass
class _Walk:
    files: list[tuple[str, bytes]]
    secrets: list[str]
    excluded: int


def _walk(source: Path, patterns: list[str], max_bytes: int) -> _Walk:
    """The files to package, what was left out, and a refusal for any symlink that leaves the tree."""
    walk = _Walk([], [], 0)
    size = 0
    for root, dirs, names in os.walk(source):  # never follows directory symlinks: they are checked below
        rel_root = Path(root).relative_to(source).as_posix()
        kept = []
        for name in sorted(dirs) + sorted(names):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            path = Path(root, name)
            is_dir = name in dirs
            if core.exclusion(rel, core.SECRET_PATTERNS):
                walk.secrets.append(rel + "/" if is_dir else rel)
                continue
            if core.exclusion(rel, patterns):
                walk.excluded += 1
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(source):
                    raise PipelineError(
                        f"{rel} is a symlink to {target}, outside the packaged tree {source}: an implementation "
                        f"holds the tree's own files only; replace the link with a copy, or leave it out (a line "
                        f"`{rel}` in {core.IGNORE_FILE} or delivery.exclude)")
                if target.is_dir():
                    continue  # inside the tree: its files are packaged where they really are
            if is_dir:
                kept.append(name)
            elif path.is_file():  # regular files (and links to them inside the tree); not sockets or fifos
                size += path.stat().st_size
                if size > max_bytes:
                    raise PipelineError(
                        f"{source} holds more than {max_bytes / 2**20:.1f} MiB after delivery.exclude; exclude "
                        f"data and build outputs (delivery.exclude or {core.IGNORE_FILE}) or raise delivery.max_mb")
                walk.files.append((rel, path.read_bytes()))
        dirs[:] = kept
    return walk


def _zip_bytes(files: list[tuple[str, bytes]], top: str) -> bytes:
    """A deterministic zip (fixed timestamps, sorted names): the same tree gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in sorted(files):
            zf.writestr(zipfile.ZipInfo(f"{top}{rel}", date_time=(2000, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _file_digest(files: list[tuple[str, bytes]]) -> str:
    return core.tree_digest((rel, hashlib.sha256(data).hexdigest()) for rel, data in files)


def package_implementation(cfg: Config, source_dir: str | Path = ".") -> Implementation:
    """Zip the working tree under its content digest (idempotent: the same tree gives the same implementation).

    Left out: ``delivery.exclude``, the patterns of ``.raymlopsignore`` at the tree's root, and always anything
    that looks like a secret (``raymlops.core.impl.SECRET_PATTERNS``); the implementation lists the secrets left
    out. A symlink that leaves the tree is refused (``PipelineError`` naming it).
    """
    source = Path(source_dir).resolve()
    if not source.is_dir():
        raise PipelineError(f"{source} is not a directory; pass the pipeline's working tree (--source DIR)")
    ignore = source / core.IGNORE_FILE
    patterns = list(cfg.delivery.exclude)
    if ignore.is_file() and not ignore.is_symlink():
        patterns += core.ignore_patterns(ignore.read_text())
    walk = _walk(source, patterns, int(cfg.delivery.max_mb * 2**20))
    if not walk.files:
        raise PipelineError(f"{source} has no files to package (all excluded by delivery.exclude or "
                            f"{core.IGNORE_FILE}?)")
    digest = _file_digest(walk.files)
    data = _zip_bytes(walk.files, TOP)
    commit = _git(source, "rev-parse", "HEAD")
    dirty = bool(_git(source, "status", "--porcelain")) if commit else False
    impl = Implementation(digest, commit, dirty, time.time(), str(source), len(walk.files),
                          sum(len(b) for _, b in walk.files), _zip_uri(cfg, digest),
                          hashlib.sha256(data).hexdigest(), tuple(walk.secrets), walk.excluded)
    try:
        stored = get_implementation(cfg, digest)
        verify_implementation(cfg, stored)
        # Already packaged: its manifest records the first packaging; what this one left out is reported.
        return replace(stored, secrets_excluded=impl.secrets_excluded, excluded=impl.excluded)
    except PipelineError:
        pass  # not packaged yet, or what is stored under this digest is not this tree: (re)write it
    storage.atomic_write_bytes(impl.uri, data)
    storage.atomic_write_text(impl.uri[:-4] + ".json", json.dumps(asdict(impl), indent=2))
    return get_implementation(cfg, digest)


def get_implementation(cfg: Config, digest: str) -> Implementation:
    """A packaged implementation by its digest in ``cfg``'s environment (its manifest; the zip is verified by
    ``verify_implementation`` when a run is about to use it)."""
    for uri in (_zip_uri(cfg, digest), _legacy_zip_uri(cfg, digest)):
        manifest = uri[:-4] + ".json"
        if storage.exists(manifest):
            break
    else:
        raise PipelineError(f"pipeline implementation {digest[:12]} is not in {_dir(cfg)}; list them with "
                            "`raymlops pipeline list CONFIG --env ENV`")
    doc = json.loads(storage.read_text(manifest))
    if doc.get("digest") != digest:
        raise PipelineError(f"the manifest {manifest} names implementation {str(doc.get('digest'))[:12]}, not "
                            f"{digest[:12]}: the storage was altered; deploy the implementation again with "
                            "`raymlops pipeline deploy`")
    doc = {**doc, "uri": uri, "secrets_excluded": tuple(doc.get("secrets_excluded", ()))}
    return Implementation(**{k: v for k, v in doc.items() if k in Implementation.__dataclass_fields__})


def verify_implementation(cfg: Config, impl: Implementation) -> list[tuple[str, bytes]]:
    """Read ``impl``'s zip once and check it before anything uses it; its files ``(relative path, bytes)``.

    Checks, in order: the sha256 of the zip against the manifest; every entry against the unpacking rules
    (``raymlops.core.impl.zip_entry_problems`` with ``delivery.max_mb`` as the bound); the digest of the files
    against ``impl.digest`` (the digest ``deployments.json`` records). ``PipelineError`` names what failed.
    """
    redeploy = "deploy a good implementation again with `raymlops pipeline deploy` (and find out who can write there)"
    data = storage.read_bytes(impl.uri)
    sha = hashlib.sha256(data).hexdigest()
    if impl.zip_sha256 and sha != impl.zip_sha256:
        raise PipelineError(f"pipeline implementation {impl.short}: the sha256 of {impl.uri} ({sha[:12]}) does not "
                            f"match its manifest ({impl.zip_sha256[:12]}); it was changed after packaging; {redeploy}")
    max_bytes = int(cfg.delivery.max_mb * 2**20)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            problems = core.zip_entry_problems(
                ((i.filename, i.file_size, (i.external_attr >> 16) & 0o170000 == 0o120000) for i in infos),
                top=TOP, max_bytes=max_bytes)
            if problems:
                raise PipelineError(f"pipeline implementation {impl.short} ({impl.uri}) is refused: "
                                    + "; ".join(problems) + f" (the bound is delivery.max_mb "
                                    f"({cfg.delivery.max_mb:g})); {redeploy}")
            # zipfile stops at each entry's declared size and checks its CRC: the bound above holds here.
            files = [(i.filename[len(TOP):], zf.read(i)) for i in infos if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as err:
        raise PipelineError(f"pipeline implementation {impl.short}: {impl.uri} is not a readable zip ({err}); "
                            f"{redeploy}") from None
    found = _file_digest(files)
    if found != impl.digest:
        raise PipelineError(f"pipeline implementation {impl.short}: the files in {impl.uri} have digest "
                            f"{found[:12]}, not the digest deployments.json records ({impl.digest}); {redeploy}")
    return files


# ---------------------------------------------------------------------------------------------- environment
# deployments.json is written by the CLI and by controllers (run counts, promotions): every write is a
# compare-and-swap on its generation (raymlops.storage.cas), so a concurrent writer's update is never lost.
def _read(cfg: Config) -> tuple[core.EnvPipelines, int]:
    found = cas.read(_state_uri(cfg))
    return (core.EnvPipelines() if found.doc is None else core.EnvPipelines.from_dict(found.doc)), found.generation


def env_state(cfg: Config) -> core.EnvPipelines:
    return _read(cfg)[0]


def _save(cfg: Config, state: core.EnvPipelines, expected: int) -> None:
    cas.write(_state_uri(cfg), state.to_dict(), expected, indent=2)


def _update(cfg: Config, change: Callable[[core.EnvPipelines], core.EnvPipelines]) -> core.EnvPipelines:
    doc = cas.update(_state_uri(cfg), lambda d: change(core.EnvPipelines() if d is None
                                                       else core.EnvPipelines.from_dict(d)).to_dict(), indent=2)
    return core.EnvPipelines.from_dict(doc)


def current_implementation(cfg: Config) -> Implementation | None:
    """The implementation deployed to ``cfg``'s environment (None: runs use the installed code)."""
    state = env_state(cfg)
    return None if state.current is None else get_implementation(cfg, state.current)


def deploy_implementation(cfg: Config, impl: Implementation, reason: str) -> core.EnvPipelines:
    """Make ``impl`` the environment's implementation (its zip is copied into the environment's storage)."""
    files = verify_implementation(cfg, impl)  # nothing unverified is copied into an environment
    target = _zip_uri(cfg, impl.digest)
    if target != impl.uri:
        data = _zip_bytes(files, TOP)
        moved = replace(impl, uri=target, zip_sha256=hashlib.sha256(data).hexdigest())
        try:
            verify_implementation(cfg, get_implementation(cfg, impl.digest))
        except PipelineError:  # absent, or not what this digest names: write the verified bytes
            storage.atomic_write_bytes(target, data)
            storage.atomic_write_text(target[:-4] + ".json", json.dumps(asdict(moved), indent=2))
    return _update(cfg, lambda state: core.deploy(state, impl.digest, time.time(), reason))


def rollback_implementation(cfg: Config) -> Implementation:
    """Back to the previously deployed implementation of ``cfg``'s environment."""
    try:
        state = _update(cfg, lambda state: core.rollback(state, time.time()))
    except ValueError as err:
        raise PipelineError(f"cannot roll back the pipeline of environment {cfg.environment!r}: {err}") from None
    return get_implementation(cfg, state.current)


def run_tags(cfg: Config, impl: Implementation | None) -> dict[str, str]:
    tags = {"raymlops.environment": cfg.environment or ""}
    if impl is not None:
        tags |= {"raymlops.impl.digest": impl.digest, "raymlops.impl.commit": impl.commit or "",
                 "raymlops.impl.dirty": str(impl.dirty).lower()}
    return tags


def runtime_env_for(cfg: Config, impl: Implementation | None) -> dict[str, Any]:
    """The Ray runtime_env of a run: the implementation as working directory, its tags, its extra packages."""
    env: dict[str, Any] = {"env_vars": {RUN_TAGS_ENV: json.dumps(run_tags(cfg, impl))}}
    if impl is not None:
        # Verified here, each time a run is about to start. Tasks take a zip URI, not a local path (Ray uploads
        # local files for jobs only): file:// for local storage (one node or a shared filesystem).
        verify_implementation(cfg, impl)
        env["working_dir"] = ("file://" + storage.resolve(impl.uri)[1]) if storage.is_local(impl.uri) else impl.uri
        if cfg.delivery.pip:
            env["pip"] = list(cfg.delivery.pip)
    return env


# ------------------------------------------------------------------------------------------------ promotion
def promote_implementation(cfg: Config, target_env: str, digest: str, reason: str) -> Config:
    """Deploy ``digest`` (from ``cfg``'s environment) to ``target_env``; returns the target's config."""
    target = for_environment(cfg, target_env)
    deploy_implementation(target, get_implementation(cfg, digest), reason)
    return target


def on_run_finished(cfg: Config, digest: str | None, registered_model: bool) -> list[tuple[str, str]]:
    """Count a run of the environment's implementation; promote it when its rule says so.

    Returns ``(kind, message)`` events for the controller's log.
    """
    if digest is None or cfg.environment is None:
        return []
    for attempt in range(3):  # a concurrent write: count again on what it wrote (promotion is idempotent)
        try:
            return _count_run(cfg, digest, registered_model)
        except ConcurrentUpdateError:
            if attempt == 2:
                raise
    return []


def _count_run(cfg: Config, digest: str, registered_model: bool) -> list[tuple[str, str]]:
    env = cfg.environments[cfg.environment]
    before, generation = _read(cfg)
    state = core.record_run(before, digest, registered_model)
    events: list[tuple[str, str]] = []
    if env.promote_to and core.promotion_due(state, env.promotion.after_runs) and state.pending_approval != digest:
        models = state.runs[digest]["models"]
        if env.promotion.require_approval:
            state = core.EnvPipelines(**{**vars(state), "pending_approval": digest})
            events.append(("pipeline_awaiting_approval", f"implementation {digest[:12]} produced {models} blessed "
                           f"models; approve its promotion with `raymlops pipeline approve CONFIG --env "
                           f"{env.promote_to}`"))
        else:
            promote_implementation(cfg, env.promote_to, digest, f"{models} blessed models in {cfg.environment}")
            state = core.EnvPipelines(**{**vars(state), "promoted": (*state.promoted, digest)})
            events.append(("pipeline_promoted", f"implementation {digest[:12]} promoted to {env.promote_to} "
                           f"after {models} blessed models in {cfg.environment}"))
    _save(cfg, state, generation)
    return events


def approve_promotion(cfg: Config, source_env: str) -> Implementation:
    """Promote the implementation of ``source_env`` that waits for approval into ``cfg``'s environment."""
    source = for_environment(cfg, source_env)
    state, generation = _read(source)
    if state.pending_approval is None:
        raise PipelineError(f"no implementation of environment {source_env!r} waits for approval")
    digest = state.pending_approval
    promote_implementation(source, cfg.environment, digest, f"approved after runs in {source_env}")
    _save(source, core.EnvPipelines(**{**vars(state), "pending_approval": None,
                                       "promoted": (*state.promoted, digest)}), generation)
    return get_implementation(cfg, digest)


# ------------------------------------------------------------------------------------------------ pre-flight
def preflight(cfg: Config, impl: Implementation, progress: Callable[[str], None] = print) -> list[str]:
    """Fast checks before an implementation reaches an environment: imports resolve and a tiny run completes.

    Both run as a Ray task with the implementation as working directory, exactly as triggered runs will.
    Returns the problems found (empty: it may be deployed). Ray must be initialised.
    """
    import ray

    problems: list[str] = []
    task = ray.remote(_preflight_task).options(num_cpus=0.1, max_retries=0,
                                               runtime_env=runtime_env_for(cfg, impl))
    progress(f"pre-flight of {impl.short}: imports and a run on {cfg.delivery.preflight_rows} sampled rows")
    try:
        result = ray.get(task.remote(cfg.model_dump(mode="json")), timeout=900)
    except Exception as err:  # noqa: BLE001 - a broken implementation is a finding, not a crash
        cause = getattr(err, "cause", None) or err
        return [f"pre-flight task failed: {type(cause).__name__}: {cause}"]
    problems += result["problems"]
    progress(f"pre-flight run: {result.get('status', '-')} in {result.get('seconds', 0):.1f}s")
    return problems


def _preflight_task(cfg_doc: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import pyarrow.parquet as pq

    from raymlops.data.ingest import ingest_data

    cfg = Config.model_validate(cfg_doc)
    try:
        fn = import_pipeline(cfg.controller.pipeline)
    except PipelineError as err:
        return {"problems": [f"in the implementation: {err}"]}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raymlops-preflight-") as tmp:
        try:
            import pyarrow as pa
            import ray

            refs = ingest_data(cfg.data).dataset.limit(cfg.delivery.preflight_rows).to_arrow_refs()
            table = pa.concat_tables(ray.get(refs))
        except Exception as err:  # noqa: BLE001
            return {"problems": [f"cannot read a sample of {cfg.data.source}: {err}"]}
        os.makedirs(f"{tmp}/landing")
        pq.write_table(table, f"{tmp}/landing/sample.parquet")
        doc = cfg.model_dump(mode="json")
        doc.update(storage_uri=f"{tmp}/store", tracking_uri=f"sqlite:///{tmp}/mlflow.db", environment=None,
                   environment_base={})
        doc["data"].update(source=f"{tmp}/landing", window={"start": None, "end": None})
        doc["train"].update(epochs=1)
        doc["tune"].update(enabled=False)
        doc["evaluation"].update(min_primary=None, min_delta_vs_champion=-1.0, max_slice_drop=1.0)
        tiny = Config.model_validate(doc)
        try:
            result = fn(tiny, run_id=None, resume_run_id=None, progress=lambda _m: None)
        except Exception as err:  # noqa: BLE001
            return {"problems": [f"the tiny run raised {type(err).__name__}: {err}"]}
    status = str(getattr(result, "status", "?"))
    problems = [] if status == "completed" else [f"the tiny run {status}: {getattr(result, 'error', '')}"]
    return {"problems": problems, "status": status, "seconds": time.perf_counter() - started}


def describe(impl: Implementation) -> str:
    when = dt.datetime.fromtimestamp(impl.created_at).isoformat(sep=" ", timespec="seconds")
    commit = f"git {impl.commit[:10]}{' (dirty)' if impl.dirty else ''}" if impl.commit else "no git commit"
    line = f"{impl.short}  {commit}  {impl.files} files, {impl.size_bytes / 1024:.0f} KiB  packaged {when}"
    if impl.secrets_excluded:
        shown = ", ".join(impl.secrets_excluded[:10]) + (", ..." if len(impl.secrets_excluded) > 10 else "")
        line += f"\n  left out as secrets (never packaged): {shown}"
    if impl.excluded:
        line += f"\n  {impl.excluded} more by delivery.exclude and {core.IGNORE_FILE}"
    return line


def deploy_pipeline(cfg: Config, source: str | Path = ".", *, run_preflight: bool = True,
                    address: str | None = None, progress: Callable[[str], None] = print) -> Implementation:
    """Package ``source``, pre-flight it on Ray, and make it the implementation ``cfg``'s environment runs.

    A failed pre-flight raises ``GateError`` (exit 3) and deploys nothing.
    """
    from raymlops._ray import cluster_address, init_ray
    from raymlops.errors import GateError

    impl = package_implementation(cfg, source)
    progress(f"packaged {describe(impl)}")
    if run_preflight:
        init_ray(cluster_address(cfg, address))
        problems = preflight(cfg, impl, progress=progress)
        if problems:
            raise GateError(f"pre-flight of {impl.short} failed; not deployed to {cfg.environment}:\n  - "
                            + "\n  - ".join(problems))
    deploy_implementation(cfg, impl, f"deployed by `raymlops pipeline deploy` from {impl.source}")
    return impl


def promote_current(source: Config, target_env: str) -> str:
    """Promote the current implementation of ``source``'s environment into ``target_env`` now; its digest."""
    state = env_state(source)
    if state.current is None:
        raise PipelineError(f"environment {source.environment!r} has no deployed implementation to promote")
    promote_implementation(source, target_env, state.current, f"promoted from {source.environment} by an operator")
    return state.current


def approve_into(cfg: Config) -> tuple[str, Implementation]:
    """Approve the promotion into ``cfg``'s environment of the implementation that earned it: (source env, impl)."""
    sources = [n for n, e in cfg.environments.items() if e.promote_to == cfg.environment]
    if not sources:
        raise PipelineError(f"no environment promotes into {cfg.environment!r} (set `promote_to: "
                            f"{cfg.environment}` on one)")
    return sources[0], approve_promotion(cfg, sources[0])
