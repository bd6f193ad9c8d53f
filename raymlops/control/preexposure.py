"""Pre-exposure tests of a model service: before a challenger gets any live traffic, prove it can take it.

``run_pre_exposure(cfg, version, champion=...)`` runs three checks and records each with its figures:

* **infrastructure** (against the cluster it runs on): the package loads and predicts in a fresh process
  (``evaluation.infra_check``), its peak memory fits the memory Ray has available, a GPU is there when the config
  or the model spec asks for one, and the package is within ``evaluation.max_package_mb``.
* **contract**: a *preview* Serve app (``{app}-preview`` under ``{route_prefix}/preview``, prediction log off, so
  no client and no canary analysis ever sees it) serves the version alone; the expected inputs (rows of its test
  split found through lineage, else recent live inputs of the champion from the prediction log) go through the
  real HTTP API and must come back with the signature's outputs, then every bad input of the error contract
  (``core.exposure.bad_input_cases``) must get its status code and JSON error.
* **load**: the champion is loaded in the same preview replica beside the tested version (no weight), and the
  same bounded load goes to both in blocks of ``4 x load_concurrency`` requests that take turns (ABBA...), each
  request pinned to its version and each block drained before the next: a version's requests queue only behind its
  own, so its latency and QPS are its own, while a burst from a neighbour lands on blocks of both; gates in
  ``pre_exposure`` (``max_p99_increase_pct``, ``min_qps``). A p99 miss alone must repeat in a second round to block.

The fresh-process check runs beside the preview (deploy, contract, load); each check records its ``seconds``, and
the contract the preview's ``preview_deploy_s``. The preview serves the tested version as its own "champion", so
requests are validated against the tested version's schema, as they will be once it is promoted. Everything runs
within ``pre_exposure.timeout_s``; an exception inside a check is that check failing with its message, and the
preview is always deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from raymlops import storage
from raymlops.config import Config
from raymlops.core.exposure import (
    BadInputCase,
    LoadFigures,
    LoadGate,
    as_request_instance,
    bad_input_cases,
    check_error_response,
    check_predictions,
    expected_outputs,
    interleaved_blocks,
    interleaved_figures,
    load_gate,
    summarize_error_details,
    synthetic_instances,
)
from raymlops.core.schema import Schema
from raymlops.core.transform import Transform
from raymlops.errors import RaymlopsError, RegistryError, ServingError
from raymlops.registry.models import ModelRegistry, ModelVersionInfo
from raymlops.serve.auth import client_headers
from raymlops.serve.urls import predict_url, version_predict_url

__all__ = ["CHECKS", "ExposureCheck", "PreExposureResult", "preview_config", "run_pre_exposure"]

CHECKS = ("infrastructure", "contract", "load")
_MB = 1024 * 1024
_JSON = {"content-type": "application/json"}
_HTTP_TIMEOUT_S = 30.0
_INFRA_ROWS = 4
_LIVE_LOOKBACK_S = 86_400.0  # live inputs: at least a day back, however short monitoring.window_s is

logger = logging.getLogger(__name__)
T = TypeVar("T")
_Send = tuple[str, str, bytes]  # version, its pinned URL, body
# An interleaved load's block: requests per client slot. Long enough that a block's queue is mostly its own version's
# (the requests still in flight drain before the next block), short enough that versions take turns often.
_BLOCK_PER_SLOT = 4


# --------------------------------------------------------------------------------------------- results
@dataclass
class ExposureCheck:
    """One check: ``name`` (infrastructure | contract | load), verdict, what was checked / failed / the fix."""

    name: str
    passed: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreExposureResult:
    """All checks of one version; ``passed`` only when every check passed. JSON-safe via ``to_dict``."""

    version: str
    passed: bool
    checks: list[ExposureCheck]
    started_at: float
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreExposureResult:
        """The result ``to_dict`` wrote."""
        checks = [ExposureCheck(str(c["name"]), bool(c["passed"]), str(c["detail"]), dict(c.get("figures") or {}))
                  for c in d.get("checks", [])]
        return cls(str(d["version"]), bool(d["passed"]), checks, float(d["started_at"]), float(d["duration_s"]))

    def reasons(self) -> list[str]:
        """One line per failed check: ``name: detail``."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]


