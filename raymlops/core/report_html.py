"""Self-contained HTML page for a validation report: no external JS or CSS, histograms as inline SVG."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

import numpy as np

from raymlops.core.chart import axis_y, nice_ticks, svg_open
from raymlops.core.drift import numeric_bins
from raymlops.core.sketches import (
    CategoricalSketch,
    DatasetProfile,
    FeatureProfile,
    NumericSketch,
    numeric_edges,
)
from raymlops.core.validation import Anomaly, ValidationReport

__all__ = ["CSS", "fmt", "render_report"]

_MAX_CATEGORIES = 20
_COLORS = {"OK": "#1b7f3b", "DRIFT": "#b26a00", "STOP": "#b3261e"}
_REF, _CUR = "#5b8def", "#f08c3a"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.4rem} h2{font-size:1.15rem;margin-top:2rem} h3{font-size:1rem;margin:.2rem 0}
.banner{color:#fff;padding:1rem 1.2rem;border-radius:6px;margin:1rem 0}
.banner b{font-size:1.3rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
td:last-child{overflow-wrap:anywhere}
th{background:#f4f4f4} tr.drifted td{background:#fff3e0}
code{font-size:.85rem;word-break:break-word}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(380px,100%),1fr));gap:1rem}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(min(520px,100%),1fr))}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem;min-width:0;overflow:hidden}
svg{display:block;max-width:100%;height:auto}
.muted{color:#666;font-size:.85rem}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 .8rem;vertical-align:middle}
"""


