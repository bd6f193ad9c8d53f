"""MLflow's descriptor of a model package, so that MLflow's own tools load registered versions.

``write_mlmodel(package_uri, digest)`` adds to a verified package directory what ``mlflow.pyfunc.save_model`` writes
for a loader module: ``MLmodel`` (pyfunc flavour, ``loader_module: raymlops.model.pyfunc``, the signature, the
package digest as ``model_config.expected_digest``), ``input_example.json``, ``serving_input_example.json``,
``requirements.txt``, ``python_env.yaml`` and ``conda.yaml``. Nothing is pickled and no code is copied: MLflow
imports the installed raymlops, whose loader verifies the package and builds only built-in models.

The signature comes from the package's frozen schema and transform (``raymlops.core.model_io``); the input example
is made from them too, never from data rows. ``MLmodel`` is written last: its presence marks the descriptor complete,
and an existing one is kept (a package and its descriptor are written once).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

from raymlops import storage
from raymlops.core.model_io import input_colspecs, input_example, output_colspecs
from raymlops.core.schema import Schema
from raymlops.errors import RegistryError

__all__ = ["LOADER_MODULE", "MLMODEL", "has_mlmodel", "write_mlmodel"]

MLMODEL = "MLmodel"
LOADER_MODULE = "raymlops.model.pyfunc"
DIGEST_METADATA = "raymlops.package_digest"


def has_mlmodel(package_uri: str) -> bool:
    """Whether the package directory already carries an ``MLmodel``."""
    return storage.exists(storage.join(package_uri, MLMODEL))


def write_mlmodel(package_uri: str, digest: str) -> bool:
    """Verify the package against ``digest`` and write its MLflow descriptor beside it; False when one is there.

    ``PackageError`` when the package is incomplete, tampered with or not ``digest``; ``RegistryError`` when
    MLflow cannot write the descriptor.
    """
    # Imported here: the registry is read by commands that never load a model, and the package module imports torch.
    from raymlops.model.package import describe_package

    if has_mlmodel(package_uri):
        return False
    desc = describe_package(package_uri, digest)
    schema = Schema.from_yaml(desc.schema_yaml, f"schema.yaml in {package_uri}")
    with tempfile.TemporaryDirectory(prefix="raymlops-mlmodel-") as tmp:
        local = os.path.join(tmp, "model")
        _save(local, schema, desc, digest)
        names = sorted(os.listdir(local), key=lambda n: (n == MLMODEL, n))  # MLmodel last
        for name in names:
            with open(os.path.join(local, name), "rb") as f:
                storage.atomic_write_bytes(storage.join(package_uri, name), f.read())
    return True


def _save(local: str, schema: Schema, desc, digest: str) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types import Schema as ColumnsSchema

    from raymlops.model.pyfunc import DIGEST_KEY

    classes = list(desc.transform.classes or [])
    signature = ModelSignature(
        inputs=ColumnsSchema.from_json(json.dumps(input_colspecs(schema))),
        outputs=ColumnsSchema.from_json(json.dumps(output_colspecs(desc.transform.task, classes))),
    )
    try:
        with _quiet("mlflow.pyfunc", "mlflow.models"):
            mlflow.pyfunc.save_model(
                local,
                loader_module=LOADER_MODULE,
                signature=signature,
                input_example=pd.DataFrame(input_example(schema, desc.transform)),
                # Explicit: inferring them would load the model in a subprocess.
                pip_requirements=_requirements(desc.model),
                model_config={DIGEST_KEY: digest},
                metadata={DIGEST_METADATA: digest, "raymlops.model": desc.model},
            )
    except MlflowException as err:
        raise RegistryError(f"MLflow could not write the MLmodel of the package at {desc.uri}: {err.message}; "
                            "check that the installed mlflow matches the one raymlops declares") from None


def _requirements(model: str) -> list[str]:
    try:
        own = f"raymlops=={metadata.version('raymlops')}"
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        own = "raymlops"
    return [own, "xgboost"] if model == "xgboost" else [own]


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """MLflow logs an INFO line per save ("Validating input example..."): not news on a pipeline's console."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
