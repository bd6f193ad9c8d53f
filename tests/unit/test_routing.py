"""Traffic splitting: weight validation, sticky / consistent / monotone hashing, random split, shadow sampling."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymlops.core.routing import RoutingTable, pick_version, should_shadow, validate_weights
from raymlops.errors import ServingError


def keys(n: int, salt: str = "user") -> list[str]:
    return [f"{salt}-{i}" for i in range(n)]


def assign(table: RoutingTable, ks: list[str]) -> dict[str, str]:
    return {k: pick_version(table, k, 0.0) for k in ks}


def scaled(canary_pct: float, others: dict[str, float]) -> dict[str, float]:
    """The canary at ``canary_pct``; the other versions share the rest in their fixed ratios."""
    total = sum(others.values())
    return {"canary": canary_pct, **{v: (100.0 - canary_pct) * w / total for v, w in others.items()}}


# ---------------------------------------------------------------------------------------------- weights
def test_validate_weights_accepts_and_normalises():
    assert validate_weights({"1": 90, "2": 10.0}, ["1", "2", "3"]) == {"1": 90.0, "2": 10.0}
    assert validate_weights({"1": 100, "2": 0}, ["1", "2"]) == {"1": 100.0, "2": 0.0}
    assert validate_weights({"a": 100 / 3, "b": 100 / 3, "c": 100 / 3}, "abc") == pytest.approx(
        {"a": 33.333333, "b": 33.333333, "c": 33.333333})


@pytest.mark.parametrize(("weights", "needle"), [
    ({"1": 90, "9": 10}, "'9'"),  # unknown version
    ({"1": 110, "2": -10}, "'2'"),  # negative
    ({"1": math.nan, "2": 100}, "'1'"),
    ({"1": math.inf, "2": 0}, "'1'"),
    ({"1": 90, "2": 9}, "sum to 99"),
    ({"1": 90, "2": 10.001}, "sum to 100.001"),
    ({"1": 0, "2": 0}, "every weight is 0"),
    ({}, "no traffic weights"),
    ({"1": True, "2": 99}, "'1'"),
    ({"1": "90", "2": 10}, "not a number"),
])
def test_validate_weights_refuses_with_the_version_and_the_fix(weights, needle):
    with pytest.raises(ServingError) as err:
        validate_weights(weights, ["1", "2"])
    assert needle in str(err.value)


def test_routing_table_checks_shadow():
    with pytest.raises(ServingError, match="no shadow version"):
        RoutingTable({"1": 100}, shadow_pct=10)
    with pytest.raises(ServingError, match="between 0 and 100"):
        RoutingTable({"1": 100}, shadow="2", shadow_pct=150)
    with pytest.raises(ServingError, match="also has weight"):
        RoutingTable({"1": 90, "2": 10}, shadow="2", shadow_pct=5)
    with pytest.raises(ServingError, match="sum to"):
        RoutingTable({"1": 50})
    table = RoutingTable({"1": 100, "2": 0}, shadow="2", shadow_pct=5)
    assert table.versions == ["1"] and table.shadow_pct == 5.0


# ------------------------------------------------------------------------------------------ sticky split
@settings(max_examples=15, deadline=None)
@given(salt=st.text(min_size=1, max_size=12))
def test_ninety_ten_split_over_random_keys_is_within_two_points(salt):
    table = RoutingTable({"champion": 90, "canary": 10})
    counts = Counter(assign(table, keys(5000, salt)).values())
    assert abs(counts["canary"] / 5000 - 0.10) <= 0.02


def test_three_versions_split_by_weight():
    table = RoutingTable({"a": 50, "b": 30, "c": 20, "z": 0})
    counts = Counter(assign(table, keys(10_000)).values())
    assert set(counts) == {"a", "b", "c"}  # a zero weight gets no keys
    for version, pct in (("a", 50), ("b", 30), ("c", 20)):
        assert abs(counts[version] / 10_000 - pct / 100) <= 0.02


def test_same_key_same_version_while_weights_are_unchanged():
    ks = keys(1000)
    first = assign(RoutingTable({"1": 70, "2": 30}), ks)
    # a new table with the same weights (another replica, a reconfigure) and repeated picks agree
    again = RoutingTable({"2": 30, "1": 70})
    for _ in range(3):
        assert assign(again, ks) == first
    assert set(first.values()) == {"1", "2"}


def test_assignment_is_stable_across_processes():
    script = ("import json; from raymlops.core.routing import RoutingTable, pick_version; "
              "t = RoutingTable({'1': 60, '2': 25, '3': 15}); "
              "print(json.dumps([pick_version(t, f'k{i}', 0.0) for i in range(300)]))")
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}, check=True).stdout
        for seed in ("1", "2")
    ]
    table = RoutingTable({"1": 60, "2": 25, "3": 15})
    assert json.loads(runs[0]) == json.loads(runs[1]) == [pick_version(table, f"k{i}", 0.0) for i in range(300)]


def test_rising_canary_only_moves_keys_toward_it():
    ks = keys(1000)
    before = assign(RoutingTable({"champion": 95, "canary": 5}), ks)
    for pct in (10, 25, 50, 100):
        after = assign(RoutingTable({"champion": 100 - pct, "canary": pct}), ks)
        moved = [k for k in ks if after[k] != before[k]]
        assert all(after[k] == "canary" for k in moved), pct
        assert abs(sum(v == "canary" for v in after.values()) / 1000 - pct / 100) <= 0.04
        before = after
    assert set(before.values()) == {"canary"}


def test_rising_canary_among_three_versions_never_moves_keys_between_the_others():
    ks = keys(3000)
    others = {"champion": 3.0, "previous": 1.0}  # the others keep a 3:1 ratio
    before = assign(RoutingTable(scaled(5, others)), ks)
    for pct in (10, 25, 50):
        after = assign(RoutingTable(scaled(pct, others)), ks)
        assert all(after[k] == "canary" for k in ks if after[k] != before[k]), pct
        before = after


@settings(max_examples=60, deadline=None)
@given(
    others=st.lists(st.floats(0.5, 50), min_size=1, max_size=4),
    low=st.floats(0.5, 60),
    factor=st.floats(1.01, 1.6),
)
def test_monotone_for_any_weights(others, low, factor):
    other = {f"v{i}": w for i, w in enumerate(others)}
    high = min(low * factor, 99.0)
    ks = keys(400, "prop")
    before = assign(RoutingTable(scaled(low, other)), ks)
    after = assign(RoutingTable(scaled(high, other)), ks)
    assert all(after[k] == "canary" for k in ks if after[k] != before[k])
    # and a falling canary only gives keys back
    assert all(before[k] != "canary" or after[k] == "canary" for k in ks)


def test_routing_key_ignores_u_and_handles_odd_keys():
    table = RoutingTable({"1": 50, "2": 50})
    for key in ("", "ünïcødé", "\udcff", "x" * 10_000):
        assert pick_version(table, key, 0.0) == pick_version(table, key, 0.999) in {"1", "2"}


# --------------------------------------------------------------------------------------------- no key
def test_without_key_u_splits_by_cumulative_weight():
    table = RoutingTable({"a": 90, "b": 10})
    picks = Counter(pick_version(table, None, (i + 0.5) / 1000) for i in range(1000))
    assert picks == {"a": 900, "b": 100}
    assert pick_version(table, None, 0.0) == "a"
    assert pick_version(table, None, 0.8999) == "a"
    assert pick_version(table, None, 0.9) == "b"
    assert pick_version(table, None, 1.0) == "b"  # out of range at the top still returns a version


@given(u=st.floats(0.0, 1.0, exclude_max=True))
def test_zero_weight_version_is_never_picked(u):
    table = RoutingTable({"a": 0, "b": 60, "c": 0, "d": 40, "e": 0})
    assert pick_version(table, None, u) in {"b", "d"}
    assert pick_version(table, f"k{u}", u) in {"b", "d"}


def test_single_live_version_always_wins():
    table = RoutingTable({"only": 100, "idle": 0})
    assert {pick_version(table, k, 0.3) for k in keys(50)} == {"only"}


# ---------------------------------------------------------------------------------------------- shadow
def test_should_shadow_by_u_and_by_request_id():
    table = RoutingTable({"1": 100, "2": 0}, shadow="2", shadow_pct=20)
    assert should_shadow(table, "r", 0.19) and not should_shadow(table, "r", 0.2)
    hashed = [should_shadow(table, f"req-{i}") for i in range(5000)]
    assert abs(sum(hashed) / 5000 - 0.20) <= 0.02
    assert hashed == [should_shadow(table, f"req-{i}") for i in range(5000)]  # stable per request id
    assert not any(should_shadow(RoutingTable({"1": 100}), "r", u) for u in (0.0, 0.5))
    assert all(should_shadow(RoutingTable({"1": 100, "2": 0}, shadow="2", shadow_pct=100), "r", u)
               for u in (0.0, 0.999))
