"""Every chart of every report stays inside its panel, has axes with ticks and gridlines, and its labels do not
overlap (geometry read back from the SVG itself; the browser test renders the same pages in Chromium)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pyarrow as pa
import pytest

from raymlops.control.monitor import MonitorResult
from raymlops.core.chart import nice_ticks, text_width, thin, time_ticks
from raymlops.core.drift import DriftResult
from raymlops.core.live import VersionHealth
from raymlops.core.monitor_report import render_monitor_report
from raymlops.core.report_html import render_report
from raymlops.core.schema import infer_schema
from raymlops.core.sketches import profile_table, reference_edges
from raymlops.core.validation import validate

NS = "{http://www.w3.org/2000/svg}"
T0 = 1_780_000_000.0


# ------------------------------------------------------------------------------------------ pages to check
def _health(version: str, role: str, k: int, quality: float) -> VersionHealth:
    drift = [DriftResult("monthly_charges", "psi", 0.05 * (k + 1), 0.2, k > 2),
             DriftResult("a_feature_with_a_very_long_name_indeed", "psi", 9.0, 0.2, True),
             DriftResult("plan", "linf", 0.02, 0.1, False)]
    return VersionHealth(version, role, 100 + k, k, float(k) * 3.5, 3.0, 9.0 + 40 * k, 100 + k, 40, "r2",
                         quality, 0.8, [d.to_dict() for d in drift], [d.feature for d in drift if d.drifted], "")


def monitor_page(n: int = 40, span_s: float = 2 * 86400) -> str:
    """Passes over two days (many time labels), a negative quality (r2), and a rolled-back version."""
    passes = []
    for k in range(n):
        at = T0 + span_s * k / (n - 1)
        versions = {"3": _health("3", "champion", k, 0.5 - 0.04 * k), "4": _health("4", "canary", k, -0.3 + 0.01 * k)}
        if k > n // 2:
            versions["4"] = _health("4", "rolled_back", k, 0.1)
        passes.append(MonitorResult(at=at, window_start=at - 3600, window_end=at, versions=versions, champion="3",
                                    drift=[], drift_reference="v3", quality=None, report_uri=None))
    timeline = [(T0 - 600, {"3": 100.0}), (T0 + 3600, {"3": 95.0, "4": 5.0}), (T0 + 7200, {"3": 75.0, "4": 25.0}),
                (T0 + span_s / 2, {"3": 100.0})]
    return render_monitor_report(passes, timeline, title="churn: monitor", window=(T0, T0 + span_s),
                                 drift_reference="v3", refresh_s=30)


def validation_page() -> str:
    rng = np.random.default_rng(0)
    n = 2000

    def table(shift: float) -> pa.Table:
        return pa.table({"x": rng.normal(shift, 1.0, n), "big": rng.normal(1e7, 1e6, n),
                         "cat": [f"category-{i % 40}" for i in range(n)], "y": rng.integers(0, 2, n)})

    ref = profile_table(table(0.0), categorical={"y"})
    cur = profile_table(table(0.7), categorical={"y"}, edges=reference_edges(ref, 10))
    schema = infer_schema(ref, name="t", task="binary", label="y", timestamp=None, id_columns=[])
    return render_report(validate(schema, ref, cur), ref, cur, title="check")


PAGES = {"monitor": monitor_page, "validation": validation_page}


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", page, flags=re.S)]


# -------------------------------------------------------------------------------------------- geometry
def _num(el: ET.Element, key: str, default: float = 0.0) -> float:
    return float(el.get(key, default))


def _inherited(el: ET.Element, parents: dict, key: str, default: str) -> str:
    while el is not None:
        if el.get(key) is not None:
            return el.get(key)
        el = parents.get(el)
    return default


def _rotate(x: float, y: float, transform: str | None) -> tuple[float, float]:
    m = re.match(r"rotate\(([-\d.]+) ([-\d.]+) ([-\d.]+)\)", transform or "")
    if not m:
        return x, y
    a, cx, cy = math.radians(float(m[1])), float(m[2]), float(m[3])
    dx, dy = x - cx, y - cy
    return cx + dx * math.cos(a) - dy * math.sin(a), cy + dx * math.sin(a) + dy * math.cos(a)


def shown(el: ET.Element) -> str:
    """The text a text element shows (its tooltip ``<title>`` left out)."""
    return (el.text or "") + "".join(c.tail or "" for c in el)


def text_box(el: ET.Element, parents: dict) -> tuple[float, float, float, float]:
    """Estimated (x0, y0, x1, y1) of a text element, rotation included."""
    size = float(_inherited(el, parents, "font-size", "16"))
    width = text_width(shown(el), size)
    anchor = _inherited(el, parents, "text-anchor", "start")
    x, y = _num(el, "x"), _num(el, "y")
    x0 = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
    corners = [_rotate(cx, cy, el.get("transform")) for cx in (x0, x0 + width) for cy in (y - size * 0.8, y + size * 0.2)]
    return (min(c[0] for c in corners), min(c[1] for c in corners), max(c[0] for c in corners),
            max(c[1] for c in corners))


def _angle(el: ET.Element) -> float:
    m = re.match(r"rotate\(([-\d.]+)", el.get("transform") or "")
    return float(m[1]) if m else 0.0


def overlap(a: ET.Element, b: ET.Element, parents: dict) -> bool:
    """Whether two labels overlap: compared along their own baseline when both are turned the same way."""
    if _angle(a) != _angle(b) or _angle(a) == 0:
        ba, bb = text_box(a, parents), text_box(b, parents)
    else:  # parallel rotated labels: their boxes in the frame of their baseline
        turn = -math.radians(_angle(a))

        def box(el):
            size = float(_inherited(el, parents, "font-size", "16"))
            width = text_width(shown(el), size)
            x, y = _num(el, "x"), _num(el, "y")
            u, v = x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)
            anchor = _inherited(el, parents, "text-anchor", "start")
            u0 = {"start": u, "middle": u - width / 2, "end": u - width}[anchor]
            return u0, v - size * 0.8, u0 + width, v + size * 0.2

        ba, bb = box(a), box(b)
    return min(ba[2], bb[2]) - max(ba[0], bb[0]) > 0.5 and min(ba[3], bb[3]) - max(ba[1], bb[1]) > 0.5


def drawn_points(svg: ET.Element) -> list[tuple[str, float, float]]:
    """Every coordinate a chart draws at (marks, lines, text corners), tagged with the element's name."""
    parents = {c: p for p in svg.iter() for c in p}
    out = []
    for el in svg.iter():
        tag = el.tag.removeprefix(NS)
        if tag == "line":
            out += [(tag, _num(el, "x1"), _num(el, "y1")), (tag, _num(el, "x2"), _num(el, "y2"))]
        elif tag == "rect":
            x, y = _num(el, "x"), _num(el, "y")
            out += [(tag, x, y), (tag, x + _num(el, "width"), y + _num(el, "height"))]
        elif tag == "circle":
            r = _num(el, "r")
            out += [(tag, _num(el, "cx") - r, _num(el, "cy") - r), (tag, _num(el, "cx") + r, _num(el, "cy") + r)]
        elif tag in ("polyline", "polygon"):
            out += [(tag, float(a), float(b)) for a, b in (p.split(",") for p in el.get("points").split())]
        elif tag == "text":
            x0, y0, x1, y1 = text_box(el, parents)
            out += [(f"text {shown(el)!r}", x0, y0), (f"text {shown(el)!r}", x1, y1)]
    return out


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_chart_is_drawn_inside_its_panel_and_scales_to_it(name):
    charts = svgs(PAGES[name]())
    assert charts
    for svg in charts:
        assert svg.get("width") == "100%" and svg.get("preserveAspectRatio") == "xMidYMid meet", svg.attrib
        _, _, w, h = (float(v) for v in svg.get("viewBox").split())
        outside = [(what, round(x, 1), round(y, 1)) for what, x, y in drawn_points(svg)
                   if not (-0.5 <= x <= w + 0.5 and -0.5 <= y <= h + 0.5)]
        assert not outside, f"{svg.get('aria-label')}: drawn outside its {w}x{h} panel: {outside[:5]}"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_chart_has_ticks_and_gridlines_and_no_overlapping_labels(name):
    for svg in svgs(PAGES[name]()):
        label = svg.get("aria-label")
        parents = {c: p for p in svg.iter() for c in p}
        groups = {g.get("class"): g for g in svg.iter(f"{NS}g") if g.get("class")}
        assert len(groups["grid"].findall(f"{NS}line")) >= 2, label
        ticks = [g for cls, g in groups.items() if cls in ("x-ticks", "y-ticks")]
        assert ticks and all(len(g.findall(f"{NS}text")) >= 2 for g in ticks), label
        texts = list(svg.iter(f"{NS}text"))
        for i, a in enumerate(texts):
            for b in texts[i + 1:]:
                assert not overlap(a, b, parents), f"{label}: {shown(a)!r} overlaps {shown(b)!r}"


