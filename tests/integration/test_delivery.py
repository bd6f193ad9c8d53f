"""Pipeline delivery across two environments on one local Ray: implementations packaged from two working trees,
pre-flighted, deployed, run by each environment's controller as the Ray runtime_env working directory, recorded in
lineage, promoted to production after K blessed models, and rolled back.

The implementations are tiny projects written by the test: a pipeline function that registers a real package
(no Ray Train) whose metrics say which implementation built it.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from raymlops.config import load_config
from raymlops.control.actor import call, start_controller, stop_controller
from raymlops.data.synthetic import generate
from raymlops.pipeline import delivery
from raymlops.registry.models import ModelRegistry
from raymlops.registry.tracking import MetadataStore
from raymlops.serve.deploy import _proxy_url, undeploy
from tests.serving_helpers import free_port, wait_for

pytestmark = pytest.mark.slow

PIPELINE = '''
"""A project's pipeline, implementation {impl}: registers a real package built from the landed data."""
import json, os, uuid
from dataclasses import dataclass

IMPL = "{impl}"


@dataclass
class Result:
    run_id: str
    status: str
    version: int | None
    error: str | None = None


def run(cfg, *, run_id=None, resume_run_id=None, progress=print):
    import pyarrow.dataset as pads
    import torch

    from raymlops.core.schema import infer_schema
    from raymlops.core.sketches import profile_table
    from raymlops.core.transform import fit_transform
    from raymlops.registry.models import ModelRegistry
    from raymlops.model.package import save_package
    from raymlops.train.loop import make_model_spec
    from raymlops.model.nets import build_model

    run_id = resume_run_id or run_id or uuid.uuid4().hex[:8]
    table = pads.dataset(cfg.data.source, format="parquet").to_table()
    profile = profile_table(table, categorical={{"churned"}}, skip={{"customer_id", "event_ts"}})
    schema = infer_schema(profile, name=cfg.name, task="binary", label="churned", timestamp="event_ts",
                          id_columns=["customer_id"])
    transform = fit_transform(profile, schema)
    spec = make_model_spec(cfg.train, transform)
    torch.manual_seed(1)
    model = build_model(spec)
    out = os.path.join(cfg.storage_uri, "packages", run_id)
    info = save_package(out, state_dict={{k: v.numpy() for k, v in model.state_dict().items()}}, model_spec=spec,
                        transform_json=transform.to_json(), schema_yaml=schema.to_yaml(),
                        signature={{"task": "binary", "label": "churned"}},
                        metrics={{"impl": IMPL, "run_id": run_id}}, tags={{}})
    tags = json.loads(os.environ.get("RAYMLOPS_RUN_TAGS", "{{}}"))
    version = ModelRegistry(cfg.tracking_uri).register(cfg.name, info.uri, run_id=None, digest=info.digest,
                                                       tags={{**tags, "pipeline_run_id": run_id}}).version
    return Result(run_id, "completed", version)
