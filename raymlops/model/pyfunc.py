"""MLflow's pyfunc loader module for raymlops packages: what the ``MLmodel`` of a registered version names.

``mlflow.pyfunc.load_model("models:/churn@champion")`` and ``mlflow models serve`` import this module and call
``_load_pyfunc(path)`` on the downloaded package directory. It loads through ``load_package``, the one loading path
of evaluation, batch prediction and serving: the manifest, every file's sha256 and the signature (when a signing key
is configured) are verified; the digest, when the ``MLmodel`` or the caller's ``model_config`` names one
(``expected_digest``), must match; nothing is unpickled. The model may only be a built-in one (``mlp``,
``xgboost``): a package naming a user factory is refused before anything is imported, because no config of the
loading side says which factories to trust here (and ``model_config`` may come from the ``MLmodel`` in storage).

``predict`` takes a pandas DataFrame (or a dict of columns, or a list of dicts), checks it with the serving
validator (``raymlops.core.model_io``), and returns a DataFrame with the HTTP API's prediction fields. No MLflow
import here: MLflow calls in, and ``raymlops.registry`` is what talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raymlops.core.model_io import frame_request, pyfunc_validator
from raymlops.core.package_trust import PackagePolicy
from raymlops.core.schema import Schema
from raymlops.errors import PackageError
from raymlops.model.package import LoadedModel, load_package

__all__ = ["DIGEST_KEY", "PyfuncModel"]

DIGEST_KEY = "expected_digest"  # in model_config: the package digest recorded at registration


class PyfuncModel:
    """A loaded package as MLflow's pyfunc sees it: ``predict(frame) -> DataFrame`` of prediction fields."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._validator = pyfunc_validator(Schema.from_yaml(model.schema_yaml, f"schema.yaml in {model.uri}"))

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Predictions for the rows of ``model_input``, one row each, columns named as in the HTTP API.

        ``DataError`` (naming row and field) for what the HTTP API refuses with 422.
        """
        import pandas as pd

        parsed = frame_request(model_input, self._validator)
        return pd.DataFrame(self.model.predict_decoded(parsed.columns))

    def get_raw_model(self) -> LoadedModel:
        """The raymlops ``LoadedModel`` (what ``mlflow.pyfunc.PyFuncModel.get_raw_model()`` returns)."""
        return self.model


def _load_pyfunc(path: str, model_config: Mapping[str, Any] | None = None) -> PyfuncModel:
    """MLflow's entry point: load the package at ``path`` (a local copy of the registered version's source)."""
    expected = (model_config or {}).get(DIGEST_KEY) or None
    if expected is not None and not isinstance(expected, str):
        raise PackageError(f"model_config {DIGEST_KEY} must be a package digest (sha256 hex text), got "
                           f"{type(expected).__name__}; pass the version's raymlops.package_digest tag")
    try:
        model = load_package(path, expected, policy=PackagePolicy())
    except PackageError as err:
        raise PackageError(f"{err} (loaded through mlflow.pyfunc, which runs built-in models only; load packages of "
                           "user factories with raymlops, whose config lists model.allowed_factories)") from None
    return PyfuncModel(model)
