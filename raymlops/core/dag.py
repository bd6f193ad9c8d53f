"""Pipeline graph checks and ordering (pure).

A node is a step: its name, the outputs it declares and its inputs, each a reference to another step's output
written ``"step.output"`` (or ``"step"`` when that step has exactly one output).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from raymlops.errors import PipelineError

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Node:
    """One step of a graph: ``inputs`` maps a parameter to ``"step.output"`` or ``"step"``."""

    name: str
    outputs: tuple[str, ...] = ("out",)
    inputs: Mapping[str, str] = field(default_factory=dict)


def check_name(name: str, what: str) -> None:
    """Raise PipelineError unless ``name`` can be a step/output name (it appears in paths and references)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PipelineError(
            f"{what} {name!r} is not a valid name: use letters, digits, '_' and '-', starting with a letter "
            "or '_' (a dot separates step and output in references, so it cannot appear in a name)"
        )


def resolve_inputs(nodes: Sequence[Node]) -> dict[str, dict[str, tuple[str, str]]]:
    """Check names and references; return ``{step: {param: (upstream step, output)}}`` in declaration order.

    Raises PipelineError naming the step, the input and what it refers to when a reference is unknown.
    """
    by_name: dict[str, Node] = {}
    for node in nodes:
        check_name(node.name, "step name")
        if node.name in by_name:
            raise PipelineError(f"two steps are named {node.name!r}; give each Step a unique name=")
        by_name[node.name] = node
    resolved: dict[str, dict[str, tuple[str, str]]] = {}
    for node in nodes:
        edges: dict[str, tuple[str, str]] = {}
        for param, ref in node.inputs.items():
            edges[param] = _resolve_ref(node.name, param, ref, by_name)
        resolved[node.name] = edges
    return resolved


def _resolve_ref(step: str, param: str, ref: str, by_name: Mapping[str, Node]) -> tuple[str, str]:
    where = f"step {step!r} input {param!r}"
    if not isinstance(ref, str) or not ref:
        raise PipelineError(f"{where} must be a reference like 'other_step.output', got {ref!r}")
    up_name, _, output = ref.partition(".")
    upstream = by_name.get(up_name)
    if upstream is None:
        raise PipelineError(
            f"{where} refers to {ref!r}, but there is no step {up_name!r}; known steps: {sorted(by_name)}"
        )
    if not output:
        if len(upstream.outputs) != 1:
            raise PipelineError(
                f"{where} refers to step {up_name!r}, which has several outputs {list(upstream.outputs)}; "
                f"write '{up_name}.<output>'"
            )
        return up_name, upstream.outputs[0]
    if output not in upstream.outputs:
        raise PipelineError(
            f"{where} refers to {ref!r}, but step {up_name!r} has no output {output!r}; "
            f"its outputs are {list(upstream.outputs)}"
        )
    return up_name, output


def topological_order(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Order nodes so each comes after those it depends on; ties keep the mapping's order.

    ``deps`` maps each node to the nodes it depends on. Raises PipelineError naming an unknown dependency or a
    cycle (``a -> b -> a``, in data-flow direction).
    """
    graph = {name: list(dict.fromkeys(ds)) for name, ds in deps.items()}
    for name, ds in graph.items():
        for d in ds:
            if d not in graph:
                raise PipelineError(
                    f"step {name!r} depends on unknown step {d!r}; known steps: {sorted(graph)}"
                )
    position = {name: i for i, name in enumerate(graph)}
    waiting = {name: len(ds) for name, ds in graph.items()}
    dependents: dict[str, list[str]] = {name: [] for name in graph}
    for name, ds in graph.items():
        for d in ds:
            dependents[d].append(name)
    ready = [name for name in graph if waiting[name] == 0]
    order: list[str] = []
    while ready:
        # Lowest declaration index first, so the order is stable and matches how the user wrote the pipeline.
        ready.sort(key=position.__getitem__)
        name = ready.pop(0)
        order.append(name)
        for child in dependents[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(graph):
        cycle = _find_cycle({n: ds for n, ds in graph.items() if n not in set(order)})
        raise PipelineError(
            f"the pipeline has a cycle: {' -> '.join(cycle)}; remove one of these inputs so data flows one way"
        )
    return order


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str]:
    # Every remaining node lies on or leads to a cycle, so walking dependencies must revisit a node.
    start = next(iter(graph))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in graph[node] if d in graph)
    cycle = path[seen[node] :] + [node]
    return list(reversed(cycle))  # dependency walk runs upstream; show the flow of data instead


def descendants(deps: Mapping[str, Iterable[str]], roots: Iterable[str]) -> set[str]:
    """Every node downstream of ``roots`` (excluding the roots themselves unless reachable from another root)."""
    dependents: dict[str, set[str]] = {name: set() for name in deps}
    for name, ds in deps.items():
        for d in ds:
            dependents.setdefault(d, set()).add(name)
    out: set[str] = set()
    stack = [child for r in roots for child in dependents.get(r, ())]
    while stack:
        name = stack.pop()
        if name not in out:
            out.add(name)
            stack.extend(dependents.get(name, ()))
    return out
