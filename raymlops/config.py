"""Pipeline configuration: pydantic models for every section, YAML loading, overrides and ${ENV} interpolation.

``load_config(path, overrides)`` is the single entry point. Every error is a ``ConfigError`` whose message names
the key path (``train.num_workers``), the bad value and what is allowed, so a user can fix the file without
reading this module.

A config is settings, not code: the YAML is bounded (size, alias expansion), ``${ENV}`` is substituted only in
the location keys of ``INTERPOLATED_KEYS``, and every key that names code (``train.model``, ``controller.pipeline``,
``delivery.pip``) must be built in or on an allow-list written in the same config (see SECURITY.md).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymlops.core.auth import SECRET_VARS as SERVING_SECRET_VARS
from raymlops.core.package_trust import KEY_ENV, KEY_FILE_ENV, PackagePolicy
from raymlops.core.safe_yaml import MAX_TEXT_BYTES, load_bounded
from raymlops.errors import ConfigError

Pct = Annotated[float, Field(ge=0, le=100)]
CallablePath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------- data
class TimeWindow(_Section):
    start: str | None = Field(None, description="Inclusive ISO-8601 start of the window on `data.timestamp`.")
    end: str | None = Field(None, description="Exclusive ISO-8601 end of the window on `data.timestamp`.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        # YAML (and so `--set data.window.start=2026-01-02`) reads an unquoted date or time as a date object.
        return value.isoformat() if hasattr(value, "isoformat") else value


class SplitConfig(_Section):
    method: Literal["random", "time"] = Field(
        "random", description="`random` (seeded) or `time` (oldest rows train, newest rows test)."
    )
    validation_pct: Pct = Field(15.0, description="Share of rows for the validation split, in percent.")
    test_pct: Pct = Field(15.0, description="Share of rows for the test split, in percent.")
    seed: int = Field(42, description="Seed of the random split; the same seed gives the same split.")
    stratify: bool = Field(True, description="Keep the label distribution equal across splits (random method).")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation_pct + self.test_pct >= 100:
            raise ValueError(
                f"validation_pct + test_pct = {self.validation_pct + self.test_pct} leaves no training rows; "
                "keep their sum below 100 (e.g. 15 and 15)"
            )
        return self


class DataConfig(_Section):
    source: str = Field(
        "./.raymlops/landing",
        description="Training data: a file, glob, directory or any pyarrow filesystem URI (s3://, gs://).",
    )
    format: Literal["auto", "parquet", "csv"] = Field("auto", description="File format; `auto` uses the suffix.")
    label: str = Field("churned", description="Name of the label column.")
    task: Literal["binary", "multiclass", "regression"] = Field("binary", description="Learning task.")
    timestamp: str | None = Field("event_ts", description="Event-time column (time window, time split).")
    id_columns: list[str] = Field(
        default_factory=lambda: ["customer_id"], description="Identifier columns: kept in data, never features."
    )
    features: list[str] | None = Field(
        None, description="Feature columns. Null: every column except label, timestamp and id columns."
    )
    categorical: list[str] | None = Field(
        None, description="Columns to treat as categorical. Null: string/boolean/dictionary columns."
    )
    slices: list[str] = Field(default_factory=lambda: ["region"], description="Columns to evaluate slices on.")
    window: TimeWindow = Field(default_factory=TimeWindow)
    split: SplitConfig = Field(default_factory=SplitConfig)
    local_max_rows: Annotated[int, Field(ge=0)] = Field(
        250_000, description="Parquet data of at most this many rows is validated and prepared in the step's own "
        "process (read once with pyarrow, same code); larger data streams through Ray Data, whose start-up costs "
        "1-2 s per pass. 0: always Ray Data."
    )


# --------------------------------------------------------------------------------------------- validation
DriftMetric = Literal["psi", "js", "ks", "linf"]


class DriftRule(_Section):
    metric: DriftMetric = Field(description="psi | js (Jensen-Shannon distance) | ks (numeric) | linf (categorical)")
    threshold: Annotated[float, Field(gt=0)] = Field(description="Drift is reported above this value.")


class DriftConfig(_Section):
    numeric: DriftRule = Field(
        default_factory=lambda: DriftRule(metric="psi", threshold=0.2),
        description="Default rule for numeric features.",
    )
    categorical: DriftRule = Field(
        default_factory=lambda: DriftRule(metric="linf", threshold=0.1),
        description="Default rule for categorical features.",
    )
    features: dict[str, DriftRule] = Field(default_factory=dict, description="Per-feature rules override defaults.")

    @model_validator(mode="after")
    def _metric_fits_kind(self) -> DriftConfig:
        if self.numeric.metric == "linf":
            raise ValueError("numeric.metric 'linf' is for categorical features; use psi, js or ks")
        if self.categorical.metric == "ks":
            raise ValueError("categorical.metric 'ks' is for numeric features; use linf, psi or js")
        return self


class ValidationConfig(_Section):
    schema_uri: str | None = Field(
        None,
        description="Frozen schema (YAML) to validate against. Null: the latest version under "
        "`{storage_uri}/schemas/{name}/` (`raymlops schema accept` adds one), inferred and frozen from the first "
        "accepted data if none exists.",
    )
    reference_uri: str | None = Field(
        None, description="Reference statistics (JSON) for drift. Null: the champion's training data (recorded "
        "with each model version), else those frozen with the schema."
    )
    max_null_pct: Pct = Field(5.0, description="A feature frozen as non-null may have at most this % nulls.")
    max_unseen_category_pct: Pct = Field(
        1.0, description="Share of rows with a category outside the frozen domain tolerated before STOP."
    )
    max_out_of_range_pct: Pct = Field(
        1.0, description="Share of values outside a column's numeric range tolerated: above it, an enforced range "
        "STOPs and a recorded (unenforced) one is a value anomaly reported with the drift (DRIFT)."
    )
    enforce_ranges: bool | list[str] = Field(
        False, description="Numeric ranges that are hard constraints (STOP when exceeded): true for every range in "
        "the schema, or a list of feature names. Other ranges are only recorded, like a schema entry without "
        "`enforce_range: true`, so a covariate shift reaches retraining."
    )
    range_margin_pct: Annotated[float, Field(ge=0)] = Field(
        10.0, description="When inferring a schema, widen numeric ranges by this % of their span."
    )
    histogram_bins: Annotated[int, Field(ge=2, le=200)] = Field(
        10, description="Bins of the reference histogram (quantile edges) used by psi and js."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig)
    stop_on_drift: bool = Field(False, description="Treat drift as a gate (exit 3) instead of a report.")


# ------------------------------------------------------------------------------------------------ prepare
class PrepareConfig(_Section):
    numeric_impute: Literal["median", "mean", "zero"] = Field(
        "median", description="Value that replaces nulls in numeric features (fitted on the training split)."
    )
    standardize: bool = Field(True, description="Scale numeric features to zero mean and unit variance.")
    min_category_count: Annotated[int, Field(ge=1)] = Field(
        1, description="Categories seen fewer times in training go to the out-of-vocabulary bucket."
    )
    max_categories: PositiveInt = Field(1000, description="Vocabulary size cap per categorical feature.")


# -------------------------------------------------------------------------------------------------- train
class GbdtConfig(_Section):
    """Gradient-boosted trees (``train.model: xgboost``): XGBoost's own parameter names, tabular defaults."""

    num_boost_round: PositiveInt = Field(
        1000, description="Most boosting rounds (trees per class); early stopping usually ends sooner."
    )
    early_stopping_rounds: Annotated[int, Field(ge=0)] = Field(
        50, description="Rounds without improvement of the validation loss before stopping (the best round's "
        "model is kept); 0 disables."
    )
    eta: Annotated[float, Field(gt=0, le=1)] = Field(0.05, description="Learning rate (shrinkage) of each tree.")
    max_depth: Annotated[int, Field(ge=1, le=20)] = Field(6, description="Deepest a tree may grow.")
    min_child_weight: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Least hessian (for squared error: rows) a leaf must hold."
    )
    subsample: Annotated[float, Field(gt=0, le=1)] = Field(0.8, description="Share of rows sampled per tree.")
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = Field(
        0.8, description="Share of features sampled per tree."
    )
    reg_lambda: Annotated[float, Field(ge=0)] = Field(1.0, description="L2 penalty on leaf weights.")
    reg_alpha: Annotated[float, Field(ge=0)] = Field(0.0, description="L1 penalty on leaf weights.")
    max_bin: Annotated[int, Field(ge=2, le=4096)] = Field(256, description="Histogram bins per numeric feature.")


