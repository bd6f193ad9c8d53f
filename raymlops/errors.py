"""Typed errors. Every message says what went wrong *and* what to do about it.

The CLI maps these to exit codes: ``GateError`` subclasses -> 3, ``UsageError``-like (config) -> 2,
anything else -> 1.
"""

from __future__ import annotations


class RaymlopsError(Exception):
    """Base class of every error raymlops raises on purpose."""

    exit_code = 1


class ConfigError(RaymlopsError):
    """The configuration (file, override or environment) is invalid."""

    exit_code = 2


class DataError(RaymlopsError):
    """Input data cannot be read or used: unreadable URI, corrupt file, empty dataset, missing column."""

    exit_code = 1


class SnapshotChangedError(DataError):
    """The data files changed between validation and a later step: the validated snapshot is not what would be read."""


class SchemaError(RaymlopsError):
    """A schema artifact is missing, unreadable or inconsistent."""

    exit_code = 2


class GateError(RaymlopsError):
    """A quality gate blocked the pipeline (exit code 3)."""

    exit_code = 3


class DataValidationError(GateError):
    """Data validation found schema skew: the pipeline must not train on this data."""

    def __init__(self, message: str, report_uri: str | None = None):
        super().__init__(message)
        self.report_uri = report_uri


class ModelValidationError(GateError):
    """The model was not blessed: a validation gate failed."""


class RegistryError(RaymlopsError):
    """The model registry refused or failed an operation."""


class PackageError(RaymlopsError):
    """A model package is incomplete, tampered with (digest mismatch) or cannot be loaded."""


class ServingError(RaymlopsError):
    """The serving application cannot be built or reconfigured."""


class PipelineError(RaymlopsError):
    """A pipeline definition or run is invalid (cycle, unknown input, unknown run id to resume)."""


class ControllerError(RaymlopsError):
    """The controller is not running, not reachable, or refused a command (the message says why)."""

    exit_code = 2


class ConcurrentUpdateError(RaymlopsError):
    """A shared document (deployments.json, the controller's state or lease) changed under a read-modify-write."""


class FeatureStoreError(RaymlopsError):
    """A feature definition, feature source, retrieval or online store cannot be used as asked."""


class FeatureStoreUnavailable(FeatureStoreError):
    """The online store did not answer in time (timeout, refused connection, lock): transient, retry later.

    Serving answers it 503 with ``Retry-After``; ``retry_after_s`` is the hint it sends.
    """

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s