# ------------------------------------------------------------------------------------------ entry point
def run_pre_exposure(cfg: Config, version: str, *, champion: str | None) -> PreExposureResult:
    """Test ``version`` of ``cfg.name`` before it takes live traffic (see the module docstring).

    Ray must be initialised; Serve may be running the live app, which is left untouched. ``champion`` is the
    version the load is compared with (None: only ``pre_exposure.min_qps`` applies). Never raises for a failing
    service: every failure is a check that did not pass, with the reason and the fix in its ``detail``.
    """
    started, budget = time.time(), _Budget(cfg.pre_exposure.timeout_s)
    try:
        target = _load_target(cfg, str(version))
    except Exception as err:
        why = f"version {version} of model '{cfg.name}' cannot be read: {_message(err)}"
        checks = [ExposureCheck(name, False, why) for name in CHECKS]
        return _result(str(version), checks, started)
    champ = None if champion is None or str(champion).lstrip("vV") == target.version else str(champion).lstrip("vV")
    # The fresh-process check runs beside the preview's deploy and calls: independent work, mostly waiting on
    # process start-up and imports, so the whole test takes about as long as its longer half.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="preexposure-infra") as pool:
        pending = pool.submit(_guard, "infrastructure", lambda: _infrastructure(cfg, target, budget))
        service = _service_checks(cfg, target, champ, budget)
        infra = pending.result()
    if infra.figures.get("loads") is False:
        service = [c if c.passed else replace(c, detail="the package does not load (see the infrastructure check): "
                                              + c.detail) for c in service]
    return _result(target.version, [infra, *service], started)


def _result(version: str, checks: list[ExposureCheck], started: float) -> PreExposureResult:
    return PreExposureResult(version, all(c.passed for c in checks), checks, started, round(time.time() - started, 3))


def _service_checks(cfg: Config, target: _Target, champion: str | None, budget: _Budget) -> list[ExposureCheck]:
    pe = cfg.pre_exposure
    contract_on, load_on = pe.contract, pe.load_requests > 0
    if not (contract_on or load_on):
        return [_skipped("contract"), _skipped("load")]
    inputs = _guard_value(lambda: _expected_inputs(cfg, target, champion, pe.sample_rows))
    preview = preview_config(cfg)
    t0 = time.monotonic()
    try:
        app = _deploy_preview(preview, target.info, champion, budget)
    except Exception as err:
        _undeploy_quietly(preview)
        why = f"the preview app did not deploy: {_message(err)}"
        return [ExposureCheck(n, False, why) if on else _skipped(n)
                for n, on in (("contract", contract_on), ("load", load_on))]
    try:
        deploy_s = round(time.monotonic() - t0, 3)
        contract = (_guard("contract", lambda: _contract(preview, target, app, inputs, budget))
                    if contract_on else _skipped("contract"))
        if contract_on:
            contract.figures["preview_deploy_s"] = deploy_s
        load = (_guard("load", lambda: _load(preview, target, app, inputs, budget))
                if load_on else _skipped("load"))
    finally:
        _undeploy_quietly(preview)
    return [contract, load]


def _skipped(name: str) -> ExposureCheck:
    return ExposureCheck(name, True, "skipped", {"skipped": True})


def _guard(name: str, fn: Callable[[], ExposureCheck]) -> ExposureCheck:
    t0 = time.monotonic()
    try:
        check = fn()
    except Exception as err:  # a check that breaks is a failed check, never a crash of the controller
        logger.warning("pre-exposure %s check failed with an exception", name, exc_info=True)
        check = ExposureCheck(name, False, _message(err))
    check.figures["seconds"] = round(time.monotonic() - t0, 3)  # where a slow test spends its time
    return check


def _guard_value(fn: Callable[[], _Inputs]) -> _Inputs:
    try:
        return fn()
    except Exception as err:
        return _Inputs([], "", f"the expected inputs could not be read: {_message(err)}")