TRAIN_MODELS_BUILTIN = ("mlp", "xgboost")
# train keys that also shape a GBDT run, so a search over them means something with train.model: xgboost
GBDT_TUNABLE_TRAIN_KEYS = ("class_weight", "seed")


class TrainConfig(_Section):
    model: str = Field(
        "mlp", description="`mlp` (built-in tabular MLP), `xgboost` (gradient-boosted trees on Ray Train's "
        "XGBoostTrainer; parameters under train.gbdt) or a `module:factory` path returning an nn.Module."
    )
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 32], description="MLP hidden widths.")
    embedding_dim: PositiveInt = Field(8, description="Embedding width for each categorical feature.")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    num_workers: PositiveInt = Field(2, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker; DDP uses nccl instead of gloo.")
    cpus_per_worker: Annotated[float, Field(gt=0)] = Field(0.5, description="CPUs reserved per worker.")
    epochs: PositiveInt = Field(
        50, description="Epoch budget: the learning-rate schedule spans it; early stopping usually ends sooner."
    )
    batch_size: PositiveInt = 256
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    learning_rate: Annotated[float, Field(gt=0)] = Field(
        0.01, description="Peak learning rate (reached after the warm-up; see lr_schedule)."
    )
    lr_schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="`cosine`: linear warm-up over warmup_pct of the steps, then cosine decay over the "
        "epoch budget; `onecycle`: rise over 30% of the steps from lr/25, then anneal (Smith's one-cycle); "
        "`constant`: learning_rate throughout."
    )
    warmup_pct: Annotated[float, Field(ge=0, lt=100)] = Field(
        5.0, description="Share of the training steps spent warming up (cosine schedule), in percent."
    )
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        8, description="Epochs without validation-loss improvement before stopping (the best epoch's weights are "
        "kept); 0 disables."
    )
    class_weight: Literal["balanced", "none"] = Field(
        "none", description="Classification: `balanced` weighs each class by n / (classes x its rows) in the loss "
        "(pos_weight for binary); `none` keeps the data's prior (calibrated probabilities). The decision threshold "
        "is tuned on validation either way (evaluation.threshold)."
    )
    max_failures: Annotated[int, Field(ge=0)] = Field(2, description="Worker failures tolerated (resume).")
    seed: int = 42
    gbdt: GbdtConfig = Field(
        default_factory=GbdtConfig, description="Gradient-boosted trees, used when train.model is xgboost."
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in TRAIN_MODELS_BUILTIN and ":" not in model:
            raise ValueError(f"unknown model {model!r}; use one of {list(TRAIN_MODELS_BUILTIN)} or a "
                             "'package.module:factory' path")
        return model


class ModelConfig(_Section):
    """What this config lets a model package run (training, evaluation, serving and batch prediction)."""

    allowed_factories: list[CallablePath] = Field(
        default_factory=list, description="User model factories (`package.module:factory`) that train.model may "
        "name and that a loaded package's model_spec.json may name. Empty: built-in models (mlp, xgboost) only. "
        "A package never chooses code: a factory it names that is not listed here is refused before any import."
    )
    require_signature: bool | None = Field(
        None, description=f"Load only packages whose manifest carries a valid HMAC-SHA256 signature made with the "
        f"key in {KEY_ENV} (or the file named by {KEY_FILE_ENV}). Null: required exactly when a key is set; true: "
        "also refuse to load anything when no key is set; false: let unsigned packages load while a key is set "
        "(migration; a signature that is present is still verified)."
    )

    def policy(self) -> PackagePolicy:
        """The loading policy ``raymlops.model.package.load_package`` applies."""
        return PackagePolicy(tuple(self.allowed_factories), self.require_signature)


class SearchDim(_Section):
    type: Literal["uniform", "loguniform", "choice", "randint"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type == "choice":
            if not self.values:
                raise ValueError("type 'choice' needs a non-empty `values` list")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"type '{self.type}' needs numbers `low` < `high`")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("type 'loguniform' needs `low` > 0")
        return self


class TuneConfig(_Section):
    enabled: bool = Field(False, description="Search hyper-parameters with Ray Tune; false trains once.")
    num_samples: PositiveInt = 8
    max_concurrent_trials: PositiveInt = 2
    metric: str = Field("val_loss", description="Metric the search optimises.")
    mode: Literal["min", "max"] = "min"
    grace_period: PositiveInt = Field(2, description="ASHA: epochs before a trial may be stopped.")
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    search_space: dict[str, SearchDim] = Field(
        default_factory=lambda: {
            "learning_rate": SearchDim(type="loguniform", low=1e-4, high=1e-2),
            "batch_size": SearchDim(type="choice", values=[128, 256, 512]),
        },
        description="`train` keys to search over.",
    )

    @field_validator("search_space")
    @classmethod
    def _known_keys(cls, space: dict[str, SearchDim]) -> dict[str, SearchDim]:
        allowed = set(TrainConfig.model_fields) - {"gbdt"} | {f"gbdt.{k}" for k in GbdtConfig.model_fields}
        unknown = sorted(set(space) - allowed)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; allowed: {sorted(allowed)}")
        return space


# --------------------------------------------------------------------------------------------- evaluation
class EvaluationConfig(_Section):
    primary_metric: str = Field("roc_auc", description="Metric the gates compare (higher is better unless "
                                "it is log_loss, rmse or mae).")
    min_primary: float | None = Field(0.6, description="Absolute minimum of the primary metric on the test split.")
    min_delta_vs_champion: float = Field(
        0.0, description="The challenger must beat the champion's primary metric by at least this much."
    )
    max_slice_drop: Annotated[float, Field(ge=0)] = Field(
        0.05, description="No slice may be worse than the champion's same slice by more than this."
    )
    min_slice_rows: PositiveInt = Field(50, description="Slices with fewer test rows are reported, not gated.")
    max_package_mb: Annotated[float, Field(gt=0)] = Field(200.0, description="Model package size limit.")
    local_max_rows: Annotated[int, Field(ge=0)] = Field(
        250_000, description="Splits with at most this many rows in all are scored in the evaluate step's own "
        "process; larger ones on a Ray Data actor pool (which costs seconds to start)."
    )
    max_load_memory_mb: Annotated[float, Field(gt=0)] = Field(
        2048.0, description="Memory limit when the package is loaded in a fresh process."
    )
    min_delta_vs_baseline: Annotated[float, Field(ge=0)] | None = Field(
        0.0, description="The model's primary metric on the test split must beat the naive baseline's (training "
        "class prior / majority class, or training mean) by more than this: 0 refuses a model that only ties "
        "ignoring the features. In the metric's own units (a fixed non-zero default would mean nothing for rmse). "
        "Null disables the gate."
    )
    threshold: Literal["auto"] | float = Field(
        "auto", description="Binary tasks: decision threshold on the positive-class probability. `auto`: chosen "
        "on the validation split to maximise threshold_objective; a number in (0, 1): fixed. Stored in the "
        "package's signature, so serving, batch prediction and evaluation decide alike."
    )
    threshold_objective: Literal["f1", "youden", "accuracy"] = Field(
        "f1", description="What `threshold: auto` maximises on validation: f1 (positive class), youden "
        "(TPR - FPR, i.e. balanced accuracy) or accuracy."
    )
    reference_max_rows: Annotated[int, Field(ge=0)] = Field(
        200_000, description="Fit scikit-learn's HistGradientBoosting on the training split when it has at most "
        "this many rows, and report it on the test split as a strong tabular reference (informational, not a "
        "gate). 0 disables."
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if value == "auto":
            return value
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
        if not ok:
            raise ValueError("must be 'auto' or a number strictly between 0 and 1, e.g. "
                             "evaluation.threshold: 0.3, or auto to choose it on the validation split")
        return float(value)


# ------------------------------------------------------------------------------------------------ serving
class PredictionLogConfig(_Section):
    enabled: bool = True
    flush_rows: PositiveInt = Field(1000, description="Flush the prediction log after this many rows ...")
    flush_interval_s: Annotated[float, Field(gt=0)] = Field(2.0, description="... or after this many seconds.")
    buffer_rows: PositiveInt = Field(100_000, description="Rows buffered before new rows are counted as dropped.")
    buffer_bytes: PositiveInt = Field(
        64 * 1024 * 1024, description="Bytes (about: the request bodies) buffered per replica before new rows are "
        "counted as dropped (`dropped_over_bytes` in GET /v1/models/{name}): large bodies cannot grow it unbounded.")


class TokenConfig(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Shown in logs; names the client.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the token, never the token.")
    scopes: list[Literal["predict", "feedback", "admin"]] = Field(..., min_length=1)


class ServingAuthConfig(_Section):
    """Bearer tokens for the HTTP API (see SECURITY.md, "Serving authentication")."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="auto: on whenever serving.host is not loopback. With it on, every route but the health "
        "checks needs a token, request ids are issued and signed by the server, and :feedback takes only those.")
    tokens: list[TokenConfig] = Field(
        default_factory=list, description="Token hashes with scopes (predict, feedback, admin). More come from "
        "RAYMLOPS_SERVING_TOKENS / RAYMLOPS_SERVING_TOKENS_FILE (NAME:SCOPES:TOKEN lines), hashed at deploy.")
    feedback_rate_per_s: Annotated[float, Field(gt=0)] = Field(
        100.0, description="Feedback requests per second per token (or client address without auth), per replica.")
    feedback_burst: PositiveInt = Field(1000, description="Feedback requests a token may send at once.")


class AutoscalingConfig(_Section):
    """Serve's replica autoscaling (its ``autoscaling_config``), instead of a fixed ``serving.num_replicas``."""

    min_replicas: PositiveInt = Field(1, description="Replicas kept at the lowest load (>= 1: one stays ready).")
    max_replicas: PositiveInt = Field(4, description="Most replicas under load.")
    target_ongoing_requests: Annotated[float, Field(gt=0)] = Field(
        2.0, description="Requests in flight per replica that Serve scales toward (below max_ongoing_requests).")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                             "set serving.autoscaling.max_replicas >= min_replicas")
        return self


class ServingConfig(_Section):
    host: str = Field("127.0.0.1", description="HTTP bind address; 0.0.0.0 exposes the API to the network.")
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    app_name: str | None = Field(None, description="Serve application name. Null: the pipeline name.")
    route_prefix: str = "/"
    ingress: Literal["auto", "haproxy", "direct", "proxy"] = Field(
        "auto", description="How HTTP reaches the replicas, decided when Serve starts: haproxy (Serve's HAProxy on "
        "host:port balancing over every replica's own port), direct (Serve's Python proxy on host:port plus each "
        "replica's own port, 30000+), proxy (the Python proxy only). auto: haproxy where its binary is found.")
    num_replicas: PositiveInt = Field(1, description="Fixed replica count (leave unset with serving.autoscaling).")
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Scale replicas with load between min_replicas and max_replicas (replaces num_replicas).")
    num_cpus: Annotated[float, Field(gt=0)] = Field(0.25, description="CPUs reserved per replica.")
    max_ongoing_requests: PositiveInt = 64
    max_queued_requests: Annotated[int, Field(ge=-1)] = Field(256, description="-1: unbounded (not advised).")
    max_body_bytes: PositiveInt = Field(1_048_576, description="Larger request bodies get 413.")
    max_instances: PositiveInt = Field(1000, description="Instances per request; more gets 422.")
    max_string_length: PositiveInt = Field(1024, description="Characters per string value in a request; more gets "
                                           "422 naming the field.")
    body_timeout_s: Annotated[float, Field(gt=0)] = Field(
        10.0, description="Deadline for reading a request body; a slower client gets 408 and frees its slot.")
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Serve's end-to-end request timeout (408), set when Serve starts.")
    auth: ServingAuthConfig = Field(default_factory=ServingAuthConfig)
    challenger_weight_pct: Pct = Field(0.0, description="Traffic share of `challenger` when deployed by hand.")
    shadow_pct: Pct = Field(0.0, description="Share of traffic mirrored to the shadow version.")
    prediction_log: PredictionLogConfig = Field(default_factory=PredictionLogConfig)

    @model_validator(mode="after")
    def _replicas(self) -> ServingConfig:
        a = self.autoscaling
        if a is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("serving.num_replicas and serving.autoscaling are both set; give a fixed count "
                             "(num_replicas) or autoscaling bounds (autoscaling.min_replicas/max_replicas), not both")
        if a is not None and a.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(f"serving.autoscaling.target_ongoing_requests ({a.target_ongoing_requests:g}) is above "
                             f"serving.max_ongoing_requests ({self.max_ongoing_requests}): replicas would never be "
                             "busy enough to scale up; lower the target")
        return self


# ------------------------------------------------------------------------------------------------- canary
class CanaryConfig(_Section):
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0], description="Canary weights in %, rising."
    )
    interval_s: Annotated[float, Field(gt=0)] = Field(60.0, description="Analysis window length.")
    min_requests: PositiveInt = Field(100, description="Requests per version in a window before judging.")
    min_labels: PositiveInt = Field(50, description="Joined feedback labels per version before judging quality.")
    min_label_keys: PositiveInt = Field(
        5, description="Distinct routing keys (X-Routing-Key; none counts as one) the labels of each version must come "
        "from before quality is judged, so a few clients cannot force a rollback or a promotion.")
    max_error_rate_pct: Pct = 1.0
    max_p99_ratio: Annotated[float, Field(gt=0)] = Field(1.5, description="Canary p99 / champion p99 limit.")
    max_quality_drop: Annotated[float, Field(ge=0)] = Field(0.02, description="Allowed drop of the quality metric.")
    max_prediction_psi: Annotated[float, Field(gt=0)] = Field(
        0.25, description="Largest prediction distribution shift (PSI of canary vs champion predictions in the "
        "window, beyond what sampling noise of that many requests gives).")
    failure_limit: PositiveInt = 2
    require_approval: bool = False

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: list[float]) -> list[float]:
        if not steps or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must be a non-empty, strictly rising list of percents, got {steps}")
        return steps


