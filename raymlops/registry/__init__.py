"""Model packages and the model registry: the only part of raymlops that talks to MLflow.

``raymlops.registry.package`` writes and loads a model package (safetensors weights, fitted transform, frozen
schema, signature, metrics, and a sha256 manifest); ``load_package`` is the single loading path used by evaluation,
batch prediction and online serving. ``raymlops.registry.models`` registers packages as MLflow model versions and
moves the ``challenger`` / ``champion`` / ``previous`` aliases. ``raymlops.registry.tracking`` records pipeline
runs, steps and lineage.
"""