def _message(err: BaseException) -> str:
    return str(err) if isinstance(err, RaymlopsError) else f"{type(err).__name__}: {err}"


class _Budget:
    """What is left of ``pre_exposure.timeout_s``."""

    def __init__(self, total_s: float):
        self.total_s = total_s
        self._end = time.monotonic() + total_s

    def left(self, what: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise ServingError(f"pre_exposure.timeout_s ({self.total_s:g} s) was spent before {what}; raise it, or "
                               "lower pre_exposure.load_requests")
        return left


def _bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` in its own thread, given up on after ``timeout_s`` (a Serve deploy can wait forever for room).

    Its own thread also gives ``asyncio.run`` a thread without a running event loop, whatever the caller's is.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name=f"preexposure-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ServingError(f"{what} did not finish within the {timeout_s:.0f} s left of pre_exposure.timeout_s; "
                           "raise it, or check the cluster has room for the preview replica (serving.num_cpus)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ------------------------------------------------------------------------------------------- the target
@dataclass(frozen=True)
class _Target:
    version: str
    info: ModelVersionInfo
    schema: Schema
    signature: dict[str, Any]
    model_spec: dict[str, Any]
    task: str
    classes: list[Any]


def _load_target(cfg: Config, version: str) -> _Target:
    from raymlops.model.package import verify_package

    info = ModelRegistry(cfg.tracking_uri).get(cfg.name, version)
    # Signature and digest first: nothing is read from a package that is not the one registered.
    verify_package(info.package_uri, info.digest, policy=cfg.model.policy())

    def read(name: str) -> str:
        return storage.read_text(storage.join(info.package_uri, name))

    transform = Transform.from_json(read("transform.json"))
    signature = json.loads(read("signature.json"))
    return _Target(str(info.version), info, Schema.from_yaml(read("schema.yaml"), f"schema of version {version}"),
                   signature, json.loads(read("model_spec.json")), transform.task, list(transform.classes or []))


# ------------------------------------------------------------------------------------------ infrastructure
def _infrastructure(cfg: Config, target: _Target, budget: _Budget) -> ExposureCheck:
    import ray

    from raymlops.evaluation.infra_check import check_package_in_fresh_process

    rows = synthetic_instances(target.schema, _INFRA_ROWS)
    report = check_package_in_fresh_process(target.info.package_uri, rows, len(rows),
                                            timeout_s=budget.left("the infrastructure check"),
                                            expected_digest=target.info.digest, policy=cfg.model.policy())
    available, total = ray.available_resources(), ray.cluster_resources()
    figures = {
        "loads": bool(report.get("loaded") and report.get("predict_ok") and report.get("output_shape_ok")),
        "load_time_s": report.get("load_time_s"), "peak_memory_mb": report.get("peak_memory_mb"),
        "package_mb": report.get("package_mb"), "max_package_mb": cfg.evaluation.max_package_mb,
        "available_memory_mb": round(available.get("memory", 0.0) / _MB, 1),
        "cluster_memory_mb": round(total.get("memory", 0.0) / _MB, 1),
        "needs_gpu": _needs_gpu(cfg, target.model_spec), "cluster_gpus": float(total.get("GPU", 0.0)),
    }
    problems = _infra_problems(figures, report.get("error"))
    if problems:
        return ExposureCheck("infrastructure", False, "; ".join(problems), figures)
    detail = (f"the package loads and predicts in a fresh process in {figures['load_time_s']} s, peak "
              f"{figures['peak_memory_mb']:.0f} MiB of {figures['available_memory_mb']:.0f} MiB available; "
              f"{figures['package_mb']:.2f} MiB of {cfg.evaluation.max_package_mb:g} MiB allowed; "
              + ("a GPU is needed and present" if figures["needs_gpu"] else "no GPU needed"))
    return ExposureCheck("infrastructure", True, detail, figures)


def _infra_problems(f: dict[str, Any], error: str | None) -> list[str]:
    problems = []
    if not f["loads"]:
        problems.append(f"the package does not load and predict in a fresh process ({error or 'no report'}); "
                        "install what it needs on the cluster (its model module, torch) or re-create the package")
    peak = f["peak_memory_mb"]
    if peak is not None and peak > f["available_memory_mb"]:
        problems.append(f"loading needs {peak:.0f} MiB but the cluster has {f['available_memory_mb']:.0f} MiB of "
                        "memory available; add memory or nodes, or make the model smaller")
    if f["needs_gpu"] and f["cluster_gpus"] < 1:
        problems.append("the model needs a GPU (train.use_gpu or a device in its model spec) and the cluster has "
                        "none; add a GPU node, or train for CPU")
    if f["package_mb"] is None:
        problems.append("the package size could not be read; check the package location is reachable")
    elif f["package_mb"] > f["max_package_mb"]:
        problems.append(f"the package is {f['package_mb']:.1f} MiB, over evaluation.max_package_mb "
                        f"{f['max_package_mb']:g}; make the model smaller or raise the limit")
    return problems


def _needs_gpu(cfg: Config, spec: Mapping[str, Any]) -> bool:
    device = str(spec.get("device") or "").lower()
    return bool(cfg.train.use_gpu or spec.get("use_gpu") or device.startswith(("cuda", "gpu")))


# ---------------------------------------------------------------------------------------- expected inputs
@dataclass(frozen=True)
class _Inputs:
    rows: list[dict[str, Any]]
    source: str
    missing: str = ""  # why there are none


def _expected_inputs(cfg: Config, target: _Target, champion: str | None, n: int) -> _Inputs:
    found = _test_split_rows(cfg, target, n)
    if found is not None:
        return found
    found = _live_rows(cfg, champion, n)
    if found is not None:
        return found
    lookback = max(cfg.monitoring.window_s, _LIVE_LOOKBACK_S)
    who = f"champion {champion}" if champion else "any version"
    return _Inputs([], "", f"no expected inputs: version {target.version} has no prepared test split in its "
                   f"lineage (registered outside a pipeline run?) and the prediction log has no live inputs of "
                   f"{who} in the last {lookback:g} s; register it through `raymlops run`, send traffic to the "
                   "champion first, or set pre_exposure.contract=false")


def _test_split_rows(cfg: Config, target: _Target, n: int) -> _Inputs | None:
    import pyarrow.dataset as pads

    from raymlops.registry.tracking import MetadataStore

    try:
        lineage = MetadataStore(cfg.tracking_uri).lineage(cfg.name, target.version)
    except RegistryError:
        return None
    # What a client sends: the features and ids of the version's schema, never the label or the event time.
    names = [c.name for c in target.schema.columns if c.role in ("feature", "id")]
    for step in lineage.steps:
        uri = step.artifacts.get("prepared", {}).get("uri")
        test = storage.join(uri, "test") if uri else None
        if not test or not storage.exists(test):
            continue
        files = storage.list_files(test, (".parquet",))
        if not files:
            continue
        fs, _ = storage.resolve(test)
        dataset = pads.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)
        rows = dataset.head(n).to_pylist()
        if rows:
            return _Inputs([as_request_instance(r, names) for r in rows], f"test split {test}")
    return None


def _live_rows(cfg: Config, champion: str | None, n: int) -> _Inputs | None:
    import pyarrow.compute as pc

    from raymlops.control.monitor import log_uris, read_window
    from raymlops.serve.predlog import PREDICTION_SCHEMA

    now = time.time()
    uri = log_uris(cfg)[0]
    table = read_window(uri, PREDICTION_SCHEMA, now - max(cfg.monitoring.window_s, _LIVE_LOOKBACK_S), now + 60)
    if table.num_rows:
        keep = pc.and_(pc.equal(table.column("role"), "primary"),
                       pc.invert(pc.fill_null(pc.equal(table.column("status"), "error"), False)))
        if champion is not None:
            keep = pc.and_(keep, pc.equal(table.column("model_version"), champion))
        table = table.filter(keep).sort_by([("ts", "descending")])
    features = [json.loads(f) for f in table.column("features").to_pylist()[:n] if f] if table.num_rows else []
    rows = [r for r in features if isinstance(r, dict)]
    if not rows:
        return None
    return _Inputs(rows, f"live inputs of {'champion ' + champion if champion else 'the live app'} from {uri}")


# ----------------------------------------------------------------------------------------- preview app
def preview_config(cfg: Config) -> Config:
    """The config of the preview app: ``{app}-preview`` under ``{route_prefix}/preview``, prediction log off."""
    from raymlops.serve.deploy import app_name

    preview = cfg.model_copy(deep=True)
    preview.serving.app_name = f"{app_name(cfg)}-preview"
    preview.serving.route_prefix = f"{cfg.serving.route_prefix.rstrip('/')}/preview"
    # Previews must not write to the live prediction log: the canary analysis and the monitor read it.
    preview.serving.prediction_log.enabled = False
    return preview


@dataclass
class _Preview:
    url: str  # proxy URL of the app (contract: what clients use)
    load_url: str  # a replica's own port when Serve runs with direct ingress (load: fewer hops, less noise)
    direct: bool
    reference: str | None = None  # the champion, loaded beside the tested version for the load's pinned requests
    reference_note: str = ""  # why the champion is not loaded, when it was asked for and is not


def _deploy_preview(preview: Config, info: ModelVersionInfo, champion: str | None, budget: _Budget) -> _Preview:
    from raymlops.serve.deploy import deploy_alone, verify_version

    def champion_info() -> ModelVersionInfo:
        info = ModelRegistry(preview.tracking_uri).get(preview.name, champion)
        verify_version(info, preview)  # serving's own check, so a champion it would refuse is left out here
        return info

    reference, note = None, ""
    if champion is not None and preview.pre_exposure.load_requests > 0:
        what = f"reading champion {champion}"
        try:  # its package verifies here, or it is left out (rather than failing the preview's deploy)
            reference = _bounded(champion_info, budget.left(what), what)
        except Exception as err:  # noqa: BLE001 - the load then says why the champion was not measured
            reference, note = None, f"champion {champion} could not be measured: {_message(err)}"
    what = "deploying the preview app"
    deployed = _bounded(lambda: deploy_alone(preview, info, reference=reference), budget.left(what), what)
    return _Preview(deployed.url, (deployed.direct_urls or [deployed.url])[0], bool(deployed.direct_urls),
                    None if reference is None else str(reference.version), note)


def _undeploy_quietly(preview: Config) -> None:
    from raymlops.serve.deploy import undeploy

    try:
        undeploy(preview)
    except Exception:  # nothing routes to a stale preview; the next run replaces it
        logger.warning("could not delete the preview app %s", preview.serving.app_name, exc_info=True)


# --------------------------------------------------------------------------------------------- contract
def _contract(preview: Config, target: _Target, app: _Preview, inputs: _Inputs, budget: _Budget) -> ExposureCheck:
    import httpx

    if not inputs.rows:
        return ExposureCheck("contract", False, inputs.missing, {"expected_rows": 0})
    cases = bad_input_cases(target.schema, model=preview.name, max_body_bytes=preview.serving.max_body_bytes,
                            max_instances=preview.serving.max_instances)
    with httpx.Client(timeout=min(_HTTP_TIMEOUT_S, budget.left("the contract check")),
                      headers=client_headers()) as client:
        problems = _expected_problems(client, preview, target, app, inputs)
        for case in cases:
            budget.left(f"the contract case {case.name}")
            problems += _case_problems(client, app.url, case)
    figures = {"expected_rows": len(inputs.rows), "inputs": inputs.source, "bad_input_cases": len(cases),
               "problems": len(problems)}
    if problems:
        return ExposureCheck("contract", False, "; ".join(problems), figures)
    detail = (f"{len(inputs.rows)} expected inputs ({inputs.source}) answered with the signature's outputs; "
              f"{len(cases)} bad inputs ({', '.join(c.name for c in cases)}) got their status codes and JSON errors")
    return ExposureCheck("contract", True, detail, figures)


def _expected_problems(client: Any, preview: Config, target: _Target, app: _Preview, inputs: _Inputs) -> list[str]:
    url = predict_url(app.url, preview.name)
    outputs = expected_outputs(target.task, target.signature)
    problems: list[str] = []
    step = preview.serving.max_instances
    for start in range(0, len(inputs.rows), step):
        rows = inputs.rows[start:start + step]
        r = client.post(url, content=json.dumps({"instances": rows}, default=str).encode(), headers=_JSON)
        if r.status_code != 200:
            problems.append(_refused(r, inputs.source))
            continue
        if r.headers.get("x-model-version") != target.version:
            problems.append(f"expected inputs: X-Model-Version is {r.headers.get('x-model-version')!r}, not "
                            f"{target.version!r}")
        try:
            doc = r.json()
        except ValueError:
            problems.append(f"expected inputs: the 200 body is not JSON ({r.content[:80]!r})")
            continue
        problems += [f"expected inputs: {p}" for p in check_predictions(
            doc, n=len(rows), version=target.version, task=target.task, outputs=outputs, classes=target.classes)]
    return problems


def _refused(r: Any, source: str) -> str:
    try:
        error = r.json()["error"]
        what = f"{error['code']} ({summarize_error_details(error.get('details', []))}): {error['message']}"
    except (ValueError, KeyError, TypeError):
        what = repr(r.content[:120])
    fix = ("the service failed: see the replica log" if r.status_code >= 500 else
           "the version does not accept what its clients send; make its schema accept these inputs (or change "
           "the clients before exposing it)")
    return f"expected inputs ({source}) got {r.status_code} {what}; {fix}"


def _case_problems(client: Any, base_url: str, case: BadInputCase) -> list[str]:
    import httpx

    url = predict_url(base_url, case.model)
    try:
        r = client.post(url, content=case.body, headers=_JSON)
    except httpx.HTTPError as err:
        return [f"{case.name}: no answer ({type(err).__name__}: {err}); a bad request must get a 4xx answer"]
    return check_error_response(case, r.status_code, r.content)


# ------------------------------------------------------------------------------------------------- load
def _load(preview: Config, target: _Target, app: _Preview, inputs: _Inputs, budget: _Budget) -> ExposureCheck:
    pe = preview.pre_exposure
    # Expected inputs when there are any (what clients send); else valid rows made from the schema.
    rows = inputs.rows or synthetic_instances(target.schema, 16)
    bodies = [json.dumps({"instances": [r]}, default=str).encode()
              for r in itertools.islice(itertools.cycle(rows), pe.load_requests)]
    # Both versions are loaded in the same preview replica and take turns in blocks (each request pinned to its
    # version): whatever else the machine does meanwhile lands on blocks of both.
    measured = [v for v in (target.version, app.reference) if v is not None]
    urls = {v: version_predict_url(app.load_url, preview.name, v) for v in measured}
    what = (f"the load on version {target.version}" if app.reference is None else
            f"the load on version {target.version} and champion {app.reference}")
    rounds = [_measure(urls, bodies, pe.load_concurrency, budget, what)]
    gates = [_gate(rounds[0], target.version, app.reference, pe)]
    if gates[0].p99_exceeded and len(gates[0].reasons) == 1:
        # A p99 miss alone must repeat to block: one more round of both; the verdict is a passing round's if any.
        rounds.append(_measure(urls, bodies, pe.load_concurrency, budget, f"the second round of {what}"))
        gates.append(_gate(rounds[1], target.version, app.reference, pe))
    chosen = next((i for i, g in enumerate(gates) if g.passed), len(gates) - 1)
    gate, mine, theirs = gates[chosen], rounds[chosen][target.version], rounds[chosen].get(app.reference or "")
    figures = _load_figures(mine, theirs, app.reference, gate.p99_limit_ms, pe.load_concurrency, pe.min_qps)
    figures["rounds"] = len(rounds)
    notes = [*gate.notes, *([app.reference_note] if app.reference_note else [])]
    if theirs is not None and theirs.errors:
        notes.append(f"the champion answered {theirs.errors} of {theirs.requests} with an error ({theirs.statuses}); "
                     "its figures count its 200s only")
    if len(rounds) > 1:
        notes.append("p99 over the limit in the first round; " + ("the second round passed" if gate.passed else
                                                                   "confirmed by a second round"))
    if not gate.passed:
        return ExposureCheck("load", False, "; ".join(gate.reasons + notes), figures)
    summary = (f"{mine.requests} requests at concurrency {pe.load_concurrency}: {mine.qps:.1f} QPS, p50 "
               f"{mine.p50_ms:.1f} ms, p99 {mine.p99_ms:.1f} ms")
    if theirs is not None and theirs.p99_ms is not None:
        summary += (f" (champion {app.reference}, in blocks interleaved with it: {theirs.qps:.1f} QPS, "
                    f"p99 {theirs.p99_ms:.1f} ms)")
    return ExposureCheck("load", True, "; ".join([summary, *notes]), figures)


def _gate(figures: Mapping[str, LoadFigures], version: str, champion: str | None, pe: Any) -> LoadGate:
    return load_gate(figures[version], figures.get(champion or ""), max_p99_increase_pct=pe.max_p99_increase_pct,
                     min_qps=pe.min_qps)


def _load_figures(mine: LoadFigures, theirs: LoadFigures | None, champion: str | None, limit: float | None,
                  concurrency: int, min_qps: float | None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "requests": mine.requests, "concurrency": concurrency, "errors": mine.errors, "qps": round(mine.qps, 2),
        "p50_ms": _ms(mine.p50_ms), "p99_ms": _ms(mine.p99_ms), "duration_s": round(mine.duration_s, 3),
        "champion": champion, "p99_limit_ms": _ms(limit), "min_qps": min_qps,
    }
    if theirs is not None:
        figures.update({"champion_qps": round(theirs.qps, 2), "champion_p50_ms": _ms(theirs.p50_ms),
                        "champion_p99_ms": _ms(theirs.p99_ms), "champion_errors": theirs.errors})
    return figures


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _measure(urls: Mapping[str, str], bodies: list[bytes], concurrency: int, budget: _Budget,
             what: str) -> dict[str, LoadFigures]:
    """Warm up (``concurrency`` requests per version, not counted), then the same ``bodies`` to each version in
    blocks, taking turns (``urls``: version -> its pinned URL); figures per version."""
    timeout = budget.left(what)
    plan = interleaved_blocks(list(urls), len(bodies), concurrency * _BLOCK_PER_SLOT)
    return _bounded(lambda: asyncio.run(_send(urls, bodies, plan, concurrency, timeout)), timeout + 5, what)


async def _send(urls: Mapping[str, str], bodies: list[bytes], plan: list[tuple[str, int, int]], concurrency: int,
                timeout_s: float) -> dict[str, LoadFigures]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=min(_HTTP_TIMEOUT_S, timeout_s), limits=limits,
                                 headers=client_headers()) as client:
        deadline = time.monotonic() + timeout_s
        for version, url in urls.items():
            await _fire(client, [(version, url, b) for b in bodies[:concurrency]], concurrency, [], deadline)
        samples: list[tuple[str, int, float]] = []
        seconds: Counter[str] = Counter()
        for version, start, stop in plan:
            # Each block drains before the next starts: a request queues only behind its own version's.
            t = time.perf_counter()
            await _fire(client, [(version, urls[version], b) for b in bodies[start:stop]], concurrency, samples,
                        deadline)
            seconds[version] += time.perf_counter() - t
        return interleaved_figures(samples, seconds)


async def _fire(client: Any, sends: list[_Send], concurrency: int, samples: list[tuple[str, int, float]],
                deadline: float) -> None:
    import httpx

    queue: Iterator[_Send] = iter(sends)  # shared by the workers: one event loop, so no lock is needed

    async def worker() -> None:
        for version, url, body in queue:
            t = time.perf_counter()
            try:
                status = (await client.post(url, content=body, headers=_JSON)).status_code
            except httpx.HTTPError:
                status = 0
            samples.append((version, status, (time.perf_counter() - t) * 1000))

    left = deadline - time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), max(left, 0.001))
    except asyncio.TimeoutError:
        raise ServingError(f"the load did not finish within pre_exposure.timeout_s ({len(samples)} requests "
                           "answered); raise pre_exposure.timeout_s or lower pre_exposure.load_requests") from None