# ----------------------------------------------------------------------------------------------- triggers
class DegradationTrigger(_Section):
    min_quality: float | None = Field(None, description="Retrain when online quality falls below this.")
    max_drop_vs_offline: float | None = Field(
        None, description="Retrain when online quality is below the champion's offline figure by more."
    )


class TriggersConfig(_Section):
    landing_uri: str | None = Field(None, description="Watched for new data. Null: `data.source`.")
    new_data: bool = True
    schedule_cron: str | None = Field(None, description="Cron expression, e.g. '0 3 * * *'.")
    interval_s: Annotated[float, Field(gt=0)] | None = Field(None, description="Retrain every N seconds.")
    on_drift: bool = True
    degradation: DegradationTrigger = Field(default_factory=DegradationTrigger)
    cooldown_s: Annotated[float, Field(ge=0)] = Field(300.0, description="Minimum time between triggered runs.")
    poll_interval_s: Annotated[float, Field(gt=0)] = 5.0


# ------------------------------------------------------------------------------------------ control loop
class MonitoringConfig(_Section):
    interval_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="How often the controller's monitor task reads the prediction and feedback logs."
    )
    window_s: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="Live traffic judged by the monitor: the last N seconds of the prediction log."
    )
    min_rows: PositiveInt = Field(200, description="Live rows per version before its input drift is judged.")
    log_to_mlflow: bool = Field(True, description="Log each monitor pass as metrics of a `monitor` MLflow run.")
    report_refresh_s: Annotated[float, Field(ge=0)] | None = Field(
        None, description="A browser showing the monitor's latest.html reloads it this often (seconds); null: every "
        "interval_s, when a new pass may have rewritten it; 0: never.")