def fmt(value: Any) -> str:
    """A value as report text: a dash for None, 4 significant digits for floats, JSON for dicts and lists."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _shares(counts: Any) -> list[float]:
    a = np.asarray(counts, dtype=np.float64)
    return (a / a.sum()).tolist() if a.sum() > 0 else a.tolist()


def _bars_svg(labels: list[str], ref: list[float] | None, cur: list[float], tips: list[str]) -> str:
    """Grouped bars (reference beside current) of shares per bin/category, on a share axis with gridlines."""
    n = max(len(labels), 1)
    width, height, top, bottom, left, right = 360, 200, 10, 54, 40, 6
    plot_h = height - top - bottom
    slot = (width - left - right) / n
    ticks = nice_ticks(0.0, max([*cur, *(ref or []), 1e-12]), 4)
    peak = ticks[-1]

    def y(share: float) -> float:
        return top + plot_h - plot_h * share / peak

    parts = [
        svg_open(width, height, "distribution"),
        axis_y(ticks, y, left, width - right, label=lambda v: f"{v:.{_share_decimals(ticks)}%}", font_size=9),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#999"/>',
    ]
    series = [(ref, _REF, "reference")] if ref is not None else []
    series.append((cur, _CUR, "current"))
    bar_w = slot * 0.8 / len(series)
    # Rotated labels need ~14 px between neighbours (a 9 px line at 40°): show every k-th one on crowded axes.
    every = max(1, math.ceil(14 / slot))
    names = []
    for i, label in enumerate(labels):
        x0 = left + i * slot + slot * 0.1
        for k, (values, color, who) in enumerate(series):
            h = plot_h * values[i] / peak
            parts.append(
                f'<rect x="{x0 + k * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{escape(who)} {escape(tips[i])}: {values[i]:.2%}</title></rect>'
            )
        if i % every:
            continue
        short = label if len(label) <= 10 else label[:9] + "…"
        cx = x0 + slot * 0.4
        names.append(f'<text x="{cx:.1f}" y="{top + plot_h + 10}" transform="rotate(-40 {cx:.1f} '
                     f'{top + plot_h + 10})">{escape(short)}<title>{escape(label)}</title></text>')
    parts.append(f'<g class="names" font-size="9" fill="#444" text-anchor="end">{"".join(names)}</g></svg>')
    return "".join(parts)


def _share_decimals(ticks: list[float]) -> int:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return max(0, min(4, -math.floor(math.log10(step * 100) + 1e-9)))


def _numeric_chart(ref: NumericSketch | None, cur: NumericSketch) -> str:
    if ref is not None and ref.count:
        edges, p, q = numeric_bins(ref, cur)
        ref_shares: list[float] | None = _shares(p)
    else:
        edges = cur.edges if cur.hist is not None else numeric_edges(cur, 10)
        if edges is None:
            return '<p class="muted">no finite values to plot</p>'
        q = np.asarray(cur.hist, dtype=np.float64) if cur.hist is not None else cur.histogram(edges)
        ref_shares = None
    cur_shares = _shares(q) if cur.count else [0.0] * (len(edges) - 1)
    labels = [f"≤{e:.3g}" for e in edges[1:-1]] + [f">{edges[-2]:.3g}" if len(edges) > 2 else "all"]
    tips = [f"bin {i + 1}" + (f" (≤ {edges[i + 1]:.6g})" if i < len(edges) - 2 else "") for i in range(len(labels))]
    return _bars_svg(labels, ref_shares, cur_shares, tips)


def _categorical_chart(ref: CategoricalSketch | None, cur: CategoricalSketch) -> str:
    p = ref.frequencies() if ref is not None else {}
    q = cur.frequencies()
    ranked = sorted(set(p) | set(q), key=lambda k: (-(p.get(k, 0.0) + q.get(k, 0.0)), k))
    if not ranked:
        return '<p class="muted">no non-null values to plot</p>'
    shown, rest = ranked[:_MAX_CATEGORIES], ranked[_MAX_CATEGORIES:]
    labels = list(shown)
    ref_shares = [p.get(k, 0.0) for k in shown]
    cur_shares = [q.get(k, 0.0) for k in shown]
    if rest:
        labels.append(f"({len(rest)} other)")
        ref_shares.append(sum(p.get(k, 0.0) for k in rest))
        cur_shares.append(sum(q.get(k, 0.0) for k in rest))
    return _bars_svg(labels, ref_shares if ref is not None else None, cur_shares, labels)


def _stats(fp: FeatureProfile, rows: int) -> str:
    s = fp.sketch
    null_pct = 100.0 * s.nulls / rows if rows else 0.0
    text = f"{s.count:,} values, {s.nulls:,} null ({null_pct:.1f}%)"
    if isinstance(s, NumericSketch):
        if s.nonfinite:
            text += f", {s.nonfinite:,} NaN/Inf"
        if s.count:
            text += f"; min {s.min:.4g}, mean {s.mean:.4g}, std {s.std:.4g}, max {s.max:.4g}"
    else:
        text += f"; {len(s.counts):,} categories"
    return escape(text)


def _feature_card(name: str, reference: DatasetProfile | None, current: DatasetProfile) -> str:
    cur = current.features[name]
    ref = reference.features.get(name) if reference is not None else None
    if ref is not None and ref.kind != cur.kind:
        ref = None
    if isinstance(cur.sketch, NumericSketch):
        chart = _numeric_chart(ref.sketch if ref else None, cur.sketch)
    else:
        chart = _categorical_chart(ref.sketch if ref else None, cur.sketch)
    ref_line = f'<div class="muted">reference: {_stats(ref, reference.rows)}</div>' if ref else ""
    return (
        f'<div class="card"><h3>{escape(name)}</h3><div class="muted">{escape(cur.kind)} · {escape(cur.dtype)}</div>'
        f'<div class="muted">current: {_stats(cur, current.rows)}</div>{ref_line}{chart}</div>'
    )


def _anomaly_table(anomalies: list[Anomaly]) -> list[str]:
    out = ["<table><tr><th>feature</th><th>kind</th><th>observed</th><th>expected</th><th>what to do</th></tr>"]
    for a in anomalies:
        out.append(
            f"<tr><td>{escape(a.feature)}</td><td>{escape(a.kind)}</td><td><code>{escape(fmt(a.observed))}"
            f"</code></td><td><code>{escape(fmt(a.expected))}</code></td><td>{escape(a.message)}</td></tr>"
        )
    out.append("</table>")
    return out


def render_report(
    report: ValidationReport,
    reference: DatasetProfile | None,
    current: DatasetProfile,
    title: str = "raymlops data validation",
) -> str:
    """A self-contained HTML page: decision banner, anomaly and drift tables, reference-vs-current histograms."""
    color = _COLORS.get(report.decision, "#444")
    out = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="banner" style="background:{color}"><b>{escape(report.decision)}</b>'
        f"<p>{escape(report.summary())}</p></div>",
        f"<p>Schema: {escape(report.schema_name)} v{report.schema_version} · drift reference: "
        f"{escape(report.reference.describe() if report.reference else 'none')}</p>",
        f"<h2>Schema anomalies ({len(report.anomalies)})</h2>",
    ]
    if report.anomalies:
        out.extend(_anomaly_table(report.anomalies))
    else:
        out.append("<p>None: the data matches the schema.</p>")
    if report.value_anomalies:
        out.append(f"<h2>Value anomalies ({len(report.value_anomalies)})</h2><p class=\"muted\">Values outside a "
                   "range recorded from accepted data (not enforced): reported with the drift, not a stop.</p>")
        out.extend(_anomaly_table(report.value_anomalies))

    out.append("<h2>Drift</h2>")
    if report.reference_rows is None:
        out.append("<p>No reference statistics: drift was not checked.</p>")
    else:
        out.append(
            f"<p class=\"muted\">{len(report.drifted)} of {len(report.drift)} features drifted, against "
            f"{report.reference_rows:,} reference rows"
            f"{' of ' + escape(report.reference.describe()) if report.reference else ''}.</p>"
            "<table><tr><th>feature</th><th>metric</th><th>value</th><th>threshold</th><th>drifted</th>"
            "<th>note</th></tr>"
        )
        for d in report.drift:
            row_class = ' class="drifted"' if d.drifted else ""
            out.append(
                f"<tr{row_class}><td>{escape(d.feature)}</td><td>{escape(d.metric)}"
                f"</td><td>{escape(fmt(d.value))}</td><td>{escape(fmt(d.threshold))}</td>"
                f"<td>{'yes' if d.drifted else 'no'}</td><td>{escape(d.note)}</td></tr>"
            )
        out.append("</table>")

    names = [d.feature for d in report.drift if d.feature in current.features]
    names += [n for n in current.features if n not in names]
    out.append(
        '<h2>Distributions</h2><div class="legend muted">'
        + (f'<span style="background:{_REF}"></span>reference' if reference is not None else "")
        + f'<span style="background:{_CUR}"></span>current (share of non-null values)</div><div class="grid">'
    )
    out.extend(_feature_card(n, reference, current) for n in names)
    out.append("</div></body></html>")
    return "\n".join(out)
