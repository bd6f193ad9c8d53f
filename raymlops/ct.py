"""The built-in continuous-training pipeline, assembled from the generic framework's components:

    [join_features →] validate → prepare → train (+ tune) → evaluate → check_package → bless → register

``join_features`` runs when the config trains on feature-store data (``features.label_source``): the label rows
joined point-in-time with the feature service become the run's dataset, with a step record, a cache entry and
lineage of their own. ``materialize_step`` loads a feature service into the online store as a pipeline step.

Each step reads only what its inputs point at, so a failed run resumes from the last completed step and an unchanged
step is a cache hit. Steps that start distributed work themselves (Ray Data, Train, Tune) run on the driver; the
fresh-process package check runs as a Ray task, wherever the cluster places it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from raymlops import storage
from raymlops.config import Config
from raymlops.core.outputs import prediction_fields
from raymlops.errors import DataValidationError, ModelValidationError
from raymlops.pipeline.component import Artifact, Pipeline, Step, component
from raymlops.pipeline.runner import PipelineResult, run_pipeline

CHALLENGER_SAMPLE_ROWS = 16


def _on_source(cfg: Config, uri: str) -> Config:
    """``cfg`` reading its data from ``uri`` (the joined feature-store training set is parquet)."""
    if uri == cfg.data.source:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": uri, "format": "parquet"})})


def _ingest(cfg: Config, snapshot_artifact: Artifact):
    from raymlops.data.ingest import ingest_data, pinned_identities, verify_snapshot

    cfg = _on_source(cfg, snapshot_artifact.uri)
    # Steps re-read the source rather than ship data between them; refuse (naming the file) if its content changed
    # since validation.
    verify_snapshot(cfg.data.source, cfg.data.format, snapshot_artifact.digest,
                    pinned_identities(snapshot_artifact.metadata.get("identities_uri")))
    return ingest_data(cfg.data, local=True)


@component(outputs=("source",), executor="driver", config_keys=("name", "data", "features"))
def join_features(ctx):
    """Join the label rows point-in-time with the feature service: the dataset the rest of the run trains on."""
    from raymlops.data.ingest import snapshot
    from raymlops.features.training import build_training_source

    cfg: Config = ctx.config
    uri = build_training_source(cfg, progress=ctx.progress)
    return {"source": Artifact(uri=uri, kind="dataset", digest=snapshot(uri, "parquet")[1],
                               metadata={"service": cfg.features.service})}


@component(outputs=("materialized",), executor="driver", config_keys=("features",))
def materialize_step(ctx, full: bool = False):
    """Materialise the config's feature service into the online store; logs rows and entities per view."""
    from raymlops.features.training import materialize_for_config

    results = materialize_for_config(ctx.config, full=full)
    for r in results:
        ctx.progress(r.summary())
    ctx.log_metrics({f"{r.view}_entities": r.entities for r in results})
    return {"materialized": [r.to_dict() for r in results]}


@component(outputs=("snapshot", "schema", "report"), executor="driver", config_keys=("name", "data", "validation"))
def validate(ctx, data_digest: str = "", source: Artifact | None = None, schema_version: str = "",
             reference: str = ""):
    """Ingest and validate the data (``source`` when a step made it); schema skew stops the pipeline (exit 3).

    ``schema_version`` and ``reference`` (``raymlops.data.validate.validation_params``) are only fingerprinted: a
    new schema version or a new champion's reference makes the same data a new validation, not a cache hit.
    """
    from raymlops.data.validate import keep_report, validate_data

    cfg: Config = ctx.config
    if source is not None:
        cfg, data_digest = _on_source(cfg, source.uri), source.digest
    outcome = validate_data(cfg, report_dir=ctx.path("report"), progress=ctx.progress)
    ctx.log_metrics({"rows": outcome.report.rows, "anomalies": len(outcome.report.anomalies),
                     "value_anomalies": len(outcome.report.value_anomalies),
                     "drifted_features": sum(d.drifted for d in outcome.report.drift),
                     "schema_version": outcome.schema.version})
    ctx.log_artifact("report/report.json")
    ctx.log_artifact("report/report.html")
    if outcome.decision == "STOP":
        # A failed step's outputs are deleted; the report must outlive it (the user fixes the data or accepts a
        # new schema version from it), so it is kept under the pipeline's reports.
        kept = keep_report(cfg, outcome, storage.join(cfg.storage_uri, "reports", cfg.name, "validation",
                                                      f"{ctx.run_id}-{ctx.step}"))
        raise DataValidationError(
            f"data validation stopped the pipeline: {outcome.report.summary()} (report: {kept.html_uri})",
            report_uri=kept.report_uri,
        )
    ctx.progress(outcome.report.summary())
    from raymlops.data.ingest import pin_snapshot

    snapshot = Artifact(uri=cfg.data.source, kind="dataset", digest=data_digest,
                        metadata={"files": outcome.files, "rows": outcome.report.rows,
                                  "identities_uri": pin_snapshot(cfg.data.source, cfg.data.format, data_digest,
                                                                 ctx.path("snapshot.json"))})
    store = _metadata_store(ctx)
    if store is not None:  # the run's training data in MLflow's dataset view: where it is and its digest, no rows
        store.log_dataset(ctx.mlflow_run_id, cfg.data.source, data_digest,
                          profile={"rows": outcome.report.rows, "files": len(outcome.files)})
    schema = Artifact(uri=outcome.schema_uri, kind="schema", digest=_digest_text(storage.read_text(outcome.schema_uri)),
                      metadata={"version": outcome.schema.version})
    meta = {"decision": outcome.decision, "schema_version": outcome.schema.version,
            "reference": outcome.reference_source.describe() if outcome.reference_source else None}
    return {"snapshot": snapshot, "schema": schema,
            "report": ctx.artifact("report/report.json", kind="statistics", metadata=meta)}