class NotificationsConfig(_Section):
    webhook_url: str | None = Field(
        None, description="POST every controller event here as JSON (Slack-style `text` plus the event)."
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(5.0, description="Webhook request timeout.")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts the webhook may reach: exact names or `*.example.com`; empty: "
        "any public host. Redirects are never followed.")
    webhook_allow_private: bool = Field(
        False, description="Allow a webhook host that resolves to a loopback, private or link-local address "
        "(refused by default: a config must not aim the controller at internal services).")
    webhook_secret_env: str = Field(
        "RAYMLOPS_WEBHOOK_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable with "
        "the key that signs each payload (header X-Raymlops-Signature: sha256=<HMAC-SHA256 of the body>); unset: "
        "payloads go unsigned, with a warning.")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if not url:
            return None  # `${RAYMLOPS_WEBHOOK:-}` left empty: no webhook
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url {url!r} must be an http:// or https:// URL, or null")
        return url

    @model_validator(mode="after")
    def _allowed_host(self) -> NotificationsConfig:
        from urllib.parse import urlsplit

        from raymlops.core.webhook import host_allowed

        host = urlsplit(self.webhook_url).hostname or "" if self.webhook_url else None
        if host is not None and self.webhook_allowed_hosts and not host_allowed(host, self.webhook_allowed_hosts):
            raise ValueError(f"webhook_url's host {host!r} is not in webhook_allowed_hosts "
                             f"{self.webhook_allowed_hosts}; add it there or fix webhook_url")
        return self