'''


def project(root: Path, impl: str) -> Path:
    src = root / f"project-{impl}"
    src.mkdir()
    (src / "mypipe.py").write_text(textwrap.dedent(PIPELINE.format(impl=impl)))
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"excluded")
    return src


@pytest.fixture(scope="module")
def envs(ray_session, _mlflow_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("delivery")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    generate(str(root / "landing"), rows_per_day=300, days=2, seed=3)
    environments = (
        f"environments={{staging: {{set: {{name: dl-staging, storage_uri: {root}/staging, serving.app_name: "
        f"dl-staging, serving.route_prefix: /staging}}, promote_to: production, promotion: {{after_runs: 2}}}}, "
        f"production: {{set: {{name: dl-prod, storage_uri: {root}/prod, serving.app_name: dl-prod, "
        f"serving.route_prefix: /prod}}}}}}"
    )
    overrides = [
        environments, f"tracking_uri=sqlite:///{root / 'mlflow.db'}", f"data.source={root / 'landing'}",
        "controller.pipeline=mypipe:run", "controller.allowed_pipelines=[mypipe:run]", "train.hidden_sizes=[8]", "train.epochs=3", f"serving.port={free_port()}",
        "triggers.new_data=false", "triggers.on_drift=false", "triggers.cooldown_s=0", "triggers.poll_interval_s=0.3",
        "controller.poll_interval_s=0.3", "canary.steps=[100]", "pre_exposure.enabled=false",
        "monitoring.interval_s=3600", "delivery.preflight_rows=200",
    ]
    staging = load_config(None, overrides, env="staging")
    production = load_config(None, overrides, env="production")
    yield SimpleNamespace(root=root, staging=staging, production=production, overrides=overrides)
    for cfg in (staging, production):
        stop_controller(cfg)
        undeploy(cfg)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def lineage_tags(cfg, version) -> dict[str, str]:
    return MetadataStore(cfg.tracking_uri).lineage(cfg.name, version).model_tags


def run_once(cfg, request_id: str) -> str:
    """Trigger a run on the environment's controller and return the version it registered."""
    before = {e["seq"] for e in call(cfg, "events", 0)}
    call(cfg, "trigger", request_id)

    def finished():
        return next((e for e in call(cfg, "events", 0) if e["seq"] not in before
                     and e["kind"] in ("run_finished", "run_failed")), None)

    wait_for(lambda: finished() is not None, 120, f"the run of {request_id}")
    event = finished()
    assert event["kind"] == "run_finished", event
    return event["data"]["version"]


def test_implementations_are_packaged_preflighted_deployed_run_promoted_and_rolled_back(envs):
    staging, production = envs.staging, envs.production
    impl_a = delivery.package_implementation(staging, project(envs.root, "A"))
    assert impl_a.files == 1  # __pycache__ left out
    assert delivery.package_implementation(staging, envs.root / "project-A").digest == impl_a.digest
    assert delivery.preflight(staging, impl_a, progress=lambda _m: None) == []
    delivery.deploy_implementation(staging, impl_a, "test")
    start_controller(staging)
    start_controller(production)

    v1 = run_once(staging, "a-1")
    tags = lineage_tags(staging, v1)
    assert tags["raymlops.impl.digest"] == impl_a.digest and tags["raymlops.environment"] == "staging"
    assert "pipeline implementation " + impl_a.digest[:12] in MetadataStore(staging.tracking_uri).lineage(
        staging.name, v1).render()

    impl_b = delivery.package_implementation(staging, project(envs.root, "B"))
    assert impl_b.digest != impl_a.digest
    delivery.deploy_implementation(staging, impl_b, "test")
    v2 = run_once(staging, "b-1")
    assert lineage_tags(staging, v2)["raymlops.impl.digest"] == impl_b.digest
    assert delivery.env_state(production).current is None  # one blessed model is not enough (after_runs: 2)
    run_once(staging, "b-2")
    wait_for(lambda: delivery.env_state(production).current == impl_b.digest, 30, "B promoted to production")
    # The controller logs the promotion when its delivery port call returns, a moment after deployments.json moved.
    wait_for(lambda: any(e["kind"] == "pipeline_promoted" for e in call(staging, "events", 0)), 30,
             "the pipeline_promoted event")

    p1 = run_once(production, "prod-1")
    tags = lineage_tags(production, p1)
    assert tags["raymlops.impl.digest"] == impl_b.digest and tags["raymlops.environment"] == "production"

    assert delivery.rollback_implementation(staging).digest == impl_a.digest
    v4 = run_once(staging, "a-2")
    assert lineage_tags(staging, v4)["raymlops.impl.digest"] == impl_a.digest

    # Two Serve apps on one Serve, one per environment, each at its own route prefix with its own model.
    for cfg, prefix in ((staging, "/staging"), (production, "/prod")):
        url = _proxy_url(cfg)  # Serve's real address (the session's Serve may run on another port)
        assert url.endswith(prefix)
        wait_for(lambda c=cfg, u=url: _answers(f"{u}/v1/models/{c.name}"), 60, f"the {prefix} app")
    assert ModelRegistry(production.tracking_uri).aliases(production.name)["champion"] == int(p1)


def test_a_broken_implementation_fails_its_preflight_and_is_not_deployed(envs):
    """The real `raymlops pipeline deploy` on a tree whose pipeline does not import: exit 3, nothing deployed."""
    from raymlops.cli import main

    src = envs.root / "project-broken"
    src.mkdir()
    (src / "mypipe.py").write_text("import not_a_real_module_anywhere\n")
    config = envs.root / "pipeline.yaml"
    config.write_text("name: churn\n")  # everything else comes from the fixture's --set overrides
    record = Path(envs.staging.storage_uri) / "pipelines" / envs.staging.name / "deployments.json"
    before = record.read_bytes() if record.exists() else None

    code = main(["pipeline", "deploy", str(config), "--env", "staging", "--source", str(src),
                 *[a for o in envs.overrides for a in ("--set", o)]])

    assert code == 3  # GateError: the pre-flight found the missing module
    assert (record.read_bytes() if record.exists() else None) == before  # deployments.json untouched
    broken = delivery.package_implementation(envs.staging, src)
    assert delivery.env_state(envs.staging).current != broken.digest