@component(outputs=("prepared", "reference"), executor="driver", config_keys=("data", "prepare"))
def prepare(ctx, snapshot: Artifact, schema: Artifact):
    """Split the snapshot, write each split and fit the transform on the training split only.

    The training split's profile is also written as ``reference.json``: the drift reference of the model trained
    on it, once that model is champion (``register`` tags the version with its URI).
    """
    from raymlops.core.schema import Schema
    from raymlops.data.prepare import prepare as prepare_data
    from raymlops.data.profile import KeepProfile

    cfg: Config = ctx.config
    sch = Schema.from_yaml(storage.read_text(schema.uri))
    kept = KeepProfile()
    prepared = prepare_data(cfg, _ingest(cfg, snapshot).dataset, sch, ctx.path("prepared"), train_profile_fn=kept)
    storage.atomic_write_text(ctx.path("reference.json"), json.dumps(kept.profile.to_dict()))
    ctx.progress("rows per split: " + ", ".join(f"{k} {v:,}" for k, v in prepared.rows.items()))
    ctx.log_metrics({f"rows_{k}": v for k, v in prepared.rows.items()})
    return {"prepared": ctx.artifact("prepared", kind="dataset", metadata={"rows": prepared.rows}, digest="stat"),
            "reference": ctx.artifact("reference.json", kind="statistics",
                                      metadata={"split": "train", "rows": kept.profile.rows,
                                                "schema_version": sch.version})}