BUILTIN_PIPELINE = "raymlops.ct:run_ct_pipeline"


class ControllerConfig(_Section):
    poll_interval_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="How often the controller checks runs, canary analysis and (at triggers.poll_interval_s) "
        "triggers."
    )
    num_cpus: Annotated[float, Field(ge=0)] = Field(0.1, description="CPUs the controller actor reserves.")
    run_num_cpus: Annotated[float, Field(ge=0)] = Field(
        0.1, description="CPUs the task driving a pipeline run reserves (its steps reserve their own)."
    )
    pipeline: str = Field(
        BUILTIN_PIPELINE,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="What a triggered run calls, as `module:function` taking (cfg, *, run_id, resume_run_id, "
        "progress) and returning an object with run_id, status, version and error (like run_ct_pipeline). "
        "Anything but the built-in must be listed in controller.allowed_pipelines.",
    )
    allowed_pipelines: list[CallablePath] = Field(
        default_factory=list, description="`module:function` paths controller.pipeline may name besides the "
        "built-in CT pipeline (a config names code only from a list its owner wrote down)."
    )

    @model_validator(mode="after")
    def _allowed_pipeline(self) -> ControllerConfig:
        if self.pipeline != BUILTIN_PIPELINE and self.pipeline not in self.allowed_pipelines:
            raise ValueError(f"pipeline {self.pipeline!r} is neither the built-in {BUILTIN_PIPELINE!r} nor in "
                             f"controller.allowed_pipelines {self.allowed_pipelines}; add it there if you trust it")
        return self


