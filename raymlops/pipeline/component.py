"""Components, steps and pipelines: how a user declares the work (execution lives in ``runner``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from raymlops import storage
from raymlops.core import dag
from raymlops.core.fingerprint import DigestMode, digest_tree, source_hash
from raymlops.errors import PipelineError

Executor = Literal["task", "driver"]


@dataclass(frozen=True)
class Artifact:
    """A pointer to data: where it is, what it is, its digest. The data itself never travels through Ray.

    ``kind`` is free-form; the built-in pipeline uses dataset, statistics, schema, anomalies, transform, model,
    evaluation and package. An empty ``digest`` is filled in (content mode) when a step returns the artifact.
    """

    uri: str
    kind: str
    digest: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "kind": self.kind, "digest": self.digest, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Artifact:
        return cls(
            uri=doc["uri"], kind=doc["kind"], digest=doc.get("digest", ""), metadata=doc.get("metadata", {})
        )


def digest_uri(uri: str, mode: DigestMode = "content") -> str:
    """Digest of a file or directory at ``uri``; ``mode='stat'`` reads no data (see raymlops.core.fingerprint)."""
    fs, path = storage.resolve(uri)
    return digest_tree(fs, path, mode)


@dataclass
class StepContext:
    """What a running component sees: where to write, the config, and ways to report back to the driver.

    Write outputs under ``output_dir`` (``{storage_uri}/runs/{run_id}/{step}/``). The runner clears it before the
    step runs, deletes it if the step fails, and records the step complete only after it returns.
    """

    step: str
    pipeline: str
    run_id: str
    storage_uri: str
    output_dir: str
    fingerprint: str
    config: Any = None
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_files: list[str] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    _sink: Any = field(default=None, repr=False)  # Ray actor handle when the step runs as a task
    _echo: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    _pending: list[Any] = field(default_factory=list, repr=False, compare=False)

    def progress(self, message: str) -> None:
        """Print a progress line on the driver's console, prefixed with the step name."""
        line = f"[{self.step}] {message}"
        if self._sink is not None:
            # Fire and forget: the runner waits for these before it reads the step's result, so order holds.
            self._pending.append(self._sink.put.remote(line))
        elif self._echo is not None:
            self._echo(line)

    def path(self, *parts: str) -> str:
        """URI of ``parts`` under the step's output directory."""
        return storage.join(self.output_dir, *parts)

    def artifact(
        self,
        relpath: str,
        kind: str,
        metadata: Mapping[str, Any] | None = None,
        digest: DigestMode = "content",
    ) -> Artifact:
        """Describe a file or directory the step has written under its output directory (digest computed now)."""
        uri = self.path(relpath)
        return Artifact(uri=uri, kind=kind, digest=digest_uri(uri, digest), metadata=dict(metadata or {}))

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics for this step's MLflow run (logged by the driver when the step ends)."""
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, relpath: str) -> None:
        """Copy a small file (report, statistics JSON) from the output directory into MLflow when the step ends."""
        self.mlflow_files.append(relpath)

    def log_trials(self, trials: Sequence[Mapping[str, Any]]) -> None:
        """Tune trials (``{"name", "params", "metrics", "status"}``) to log as child runs of this step's run."""
        self.trials.extend(dict(t) for t in trials)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_echo"] = None  # the driver's print function stays on the driver
        state["_pending"] = []
        return state


