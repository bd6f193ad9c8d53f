"""Pipeline graph: order, cycles and unknown references are reported by name."""

from __future__ import annotations

import pytest

from raymlops.core.dag import Node, descendants, resolve_inputs, topological_order
from raymlops.errors import PipelineError


def test_order_respects_dependencies_and_keeps_declaration_order_for_ties():
    deps = {
        "report": ["train", "stats"],
        "train": ["prep"],
        "stats": ["ingest"],
        "prep": ["ingest"],
        "ingest": [],
    }
    order = topological_order(deps)
    assert order == ["ingest", "stats", "prep", "train", "report"]
    for name, ds in deps.items():
        assert all(order.index(d) < order.index(name) for d in ds)


def test_independent_steps_keep_the_order_they_were_declared_in():
    assert topological_order({"c": [], "a": [], "b": []}) == ["c", "a", "b"]


def test_cycle_is_named_in_data_flow_order():
    with pytest.raises(PipelineError) as err:
        topological_order({"ingest": [], "a": ["ingest", "c"], "b": ["a"], "c": ["b"], "d": ["c"]})
    message = str(err.value)
    assert "cycle" in message
    cycle = message.split("cycle: ")[1].split(";")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and sorted(set(cycle)) == ["a", "b", "c"]
    # each arrow is a real edge: upstream -> downstream
    deps = {"a": ["c"], "b": ["a"], "c": ["b"]}
    assert all(up in deps[down] for up, down in zip(cycle, cycle[1:], strict=False))


def test_self_dependency_is_a_cycle():
    with pytest.raises(PipelineError, match="a -> a"):
        topological_order({"a": ["a"]})


def test_unknown_dependency_is_named():
    with pytest.raises(PipelineError, match="'train' depends on unknown step 'prep'"):
        topological_order({"train": ["prep"]})


def test_resolve_inputs_expands_single_output_shorthand():
    nodes = [
        Node("ingest", ("data",)),
        Node("train", ("model", "metrics"), {"data": "ingest", "x": "ingest.data"}),
    ]
    assert resolve_inputs(nodes) == {
        "ingest": {},
        "train": {"data": ("ingest", "data"), "x": ("ingest", "data")},
    }


def test_unknown_step_in_input_is_named_with_the_input():
    with pytest.raises(PipelineError) as err:
        resolve_inputs([Node("ingest"), Node("train", inputs={"data": "prepare.out"})])
    assert "step 'train' input 'data'" in str(err.value)
    assert "no step 'prepare'" in str(err.value) and "ingest" in str(err.value)


def test_unknown_output_is_named_with_the_outputs_that_exist():
    with pytest.raises(PipelineError, match="no output 'dataset'.*\\['data'\\]"):
        resolve_inputs([Node("ingest", ("data",)), Node("train", inputs={"x": "ingest.dataset"})])


def test_shorthand_needs_a_single_output():
    with pytest.raises(PipelineError, match="several outputs"):
        resolve_inputs([Node("split", ("train", "test")), Node("fit", inputs={"x": "split"})])


@pytest.mark.parametrize("name", ["has.dot", "", "1abc", "a b", "a/b"])
def test_bad_step_names_are_refused(name):
    with pytest.raises(PipelineError, match="not a valid name"):
        resolve_inputs([Node(name)])


def test_duplicate_step_names_are_refused():
    with pytest.raises(PipelineError, match="two steps are named 'a'"):
        resolve_inputs([Node("a"), Node("a")])


def test_descendants():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d", "b"]}
    assert descendants(deps, ["b"]) == {"c", "e"}
    assert descendants(deps, ["d"]) == {"e"}
