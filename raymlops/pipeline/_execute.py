"""The part of a pipeline run that happens where a step executes: a Ray worker, or the driver.

``execute`` never raises for the step's own errors: it returns an ``Outcome`` with the message, the traceback
and (if it pickles) the exception, so a GateError reaches the driver intact and Ray prints no task traceback.
"""

from __future__ import annotations

import pickle
import signal
import socket
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raymlops import storage
from raymlops.core.fingerprint import canonical_json
from raymlops.errors import DataError, GateError, PipelineError
from raymlops.pipeline.component import Artifact, Component, StepContext, digest_uri

# Files a step asks to copy into MLflow travel back through Ray's object store: keep them report-sized.
MAX_MLFLOW_FILE_BYTES = 10 * 1024 * 1024


@dataclass
class Outcome:
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    host: str = ""
    error: str | None = None
    traceback: str | None = None
    gate: bool = False
    exception: BaseException | None = None


def execute(comp: Component, ctx: StepContext, kwargs: dict[str, Any]) -> Outcome:
    host = socket.gethostname()
    try:
        _reset_dir(ctx.output_dir)
        result = comp.fn(ctx, **kwargs)
        outputs = collect_outputs(comp, ctx.step, result)
        files = _read_small_files(ctx)
    except Exception as exc:
        _remove_dir(ctx.output_dir)
        return Outcome(
            ok=False,
            host=host,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            gate=isinstance(exc, GateError),
            exception=exc if _picklable(exc) else None,
        )
    finally:
        if ctx._pending:  # progress lines still on their way to the driver: deliver them before the result
            import ray

            try:
                ray.get(ctx._pending)
            except Exception:  # progress is best effort; the step's result is not
                pass
    return Outcome(
        ok=True, outputs=outputs, metrics=dict(ctx.metrics), files=files, trials=ctx.trials, host=host
    )


def run_here(comp: Component, ctx: StepContext, kwargs: dict[str, Any]) -> Outcome:
    # Ray Train and Tune replace the SIGINT handler and never put it back; later steps need the runner's Ctrl-C.
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        return execute(comp, ctx, kwargs)
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def collect_outputs(comp: Component, step: str, result: Any) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        if len(comp.outputs) != 1:
            raise PipelineError(
                f"step {step!r} returned {type(result).__name__}; {comp.name}() declares outputs "
                f"{list(comp.outputs)}, so return a dict with exactly those keys"
            )
        result = {comp.outputs[0]: result}
    missing, extra = set(comp.outputs) - set(result), set(result) - set(comp.outputs)
    if missing or extra:
        raise PipelineError(
            f"step {step!r} returned outputs {sorted(result)} but {comp.name}() declares {list(comp.outputs)}"
            f"{f'; missing {sorted(missing)}' if missing else ''}{f'; undeclared {sorted(extra)}' if extra else ''}"
        )
    outputs: dict[str, Any] = {}
    for name in comp.outputs:
        value = result[name]
        if isinstance(value, Artifact) and not value.digest:
            try:
                value = Artifact(value.uri, value.kind, digest_uri(value.uri), value.metadata)
            except DataError:
                raise PipelineError(
                    f"step {step!r} output {name!r} points to {value.uri}, which does not exist; "
                    "write the data before returning its Artifact"
                ) from None
        elif not isinstance(value, Artifact):
            canonical_json(value, f"step {step!r} output {name!r}")
        outputs[name] = value
    return outputs


def _read_small_files(ctx: StepContext) -> dict[str, bytes]:
    files = {}
    for rel in ctx.mlflow_files:
        data = storage.read_bytes(ctx.path(rel))
        if len(data) <= MAX_MLFLOW_FILE_BYTES:
            files[rel] = data
        else:
            ctx.progress(f"{rel} is {len(data) >> 20} MiB: left in storage, not copied to MLflow")
    return files


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
        return True
    except Exception:
        return False


def _reset_dir(uri: str) -> None:
    fs, path = storage.resolve(uri)
    if storage.exists(uri):
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)


def _remove_dir(uri: str) -> None:
    try:
        fs, path = storage.resolve(uri)
        fs.delete_dir(path)
    except Exception:  # best effort: the run record already says the step did not complete
        pass


class ProgressSink:
    """Collects progress lines from step tasks; the driver drains it while it waits (a 0-CPU Ray actor)."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def put(self, line: str) -> None:
        self._lines.append(line)

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines
