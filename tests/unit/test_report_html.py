"""The HTML report is one self-contained, escaped page with a chart per feature."""

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pytest

from raymlops.core.report_html import render_report
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table, reference_edges
from raymlops.core.validation import ValidationPolicy, validate

EVIL = "<script>alert('x')</script>"


def _table(seed: int, shift: float = 0.0, evil: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = 1000
    cats = rng.choice(["a", "b", "c"], n).astype(object)
    if evil:
        cats[:50] = EVIL
    return pa.table({
        "x": rng.normal(shift, 1.0, n),
        "k": rng.integers(0, 5, n),
        "cat & <dog>": cats,
        "many": [f"v{i % 40}" for i in range(n)],
        "y": rng.integers(0, 2, n),
    })


@pytest.fixture(scope="module")
def setup():
    ref = profile_table(_table(1), categorical={"y"})
    schema = infer_schema(ref, name="t<1>", task="binary", label="y", timestamp=None, id_columns=[])
    cur = profile_table(_table(2, shift=1.0, evil=True), categorical={"y"}, edges=reference_edges(ref, 10))
    return ref, schema, cur


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_report_is_self_contained_with_tables_and_one_chart_per_feature(setup):
    ref, schema, cur = setup
    report = validate(schema, ref, cur, ValidationPolicy())
    page = render_report(report, ref, cur, title="daily <check>")
    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert not any(name in ("src", "href") for name, _ in parsed.attrs)
    assert "<title>daily &lt;check&gt;</title>" in page
    assert ">STOP<" in page and "unseen_categories" in page
    for d in report.drift:
        assert f"<td>{d.metric}</td>" in page
    assert page.count("<svg") == len(cur.features)
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)  # every chart is well-formed XML
    assert "(20 other)" in page  # long category lists are folded


def test_all_text_is_escaped(setup):
    ref, schema, cur = setup
    page = render_report(validate(schema, ref, cur), ref, cur, title="t")
    assert EVIL not in page and "&lt;script&gt;" in page
    assert "cat & <dog>" not in page and "cat &amp; &lt;dog&gt;" in page


def test_report_without_reference(setup):
    _, schema, cur = setup
    report = validate(schema, None, cur)
    page = render_report(report, None, cur, title="first data")
    assert "drift was not checked" in page
    assert page.count("<svg") == len(cur.features) and "reference</div>" not in page


def test_report_with_empty_current_data(setup):
    ref, schema, _ = setup
    empty = profile_table(_table(3).slice(0, 0), categorical={"y"})
    page = render_report(validate(schema, ref, empty), ref, empty, title="empty")
    assert "empty_dataset" in page and page.count("<svg") == len(empty.features)
    alone = render_report(validate(schema, None, empty), None, empty, title="empty")
    assert "no finite values" in alone and "no non-null values" in alone