# ----------------------------------------------------------------------------------------------- features
class FeaturesConfig(_Section):
    """Training data from the feature store, and key-only requests in serving (see raymlops.features)."""

    repo: str = Field("configs/features.yaml", description="Feature repo YAML (entities, views, services).")
    service: str = Field(description="Feature service the model consumes (e.g. churn_model).")
    label_source: str | None = Field(
        None, description="Entity rows with timestamps and labels (file, directory or URI). When set, the CT "
        "pipeline trains on these rows joined point-in-time with the service's features, instead of data.source; "
        "data.timestamp, data.id_columns and data.label name its columns.",
    )
    partitions: PositiveInt = Field(
        4, description="Entity-key hash partitions of the historical join, run as parallel Ray tasks (1: one "
        "process)."
    )
    serve_online: bool = Field(
        True, description="Serving fetches the service's features from the online store by entity key, so a "
        "request sends only keys and request-time features."
    )


# --------------------------------------------------------------------------------------- pre-exposure
class PreExposureConfig(_Section):
    enabled: bool = Field(True, description="Test every challenger before it gets live traffic (also canaries).")
    contract: bool = Field(True, description="Call it over HTTP with expected and with bad inputs.")
    sample_rows: PositiveInt = Field(16, description="Expected inputs: rows of its test split (else live inputs).")
    load_requests: Annotated[int, Field(ge=0)] = Field(
        300, description="Requests of the bounded load test, on the challenger and on the champion (0: none)."
    )
    load_concurrency: PositiveInt = 8
    max_p99_increase_pct: Annotated[float, Field(ge=0)] | None = Field(
        100.0, description="Challenger p99 may exceed the champion's by this much (percent; both loaded in one "
        "preview replica, measured in blocks that take turns)."
    )
    min_qps: Annotated[float, Field(gt=0)] | None = Field(None, description="Minimum challenger throughput.")
    timeout_s: Annotated[float, Field(gt=0)] = Field(180.0, description="Whole test budget; over it fails.")


# ---------------------------------------------------------------------------------------- environments
class PipelinePromotionConfig(_Section):
    after_runs: PositiveInt | None = Field(
        3, description="Promote the implementation to `promote_to` after this many runs that registered a model."
    )
    require_approval: bool = Field(
        False, description="Wait for `raymlops pipeline approve --env TARGET` instead of promoting automatically."
    )


class EnvironmentConfig(_Section):
    address: str | None = Field(None, description="Ray address of this environment. Null: the one connected to.")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Config keys this environment overrides (dotted, like --set): name (registry model), "
        "storage_uri, serving.app_name, serving.route_prefix, canary.*, triggers.* ...",
    )
    promote_to: str | None = Field(None, description="Environment that receives this one's proven implementation.")
    promotion: PipelinePromotionConfig = Field(default_factory=PipelinePromotionConfig)


class DeliveryConfig(_Section):
    exclude: list[str] = Field(
        default_factory=lambda: [".git", ".venv", "venv", ".raymlops", "__pycache__", "*.pyc", ".pytest_cache",
                                 "benchmarks/results", "*.egg-info", "node_modules"],
        description="Paths (globs) left out of a packaged pipeline implementation.",
    )
    pip: list[str] = Field(
        default_factory=list, description="Extra packages the implementation's runs install, as requirement "
        "specifiers (`name[extra]>=1.2; marker`). URLs, paths and pip options (-e, --index-url ...) need "
        "delivery.allow_pip_sources."
    )
    allow_pip_sources: bool = Field(
        False, description="Let delivery.pip hold URLs (`name @ https://...`, git+https://...), local paths and pip "
        "options such as --index-url or -e: code from wherever they point runs on the cluster."
    )
    max_mb: Annotated[float, Field(gt=0)] = Field(100.0, description="Refuse to package a larger working tree.")
    preflight_rows: PositiveInt = Field(2000, description="Rows of the pre-flight's tiny end-to-end run.")

    @model_validator(mode="after")
    def _pip_specifiers(self) -> DeliveryConfig:
        if self.allow_pip_sources:
            return self
        bad = [entry for entry in self.pip if not _is_requirement(entry)]
        if bad:
            raise ValueError(f"pip entries {bad} are not plain requirement specifiers (name[extra]>=version; "
                             "marker): a URL, path or pip option (-e, --index-url, --extra-index-url ...) can "
                             "install code from anywhere; write them as `name==version`, or set "
                             "delivery.allow_pip_sources: true if you trust where they point")
        return self