@dataclass(frozen=True, eq=False)
class Component:
    """A function ``fn(ctx, **inputs_and_params) -> {output: Artifact | value}`` with its resources.

    Calling the component calls the function directly (handy in unit tests).
    """

    fn: Callable[..., Any]
    name: str
    version: str = "1"
    num_cpus: float = 0.25
    num_gpus: float = 0
    memory: int | None = None
    runtime_env: Mapping[str, Any] | None = None
    outputs: tuple[str, ...] = ("out",)
    executor: Executor = "task"
    cache: bool = True
    config_keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = f"component {self.name!r}"
        if not self.name or any(c in self.name for c in "/\\\n"):
            raise PipelineError(f"{where}: the name must be non-empty and free of slashes")
        if self.executor not in ("task", "driver"):
            raise PipelineError(f"{where}: executor must be 'task' or 'driver', got {self.executor!r}")
        if self.executor == "driver" and self.runtime_env:
            raise PipelineError(
                f"{where}: runtime_env applies to executor='task' only; a driver step runs in the driver's "
                "environment (set it on the job: `ray job submit --runtime-env ...`, or pass it to the trainer)"
            )
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise PipelineError(f"{where}: num_cpus and num_gpus must be >= 0")
        if not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise PipelineError(
                f"{where}: outputs must be a non-empty tuple of distinct names, got {self.outputs}"
            )
        for out in self.outputs:
            dag.check_name(out, f"{where} output")
        params = list(inspect.signature(self.fn).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise PipelineError(f"{where}: the function must take the StepContext as its first argument")

    def __call__(self, ctx: StepContext, **kwargs: Any) -> Any:
        return self.fn(ctx, **kwargs)

    @functools.cached_property
    def code_hash(self) -> str:
        return source_hash(self.fn)

    def accepts(self) -> tuple[set[str], set[str], bool]:
        """(all keyword names, required names, takes **kwargs) of the function, after the context."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        required = {p.name for p in params if p.name in names and p.default is p.empty}
        return names, required, any(p.kind == p.VAR_KEYWORD for p in params)


# Two call shapes, typed for editors: `@component` hands back a Component, `@component(...)` a decorator.
@overload
def component(fn: Callable[..., Any], /) -> Component: ...


@overload
def component(
    fn: None = None,
    *,
    name: str | None = None,
    version: str = "1",
    num_cpus: float = 0.25,
    num_gpus: float = 0,
    memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    outputs: Sequence[str] = ("out",),
    executor: Executor = "task",
    cache: bool = True,
    config_keys: Sequence[str] | None = None,
) -> Callable[[Callable[..., Any]], Component]: ...


def component(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    version: str = "1",
    num_cpus: float = 0.25,
    num_gpus: float = 0,
    memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    outputs: Sequence[str] = ("out",),
    executor: Executor = "task",
    cache: bool = True,
    config_keys: Sequence[str] | None = None,
) -> Component | Callable[[Callable[..., Any]], Component]:
    """Make a pipeline component from ``fn(ctx, **inputs_and_params)``; usable as ``@component`` or ``@component(...)``.

    ``executor='task'`` runs the function as a Ray task with ``num_cpus``/``num_gpus``/``memory`` (bytes) and
    ``runtime_env``; ``'driver'`` runs it in the driver process (steps that start Ray Train or Tune).
    ``cache=False`` always re-runs (e.g. reading a landing directory whose files change under one URI).
    ``config_keys`` names the config sections the function reads (``("train", "data.split")``): only those enter
    the fingerprint; ``None`` means the whole config does (safe), ``()`` none of it.
    """

    def wrap(f: Callable[..., Any]) -> Component:
        comp = Component(
            fn=f,
            name=name or f.__name__,
            version=str(version),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            runtime_env=dict(runtime_env) if runtime_env else None,
            outputs=tuple(outputs),
            executor=executor,
            cache=cache,
            config_keys=tuple(config_keys) if config_keys is not None else None,
        )
        # Frozen dataclass: set the wrapper attributes directly so help() and inspect.signature() see the function.
        object.__setattr__(comp, "__wrapped__", f)
        object.__setattr__(comp, "__doc__", f.__doc__)
        return comp

    return wrap(fn) if fn is not None else wrap


@dataclass(frozen=True)
class Step:
    """One use of a component in a pipeline.

    ``inputs`` maps a function argument to another step's output (``"step.output"``, or ``"step"`` for a
    single-output step) or to an external ``Artifact``; ``params`` holds JSON-safe literal arguments.
    Give an external artifact its digest (``digest_uri(uri, "stat")`` for large data): without one the driver
    reads all of it to compute a content digest.
    """

    component: Component
    name: str = ""
    inputs: Mapping[str, str | Artifact] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.component, Component):
            raise PipelineError(f"Step({self.component!r}): decorate the function with @component first")
        object.__setattr__(self, "name", self.name or self.component.name)
        dag.check_name(self.name, "step name")
        both = set(self.inputs) & set(self.params)
        if both:
            raise PipelineError(
                f"step {self.name!r}: {sorted(both)} given both as inputs and as params; keep one"
            )
        names, _, var_kw = self.component.accepts()
        unknown = sorted((set(self.inputs) | set(self.params)) - names) if not var_kw else []
        if unknown:
            raise PipelineError(
                f"step {self.name!r}: {unknown} are not arguments of {self.component.name}(); "
                f"it accepts {sorted(names)}"
            )


class Pipeline:
    """A named graph of steps; checked on construction (names, references, cycles)."""

    def __init__(self, name: str, steps: Sequence[Step]):
        dag.check_name(name, "pipeline name")
        self.name = name
        self.steps: dict[str, Step] = {}
        nodes = []
        for step in steps:
            refs = {k: v for k, v in step.inputs.items() if not isinstance(v, Artifact)}
            nodes.append(dag.Node(step.name, step.component.outputs, refs))
            self.steps[step.name] = step
        self.edges = dag.resolve_inputs(nodes)
        self.deps = {name: [up for up, _ in edges.values()] for name, edges in self.edges.items()}
        self.order = dag.topological_order(self.deps)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={self.order})"
