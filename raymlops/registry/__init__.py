"""The model registry and run metadata: the only part of raymlops that talks to MLflow.

``raymlops.registry.models`` registers model packages (``raymlops.model.package``) as MLflow model versions and
moves the ``challenger`` / ``champion`` / ``previous`` aliases. ``raymlops.registry.tracking`` records pipeline
runs, steps and lineage.
"""