def test_time_charts_have_time_ticks_with_the_date_and_value_ticks_below_zero():
    charts = {s.get("aria-label"): s for s in svgs(monitor_page())}
    quality = charts["online quality: r2"]
    x_labels = [shown(t) for t in quality.find(f"{NS}g[@class='x-ticks']")]
    y_labels = [shown(t) for t in quality.find(f"{NS}g[@class='y-ticks']")]
    assert len(x_labels) >= 3 and re.match(r"\d\d-\d\d", x_labels[0]), x_labels  # the first label has the date
    assert any(v.startswith("-") for v in y_labels), y_labels  # negative r2 is drawn, not clipped at 0


def test_a_rolled_back_version_is_shown_as_such_and_latest_refreshes():
    page = monitor_page()
    assert "v4 (rolled back)" in page and "<td>rolled back</td>" in page and "(other)" not in page
    assert '<meta http-equiv="refresh" content="30">' in page
    quiet = render_monitor_report([], [])
    assert "http-equiv" not in quiet  # stamped pages (refresh_s=None) do not reload


# --------------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 0.037), (-0.42, 0.5), (3, 3), (0, 1234.5), (1e-9, 2e-9), (-5, -1)])
def test_nice_ticks_cover_the_range_with_round_steps(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 8
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    mantissa = round(steps.pop() / 10 ** math.floor(math.log10(ticks[1] - ticks[0])), 6)
    assert mantissa in (1, 2, 2.5, 5)


@pytest.mark.parametrize("span", [5, 90, 3600, 6 * 3600, 2 * 86400, 40 * 86400])
def test_time_ticks_fit_their_width_and_are_round(span):
    ticks = time_ticks(T0, T0 + span, 500)
    assert 2 <= len(ticks) and all(T0 <= t <= T0 + span for t, _, _ in ticks)
    assert sum(text_width(f"{day} {clock}", 9) + 4 for _, clock, day in ticks) <= 500
    step = ticks[1][0] - ticks[0][0]
    assert all(t % step == 0 for t, _, _ in ticks)


def test_thin_keeps_labels_apart_and_inside():
    keep = thin([0, 10, 20, 30, 100], [12, 12, 12, 12, 12], lo=0, hi=104)
    assert keep == [1, 3]  # x=0 and x=100 would leave the panel; x=20 would touch x=10
    assert thin([5, 50], [8, 8], lo=0, hi=100) == [0, 1]