def _is_requirement(entry: str) -> bool:
    """A PEP 508 requirement from an index (no URL, no path, no pip option)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(entry, str) or entry.strip().startswith("-"):
        return False
    try:
        return Requirement(entry).url is None
    except InvalidRequirement:
        return False


# ------------------------------------------------------------------------------------------------- config
class RetentionConfig(_Section):
    """What is deleted or compacted, and when (`raymlops gc`, or the monitor pass): null keeps forever."""

    prediction_log_days: Annotated[float, Field(gt=0)] | None = Field(
        30.0, description="Delete a day's prediction-log partition once the day is this many days old.")
    feedback_log_days: Annotated[float, Field(gt=0)] | None = Field(
        90.0, description="Delete a day's feedback-log partition once the day is this many days old.")
    compact_after_s: Annotated[float, Field(ge=0)] | None = Field(
        3600.0, description="Compact a day's log partition into few files this long after the day ended.")
    compact_rows_per_file: PositiveInt = Field(500_000, description="Rows per compacted log file (about).")
    reports_keep: PositiveInt | None = Field(500, description="Monitor / kept validation reports to keep (newest).")
    reports_days: Annotated[float, Field(gt=0)] | None = Field(30.0, description="Delete reports older than this.")
    runs_keep: PositiveInt | None = Field(
        20, description="Pipeline runs to keep (newest), besides runs a registered model version references.")
    runs_days: Annotated[float, Field(gt=0)] | None = Field(
        30.0, description="Delete runs older than this, unless a registered model version references them.")
    in_monitor: bool = Field(True, description="Collect from the controller's monitor pass (else `raymlops gc`).")
    interval_s: Annotated[float, Field(gt=0)] = Field(3600.0, description="Monitor pass: at most one collection per.")


class Config(_Section):
    """A whole pipeline configuration (one YAML file)."""

    name: str = Field("churn", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="Pipeline and model name.")
    storage_uri: str = Field("./.raymlops", description="Root of every artifact (local path or pyarrow URI).")
    tracking_uri: str = Field("sqlite:///./.raymlops/mlflow.db", description="MLflow tracking URI.")
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="What model packages may run: allowed factories, signatures."
    )
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    triggers: TriggersConfig = Field(default_factory=TriggersConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    pre_exposure: PreExposureConfig = Field(default_factory=PreExposureConfig)
    environments: dict[str, EnvironmentConfig] = Field(
        default_factory=dict, description="Named environments (staging, production ...); pick one with --env."
    )
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    environment: str | None = Field(None, description="Set by --env: the environment this config is for.")
    environment_base: dict[str, Any] = Field(
        default_factory=dict, description="Set by --env: what the environment's keys held before it changed them "
        "(so that another environment's config can be derived, see `for_environment`)."
    )

    @model_validator(mode="after")
    def _search_fits_model(self) -> Config:
        # A key the chosen model ignores would make every trial the same model: say so before any cluster time.
        if not self.tune.enabled or "search_space" not in self.tune.model_fields_set:
            return self
        gbdt = self.train.model == "xgboost"
        useless = sorted(k for k in self.tune.search_space
                         if k.startswith("gbdt.") != gbdt and (not gbdt or k not in GBDT_TUNABLE_TRAIN_KEYS))
        if useless:
            fix = ("search gbdt.* keys (e.g. gbdt.eta, gbdt.max_depth)" if gbdt
                   else "set train.model: xgboost to search gbdt.* keys")
            raise ValueError(f"tune.search_space keys {useless} do nothing for train.model {self.train.model!r}; "
                             f"{fix}, or drop them")
        return self

    @model_validator(mode="after")
    def _train_model_allowed(self) -> Config:
        model = self.train.model
        if model not in TRAIN_MODELS_BUILTIN and model not in self.model.allowed_factories:
            raise ValueError(f"train.model {model!r} is not built in {list(TRAIN_MODELS_BUILTIN)} and not in "
                             f"model.allowed_factories {self.model.allowed_factories}; add it to "
                             "model.allowed_factories if you trust it (serving and evaluation need it there too)")
        return self

    @model_validator(mode="after")
    def _promotions_name_environments(self) -> Config:
        for name, env in self.environments.items():
            if env.promote_to is not None and (env.promote_to == name or env.promote_to not in self.environments):
                raise ValueError(f"environments.{name}.promote_to is {env.promote_to!r}; name another environment "
                                 f"of: {', '.join(n for n in self.environments if n != name) or '(none defined)'}")
        return self
    features: FeaturesConfig | None = Field(None, description="Feature store integration; null: none.")


# ------------------------------------------------------------------------------------------------ loading
# ${NAME} or ${NAME:-default}; a default may itself hold ${...} one level deep (`${A:-sqlite:///${B:-.}/x.db}`).
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^{}]|\$\{[^{}]*\})*))?\}")
# The only keys whose values take ${ENV}: locations that differ between machines and environments. Elsewhere a
# reference is an error, so a config cannot read the environment (secrets included) into its other settings.
INTERPOLATED_KEYS = (
    "storage_uri", "tracking_uri", "data.source", "triggers.landing_uri", "validation.schema_uri",
    "validation.reference_uri", "features.repo", "features.label_source", "notifications.webhook_url",
)
# Variables raymlops reads as keys: never copied into a config value (from where it would reach logs, tags, URLs).
_SECRET_VARS = (KEY_ENV, KEY_FILE_ENV, "RAYMLOPS_WEBHOOK_SECRET", *SERVING_SECRET_VARS)
_ENV_SET = re.compile(r"^environments\.[^.]+\.set\.")


def _interpolated_key(path: str) -> bool:
    # An environment's `set` (and the values it replaced, kept in environment_base) holds the same keys, dotted.
    key = _ENV_SET.sub("", path)
    key = key[len("environment_base."):] if key.startswith("environment_base.") else key
    return key in INTERPOLATED_KEYS


def _interpolate(value: Any, path: str, secret_vars: tuple[str, ...] = _SECRET_VARS) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), secret_vars) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", secret_vars) for i, v in enumerate(value)]
    if not isinstance(value, str) or not _ENV.search(value):
        return value
    if "${" in _ENV.sub("", value):  # the template itself, never a value: `${A:-${B:-${C}}}` is one level too deep
        raise ConfigError(f"{path}: {value!r} nests ${{...}} more than one level deep in a default, or leaves a "
                          "${ unclosed; write at most ${A:-...${B:-default}...}")
    if not _interpolated_key(path):
        name = _ENV.search(value).group(1)
        raise ConfigError(f"{path}: ${{{name}}} is not substituted here; environment variables are read only in "
                          f"{', '.join(INTERPOLATED_KEYS)} (and the same keys under environments.*.set). Write the "
                          "value itself, or pass it with --set")

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in secret_vars:
            raise ConfigError(f"{path}: ${{{name}}} holds a key raymlops reads itself and is never copied into a "
                              "config value; remove the reference")
        if name in os.environ:
            return os.environ[name]  # never scanned again: a value is data, not another reference
        if default is not None:
            return _ENV.sub(repl, default)
        raise ConfigError(
            f"{path}: environment variable ${{{name}}} is not set; export it or write ${{{name}:-default}}"
        )

    return _ENV.sub(repl, value)


def _apply_environment(doc: dict[str, Any], envs: Any, env: str, source: str) -> None:
    envs = envs or {}
    if not isinstance(envs, dict) or env not in envs:
        known = ", ".join(envs) if isinstance(envs, dict) and envs else "none"
        raise ConfigError(f"environment {env!r} is not defined in {source} (defined: {known}); add it under "
                          f"`environments:` or drop --env")
    settings = (envs[env] or {}).get("set") or {}
    base: dict[str, Any] = {}
    if not isinstance(settings, dict):
        raise ConfigError(f"environments.{env}.set in {source} must map dotted keys to values, e.g. "
                          "{name: churn-staging, serving.route_prefix: /staging}")
    for key, value in settings.items():
        if str(key).split(".")[0] in ("environments", "environment"):
            raise ConfigError(f"environments.{env}.set.{key}: an environment cannot change the environments")
        base[str(key)] = _get_path(doc, str(key))
        _set_path(doc, str(key), value, f"environments.{env}.set.{key}")
    doc["environment"], doc["environment_base"] = env, base


_DEFAULT = "__default__"  # the key was absent: the default applies


def _get_path(doc: dict[str, Any], key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _DEFAULT
        node = node[part]
    return copy.deepcopy(node)


def for_environment(cfg: Config, env: str) -> Config:
    """The config of another environment of the same file: ``cfg``'s environment undone, then ``env``'s applied."""
    doc = cfg.model_dump(mode="json")
    for key, value in cfg.environment_base.items():
        parts = key.split(".")
        if value == _DEFAULT:
            node = doc
            for part in parts[:-1]:
                node = node.get(part, {})
            node.pop(parts[-1], None)
        else:
            _set_path(doc, key, value, key)
    doc["environment"], doc["environment_base"] = None, {}
    return config_from_dict(doc, [], source=f"environment {env!r} of {cfg.name!r}", env=env)


def _set_path(doc: dict[str, Any], key: str, value: Any, what: str) -> None:
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{what}: empty key segment; write e.g. train.epochs")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _apply_override(doc: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=3")
    key, raw = override.split("=", 1)
    if not all(key.strip().split(".")):
        raise ConfigError(f"--set {override!r}: empty key segment; write e.g. --set train.epochs=3")
    # YAML parsing gives numbers, booleans, lists and null their natural types ("3" -> 3, "[1,2]" -> list).
    _set_path(doc, key, load_bounded(raw, f"--set {key}") if raw.strip() else "", f"--set {key}")


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {path}: unknown key; check the spelling (see `raymlops config schema`)")
            continue
        allowed = ""
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"; allowed: {ctx['expected']}"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  - {path}: {e['msg']}{shown}{allowed}")
    return "\n".join(lines)


def config_from_dict(doc: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "<dict>",
                     env: str | None = None) -> Config:
    """Validate a config document (after the environment's and the ``--set`` overrides, and ``${ENV}``)."""
    doc = copy.deepcopy(doc)
    if env is not None:
        # The environment's settings come first and --set wins; the environments may themselves come from --set.
        probe = copy.deepcopy(doc)
        for override in overrides:
            _apply_override(probe, override)
        _apply_environment(doc, probe.get("environments"), env, source)
    for override in overrides:
        _apply_override(doc, override)
    webhook_secret = ((doc.get("notifications") or {}).get("webhook_secret_env")
                      if isinstance(doc.get("notifications"), dict) else None)
    secret_vars = _SECRET_VARS + ((webhook_secret,) if isinstance(webhook_secret, str) else ())
    doc = _interpolate(doc, "", secret_vars)
    try:
        return Config.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                env: str | None = None) -> Config:
    """Load and validate a YAML config. ``path=None`` gives the embedded defaults (plus overrides).

    ``env`` picks one of ``environments``: its ``set`` overrides apply first, then ``overrides``.
    """
    if path is None:
        return config_from_dict({}, overrides, source="embedded defaults", env=env)
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)  # never more: load_bounded refuses anything over the limit
        # Over the limit the cut may split a character: that is reported as the size, not as bad UTF-8.
        text = raw.decode("utf-8", "replace" if len(raw) > MAX_TEXT_BYTES else "strict")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass a path like configs/churn.yaml") from None
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read: {err.strerror}") from None
    # Bounded: a config may come from less-trusted hands, and an alias bomb must fail here, not in validation.
    doc = load_bounded(text, f"config file {p}") or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections (name:, data:, ...), not {type(doc).__name__}")
    return config_from_dict(doc, overrides, source=str(p), env=env)


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the whole config (``raymlops config schema``)."""
    return Config.model_json_schema()