@component(outputs=("model",), executor="driver", config_keys=("train", "tune"))
def train(ctx, prepared: Artifact):
    """Train with Ray Train (and search with Ray Tune when enabled); keep the best weights."""
    from safetensors.numpy import save as save_weights

    from raymlops.data.prepare import load_prepared
    from raymlops.model.gbdt import BOOSTER_FILE, XGBOOST
    from raymlops.train.gbdt import train_gbdt
    from raymlops.train.loop import train_model
    from raymlops.train.tune import tune_model

    cfg: Config = ctx.config
    data = load_prepared(prepared.uri)
    checkpoints = storage.join(ctx.storage_uri, "checkpoints", ctx.run_id)

    def report(m: dict) -> None:
        keys = ("trial_id", "epoch", "train_loss", "val_loss")
        ctx.progress(" ".join(f"{k}={m[k]:.4f}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in keys if k in m))

    if cfg.tune.enabled:
        tuned = tune_model(cfg, data, storage_uri=checkpoints, run_name="tune", progress=report)
        ctx.log_trials(tuned.trials)
        ctx.progress(f"best of {len(tuned.trials)} trials: {tuned.best_params}")
        result = tuned.best
    elif cfg.train.model == XGBOOST:
        result = train_gbdt(cfg, data, storage_uri=checkpoints, run_name="train", progress=report)
    else:
        result = train_model(cfg, data, storage_uri=checkpoints, run_name="train", progress=report)
    if cfg.train.model == XGBOOST:
        storage.atomic_write_bytes(ctx.path("model", BOOSTER_FILE), result.booster_json)
    else:
        storage.atomic_write_bytes(ctx.path("model", "weights.safetensors"), save_weights(result.state_dict))
    meta = {"model_spec": result.model_spec, "history": result.history, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "params": result.params, "checkpoint_uri": result.checkpoint_uri}
    storage.atomic_write_text(ctx.path("model", "training.json"), json.dumps(meta, default=str))
    store = _metadata_store(ctx)
    if store is not None:  # per-epoch (per-round) curves on the pipeline run, the run its model version links to
        store.log_history(ctx.mlflow_run_id, result.history)
    last = result.history[-1] if result.history else {}
    ctx.log_metrics({"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                     "epochs": len(result.history), "fit_time_s": result.fit_time_s,
                     **{f"final_{k}": v for k, v in last.items() if isinstance(v, int | float)}})
    return {"model": ctx.artifact("model", kind="model", metadata={"best_epoch": result.best_epoch})}


@component(outputs=("package", "evaluation"), executor="driver",
           config_keys=("name", "tracking_uri", "data.label", "data.task", "data.slices", "evaluation.threshold",
                        "evaluation.threshold_objective", "evaluation.reference_max_rows", "model"))
def evaluate(ctx, model: Artifact, prepared: Artifact, schema: Artifact):
    """Package the model and evaluate it (and the champion, on the same test rows) overall and per slice.

    For a binary task the decision threshold is chosen first, on the validation split (``evaluation.threshold``),
    and stored in the package's signature, so evaluation, serving and batch prediction decide alike. Beside the
    model: the naive baseline (blessing's ``vs_baseline`` gate) and a HistGradientBoosting reference fitted on
    the same training split (informational).
    """
    import ray.data

    from raymlops.core.baselines import describe_reference
    from raymlops.core.metrics import naive_name
    from raymlops.data.prepare import load_prepared
    from raymlops.evaluation.evaluate import evaluate as run_eval
    from raymlops.evaluation.evaluate import evaluate_champion_on
    from raymlops.model.package import load_package, read_trained_model, save_package
    from raymlops.registry.models import ModelRegistry

    cfg: Config = ctx.config
    data = load_prepared(prepared.uri)
    meta = json.loads(storage.read_text(storage.join(model.uri, "training.json")))
    contents = dict(
        **read_trained_model(model.uri, meta["model_spec"]),  # torch weights or a booster
        model_spec=meta["model_spec"],
        transform_json=data.transform.to_json(),
        schema_yaml=storage.read_text(schema.uri),
        metrics={"best_val_loss": meta["best_val_loss"], "best_epoch": meta["best_epoch"]},
        tags={"pipeline_run_id": ctx.run_id, "schema_uri": schema.uri},
    )
    if sum(data.rows.values()) <= cfg.evaluation.local_max_rows:
        # Small splits: predicting in this process beats starting a Ray Data actor pool by seconds.
        splits = {k: _read_table(u) for k, u in data.split_uris.items()}
    else:
        splits = {k: ray.data.read_parquet(u) for k, u in data.split_uris.items()}
    threshold = _decision_threshold(cfg, data, contents, splits.get("validation"))
    info = save_package(ctx.path("package"), **contents, signature=_signature(cfg, data, threshold))
    ctx.progress(f"packaged {info.size_bytes / 1e6:.2f} MB (digest {info.digest[:12]}); evaluating")
    result = run_eval(load_package(info.uri, info.digest, policy=cfg.model.policy()), splits, task=cfg.data.task,
                      label=cfg.data.label, slices=cfg.data.slices)
    reference = _reference_model(cfg, data, splits)
    doc: dict[str, Any] = {"challenger": result.to_dict(), "champion": None, "champion_version": None,
                           "threshold": threshold.to_dict() if threshold else None, "reference": reference}
    champ = ModelRegistry(cfg.tracking_uri).get_by_alias(cfg.name, "champion")
    if champ is not None:
        ctx.progress(f"evaluating champion v{champ.version} on the same test rows")
        champ_model = load_package(champ.package_uri, champ.digest, policy=cfg.model.policy())
        champ_eval = evaluate_champion_on(splits["test"], champ_model, task=cfg.data.task, label=cfg.data.label,
                                          slices=cfg.data.slices)
        doc |= {"champion": champ_eval.to_dict(), "champion_version": champ.version}
    storage.atomic_write_text(ctx.path("evaluation.json"), json.dumps(doc, indent=2, default=str))
    ctx.log_artifact("evaluation.json")
    store = _metadata_store(ctx)
    if store is not None:  # per-slice metrics and the comparison with champion, baseline and reference, as tables
        from raymlops.evaluation.evaluate import evaluation_tables

        store.log_tables(ctx.mlflow_run_id, evaluation_tables(doc))
    logged = {f"{split}_{k}": v for split, ms in result.metrics.items() for k, v in ms.items()}
    logged |= {f"baseline_test_{k}": v for k, v in result.baseline.items()}
    logged |= {f"reference_test_{k}": v for k, v in (reference.get("metrics") or {}).items()}
    logged |= {"threshold": threshold.threshold} if threshold else {}
    ctx.log_metrics({k: v for k, v in logged.items() if isinstance(v, int | float) and v == v})
    test = result.metrics.get("test", {})
    ctx.progress(_metrics_line(test))
    primary = cfg.evaluation.primary_metric
    facts = [f"naive baseline ({naive_name(cfg.data.task)}) {primary} {result.baseline.get(primary, float('nan')):.4f}",
             describe_reference(reference, primary, test.get(primary, float("nan")))]
    if threshold:
        facts.append(_describe_threshold(threshold))
    ctx.progress("; ".join(f for f in facts if f))
    return {"package": Artifact(uri=info.uri, kind="package", digest=info.digest, metadata={"mb": info.size_bytes / 1e6}),
            "evaluation": ctx.artifact("evaluation.json", kind="evaluation")}


def _decision_threshold(cfg: Config, data, contents: dict[str, Any], validation: Any):
    """The binary decision threshold for the package: fixed by the config, or chosen on the validation split.

    The validation scores come from a draft of the same package (every model kind predicts through
    ``load_package``), written to a local temporary directory and loaded in this process.
    """
    import tempfile

    from raymlops.core.metrics import ThresholdChoice, choose_threshold
    from raymlops.evaluation.evaluate import predict_splits
    from raymlops.model.package import load_package, save_package

    ev = cfg.evaluation
    if cfg.data.task != "binary":
        return None
    if ev.threshold != "auto":
        return ThresholdChoice(float(ev.threshold), "fixed", float("nan"), 0, "evaluation.threshold")
    if validation is None:
        return ThresholdChoice(0.5, ev.threshold_objective, float("nan"), 0, "no validation split: kept 0.5")
    with tempfile.TemporaryDirectory(prefix="raymlops-draft-") as d:
        draft = save_package(f"{d}/package", **contents, signature=_signature(cfg, data))
        scored = predict_splits(load_package(draft.uri, draft.digest, policy=cfg.model.policy()), {"validation": validation},
                                label=cfg.data.label)["validation"]
    if scored is None:
        return ThresholdChoice(0.5, ev.threshold_objective, float("nan"), 0, "the validation split is empty: kept 0.5")
    y, outputs = scored
    return choose_threshold(y, outputs["probability"], ev.threshold_objective, classes=data.transform.classes)


def _describe_threshold(t) -> str:
    if t.objective == "fixed":
        return f"threshold {t.threshold:.4f} (evaluation.threshold)"
    if t.note:
        return f"threshold {t.threshold:.4f} ({t.note})"
    return f"threshold {t.threshold:.4f} (max {t.objective} {t.value:.4f} on {t.rows:,} validation rows)"


def _reference_model(cfg: Config, data, splits: dict[str, Any]) -> dict[str, Any]:
    """HistGradientBoosting on the training split, scored on the test split; ``{"skipped": why}`` when too big."""
    import pyarrow as pa

    from raymlops.evaluation.reference import fit_reference

    limit, rows = cfg.evaluation.reference_max_rows, data.rows.get("train", 0)
    if limit == 0:
        return {"skipped": "evaluation.reference_max_rows is 0"}
    if rows > limit:
        return {"skipped": f"{rows:,} training rows > evaluation.reference_max_rows {limit:,}"}

    def table(split: str):
        got = splits.get(split)
        return got if isinstance(got, pa.Table) else _read_table(data.split_uris[split])

    try:
        return fit_reference(data.transform, table("train"), table("test"), table("validation"),
                             threshold_objective=cfg.evaluation.threshold_objective)
    except Exception as err:  # informational only: a reference that cannot be fitted must not fail the run
        return {"skipped": f"fitting failed: {type(err).__name__}: {err}"}


@component(outputs=("infra",), executor="task", num_cpus=0.25, config_keys=("model",))
def check_package(ctx, package: Artifact, prepared: Artifact):
    """Load the package in a fresh process with the serving code path and predict on sample test rows."""
    from raymlops.data.prepare import load_prepared
    from raymlops.evaluation.infra_check import check_package_in_fresh_process

    rows = _sample_rows(load_prepared(prepared.uri).split_uris["test"], CHALLENGER_SAMPLE_ROWS)
    infra = check_package_in_fresh_process(package.uri, rows, expected_rows=len(rows), expected_digest=package.digest,
                                           policy=ctx.config.model.policy())
    ctx.progress(f"fresh process: loaded={infra['loaded']} predicted={infra['predict_ok']} "
                 f"peak {infra.get('peak_memory_mb', 0):.0f} MB")
    return {"infra": infra}


@component(outputs=("blessing",), executor="driver", config_keys=("evaluation",))
def bless(ctx, evaluation: Artifact, infra: dict):
    """Apply the gates; a model that fails one is not registered (exit 3)."""
    from raymlops.core.blessing import GatePolicy
    from raymlops.core.blessing import bless as decide

    cfg: Config = ctx.config
    doc = json.loads(storage.read_text(evaluation.uri))
    decision = decide(doc["challenger"], doc["champion"], infra, GatePolicy.from_config(cfg.evaluation))
    storage.atomic_write_text(ctx.path("blessing.json"), json.dumps(decision.to_dict(), indent=2, default=str))
    ctx.log_artifact("blessing.json")
    ctx.log_metrics({"blessed": float(decision.blessed)})
    if not decision.blessed:
        raise ModelValidationError(f"model not blessed: {decision.summary()}")
    ctx.progress(decision.summary())
    return {"blessing": ctx.artifact("blessing.json", kind="blessing")}


@component(outputs=("version",), executor="driver", config_keys=("name", "tracking_uri"))
def register(ctx, package: Artifact, blessing: Artifact, snapshot: Artifact, evaluation: Artifact,
             schema: Artifact | None = None, reference: Artifact | None = None):
    """Register the blessed package as a new model version with alias `challenger`.

    Tagged with its lineage: run, data fingerprint, blessing, the schema version it was validated against
    (``schema_version``, ``schema_uri``) and its training data's statistics (``reference_uri``: the drift reference
    while it is champion).
    """
    from raymlops.data.validate import REFERENCE_TAG
    from raymlops.registry.models import NO_MLMODEL_TAG, ModelRegistry

    cfg: Config = ctx.config
    test = json.loads(storage.read_text(evaluation.uri))["challenger"]["metrics"].get("test", {})
    lineage = {}
    if schema is not None:
        lineage |= {"schema_version": schema.metadata.get("version"), "schema_uri": schema.uri}
    if reference is not None:
        lineage[REFERENCE_TAG] = reference.uri
    info = ModelRegistry(cfg.tracking_uri).register(
        cfg.name, package.uri, run_id=ctx.mlflow_run_id, digest=package.digest,
        tags={"pipeline_run_id": ctx.run_id, "data_fingerprint": snapshot.digest, "blessing_uri": blessing.uri,
              **{k: v for k, v in lineage.items() if v is not None},
              **{f"test_{k}": v for k, v in test.items() if v is not None}, **_run_tags()},
    )
    ctx.progress(f"registered {cfg.name} v{info.version} as challenger")
    if NO_MLMODEL_TAG in info.tags:
        ctx.progress(f"warning: v{info.version} has no MLmodel, so mlflow.pyfunc cannot load it: "
                     f"{info.tags[NO_MLMODEL_TAG]}")
    return {"version": info.version}


def _uses_feature_store(cfg: Config) -> bool:
    return getattr(cfg, "features", None) is not None and bool(cfg.features.label_source)


def build_ct_pipeline(cfg: Config) -> Pipeline:
    """The CT pipeline for one config (steps and wiring; parameters come from the config)."""
    head = ([Step(join_features), Step(validate, inputs={"source": "join_features.source"})]
            if _uses_feature_store(cfg) else [Step(validate)])
    return Pipeline(cfg.name, [
        *head,
        Step(prepare, inputs={"snapshot": "validate.snapshot", "schema": "validate.schema"}),
        Step(train, inputs={"prepared": "prepare.prepared"}),
        Step(evaluate, inputs={"model": "train.model", "prepared": "prepare.prepared", "schema": "validate.schema"}),
        Step(check_package, inputs={"package": "evaluate.package", "prepared": "prepare.prepared"}),
        Step(bless, inputs={"evaluation": "evaluate.evaluation", "infra": "check_package.infra"}),
        Step(register, inputs={"package": "evaluate.package", "blessing": "bless.blessing",
                               "snapshot": "validate.snapshot", "evaluation": "evaluate.evaluation",
                               "schema": "validate.schema", "reference": "prepare.reference"}),
    ])


@dataclass
class CTResult:
    """Outcome of one CT run: status (completed, blocked, failed), the registered version, the gates' verdicts."""

    run_id: str
    status: str
    version: int | None
    error: str | None
    pipeline: PipelineResult = field(repr=False)

    def summary(self) -> str:
        steps = ", ".join(f"{n} {s.status}" for n, s in self.pipeline.steps.items())
        if self.status == "completed":
            return f"run {self.run_id}: registered version {self.version} as challenger ({steps})"
        return f"run {self.run_id} {self.status}: {self.error} ({steps}); resume with --resume {self.run_id}"

    def raise_for_status(self) -> CTResult:
        self.pipeline.raise_for_status()
        return self


def run_ct_pipeline(cfg: Config, *, resume_run_id: str | None = None, run_id: str | None = None,
                    progress=print) -> CTResult:
    """Run (or resume) the CT pipeline for `cfg`. Ray must be initialised. Failures are in the result.

    `run_id` names a new run in advance (see `raymlops.pipeline.run_pipeline`).
    """
    from raymlops.data.ingest import snapshot
    from raymlops.data.validate import validation_params

    # With the feature store, the join step makes the dataset (and its digest) inside the run.
    params = {} if _uses_feature_store(cfg) else {"validate.data_digest": snapshot(cfg.data.source, cfg.data.format)[1]}
    params |= {f"validate.{k}": v for k, v in validation_params(cfg).items()}
    storage.makedirs(cfg.storage_uri)  # the default SQLite tracking database lives there
    result = run_pipeline(
        build_ct_pipeline(cfg), storage_uri=cfg.storage_uri, tracking_uri=cfg.tracking_uri, config=cfg,
        params=params, resume_run_id=resume_run_id, run_id=run_id, progress=progress,
        tags=_run_tags(),
    )
    version = result.outputs.get("register.version")
    return CTResult(result.run_id, result.status, version, result.error, result)


# ---------------------------------------------------------------------------------------------- helpers
def _metadata_store(ctx):
    """The MLflow store of a driver step's pipeline run, or None when the run is not tracked."""
    if not ctx.tracking_uri or not ctx.mlflow_run_id:
        return None
    from raymlops.registry.tracking import MetadataStore

    return MetadataStore(ctx.tracking_uri)


def _digest_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _signature(cfg: Config, data, threshold=None) -> dict[str, Any]:
    """The package's signature; a binary package's ``threshold`` decides its labels (``LoadedModel.predict``)."""
    t = data.transform
    sig = {"inputs": {"numeric": [c.name for c in t.numeric], "categorical": [c.name for c in t.categorical]},
           "outputs": list(prediction_fields(cfg.data.task)),
           "task": cfg.data.task, "label": cfg.data.label, "classes": list(t.classes or [])}
    if threshold is not None:
        sig["threshold"] = threshold.threshold
    return sig


def _run_tags() -> dict[str, str]:
    """Tags a controller gives this run (environment, pipeline implementation digest and commit)."""
    import os

    from raymlops.pipeline.delivery import RUN_TAGS_ENV

    try:
        tags = json.loads(os.environ.get(RUN_TAGS_ENV, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items() if v not in (None, "")} if isinstance(tags, dict) else {}


def _read_table(split_uri: str):
    import pyarrow.dataset as pads

    fs, path = storage.resolve(split_uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()


def _sample_rows(split_uri: str, n: int) -> list[dict[str, Any]]:
    """A few rows as a JSON client would send them (timestamps as ISO text)."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(split_uri)
    table = pads.dataset(path, filesystem=fs, format="parquet").head(n)
    rows = table.to_pylist()
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]


def _metrics_line(metrics: dict[str, Any]) -> str:
    return "test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))


def run_ct(config: Config | str | None = None, *, overrides: list[str] | tuple[str, ...] = (),
           resume_run_id: str | None = None, progress=print) -> CTResult:
    """Python API: run the CT pipeline for a config (object, YAML path, or None for the embedded defaults).

    Starts a local Ray when none is running (or connects to ``$RAY_ADDRESS``). Returns the result; call
    ``.raise_for_status()`` to turn a blocked or failed run into an exception.
    """
    from raymlops.config import load_config

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    import ray

    if not ray.is_initialized():
        from raymlops._ray import init_ray

        init_ray()
    return run_ct_pipeline(cfg, resume_run_id=resume_run_id, progress=progress)
