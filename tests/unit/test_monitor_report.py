"""The monitor's HTML report, its result type and status lines, and window reads of the logs (no Ray, no MLflow)."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq

from raymlops.control.monitor import MonitorResult, monitor_status_lines, read_window
from raymlops.control.triggers import QualitySignal
from raymlops.core.drift import DriftResult
from raymlops.core.live import VersionHealth
from raymlops.core.monitor_report import render_monitor_report
from raymlops.serve.predlog import PREDICTION_SCHEMA

_VOID = {"meta", "br", "img", "input", "link", "hr"}
T0 = 1_780_000_000.0


class _Balance(HTMLParser):
    """Checks that every non-void element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _well_formed(html: str) -> list[ET.Element]:
    parser = _Balance()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and " src=" not in html and "<link" not in html  # self-contained
    svgs = []
    rest = html
    while "<svg" in rest:
        start = rest.index("<svg")
        end = rest.index("</svg>", start) + len("</svg>")
        svgs.append(ET.fromstring(rest[start:end]))  # each plot is well-formed XML
        rest = rest[end:]
    return svgs


def _health(version: str, role: str, k: int, drifted: bool) -> VersionHealth:
    drift = [DriftResult("monthly_charges", "psi", 0.5 if drifted else 0.05, 0.2, drifted),
             DriftResult("plan", "linf", 0.02, 0.1, False), DriftResult("usage_gb", "psi", None, 0.2, False, "x")]
    return VersionHealth(version, role, 100 + k, k, float(k), 3.0, 9.0 + k, 100 + k, 40, "roc_auc",
                         0.7 + 0.01 * k, 0.8, [d.to_dict() for d in drift],
                         ["monthly_charges"] if drifted else [], "against frozen reference")


def _result(k: int) -> MonitorResult:
    versions = {"3": _health("3", "champion", k, False), "4": _health("4", "canary", 2 * k, True)}
    return MonitorResult(
        at=T0 + 60 * k, window_start=T0 + 60 * k - 3600, window_end=T0 + 60 * k, versions=versions,
        champion="3", drift=versions["3"].drift_results(), drift_reference="v3",
        quality=QualitySignal("3", "roc_auc", 0.71, 40, 0.8), report_uri=None)


def test_report_has_every_plot_and_is_well_formed():
    passes = [_result(k) for k in range(3)]
    timeline = [(T0 - 30, {"3": 100.0}), (T0 + 10, {"3": 95.0, "v4": 5.0}), (T0 + 100, {"3": 90, "4": 10})]
    html = render_monitor_report(passes, timeline, title="churn <monitor>", drift_reference="v3",
                                 window=(T0 - 3480, T0 + 120))
    svgs = _well_formed(html)
    labels = [s.get("aria-label") for s in svgs]
    assert labels == ["drift of v3", "drift of v4", "error rate (%)", "p99 latency (ms)",
                      "online quality: roc_auc", "weight (%)"]
    assert "churn &lt;monitor&gt;" in html
    assert "monthly_charges" in html and "threshold" in html
    ns = "{http://www.w3.org/2000/svg}"
    weight = svgs[-1]
    assert len(weight.findall(f"{ns}polyline")) == 2  # one step line per version
    assert len(svgs[2].findall(f"{ns}circle")) == 6  # 3 passes x 2 versions
    drift_v4 = svgs[1].findall(f"{ns}rect")
    assert [r.get("fill") for r in drift_v4] == ["#b3261e", "#5b8def"]  # drifted in red; None value left out


def test_report_of_nothing_yet_is_well_formed():
    html = render_monitor_report([])
    _well_formed(html)
    assert "No monitor pass yet" in html and "no data yet" in html
    empty = MonitorResult(T0, T0 - 60, T0, {}, None, [], "", None, None)
    html = render_monitor_report([empty], [])
    _well_formed(html)
    assert "No version is serving" in html


def test_result_round_trips_strict_json_and_status_lines():
    r = _result(2)
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = MonitorResult.from_dict(doc)
    assert back == r
    lines = monitor_status_lines(doc)
    assert lines[0].startswith("monitor ") and "window 3600s" in lines[0]
    assert any(line.split()[:2] == ["v4", "canary"] and line.endswith("monthly_charges") for line in lines)
    assert any(line.split()[:2] == ["v3", "champion"] and line.endswith("none") for line in lines)
    assert monitor_status_lines(MonitorResult(T0, T0 - 60, T0, {}, None, [], "", None, None))[-1].strip() == \
        "no version serving or logged yet"


def _part(root, day: str, ts: list[float]) -> None:
    rows = [{"request_id": f"r{t}", "row": 0, "ts": dt.datetime.fromtimestamp(t, dt.timezone.utc),
             "model_version": "1", "role": "primary", "status": "ok"} for t in ts]
    (root / f"date={day}").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), root / f"date={day}" / "part-a-000000.parquet")


def test_read_window_reads_only_overlapping_partitions(tmp_path):
    day = 86400.0
    start = 20_000 * day + 3600  # 2024-10-04 01:00 UTC
    _part(tmp_path, "2024-10-04", [start - 1, start, start + 10])
    _part(tmp_path, "2024-10-05", [start + day - 10])
    # A partition outside the window that is not even parquet: reading it would fail the test.
    (tmp_path / "date=2024-10-01").mkdir()
    (tmp_path / "date=2024-10-01" / "part-x-000000.parquet").write_text("not parquet")
    got = read_window(str(tmp_path), PREDICTION_SCHEMA, start, start + day - 5)
    assert sorted(got.column("request_id").to_pylist()) == [f"r{start}", f"r{start + 10}", f"r{start + day - 10}"]
    assert read_window(str(tmp_path / "missing"), PREDICTION_SCHEMA, start, start + 60).num_rows == 0
