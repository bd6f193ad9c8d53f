"""Self-contained HTML page of the monitor: no external JS or CSS, every plot inline SVG.

Plots: live input drift per feature and version (value over threshold, so metrics with different scales share
an axis), canary against champion over the monitor passes (error rate, p99 latency, online quality), and the
traffic weights per version over time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Protocol

from raymlops.core.chart import GRID, TICK, axis_x, axis_y, nice_ticks, svg_open, time_ticks
from raymlops.core.live import VersionHealth
from raymlops.core.report_html import CSS, fmt

__all__ = ["MonitorPass", "render_monitor_report"]

_PALETTE = ("#5b8def", "#f08c3a", "#1b7f3b", "#b3261e", "#8e44ad", "#16a2b8", "#7f6000", "#555555")
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 560, 210, 48, 14, 10, 30
_DRIFT_CAP = 3.0  # bars longer than 3x the threshold are drawn at 3x (the value is in the tooltip and table)
_FONT = 9.0


class MonitorPass(Protocol):
    """What the report reads from one monitor pass (``raymlops.control.monitor.MonitorResult`` fits)."""

    at: float
    champion: str | None
    versions: Mapping[str, VersionHealth]


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%m-%d %H:%M:%S")


def _key(version: object) -> str:
    text = str(version).strip()
    return text[1:] if text[:1] in "vV" and text[1:].isdigit() else text  # "v3" and "3" name one version


def _role(role: str) -> str:
    return role.replace("_", " ")  # "rolled_back" reads "rolled back"


def _colors(versions: Sequence[str]) -> dict[str, str]:
    return {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(versions)}


def _time_chart(series: Mapping[str, Sequence[tuple[float, float | None]]], colors: Mapping[str, str],
                label: str, unit: str, *, step: bool = False, t_end: float | None = None) -> str:
    """Lines over time, one per series; a None value breaks its line. ``step`` holds each value until the next.

    Axes: round value ticks (negative values included) and round UTC time ticks, with gridlines; every mark is
    drawn inside the plot area."""
    points = [(t, y) for pts in series.values() for t, y in pts if y is not None and math.isfinite(y)]
    if not points:
        return f'<p class="muted">{escape(label)}: no data yet</p>'
    t0 = min(t for t, _ in points)
    t1 = max([t for t, _ in points] + ([t_end] if t_end is not None else []))
    ticks = nice_ticks(min(0.0, min(y for _, y in points)), max(y for _, y in points))
    y0, y1 = ticks[0], ticks[-1]
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    pad = 6.0  # the first and last points sit inside the plot, not on its edges

    def x(t: float) -> float:
        return _LEFT + pad + ((pw - 2 * pad) * (t - t0) / (t1 - t0) if t1 > t0 else (pw - 2 * pad) / 2)

    def y(v: float) -> float:
        return _TOP + ph - ph * (min(max(v, y0), y1) - y0) / (y1 - y0)

    out = [
        svg_open(_W, _H, label),
        axis_y(ticks, y, _LEFT, _W - _RIGHT, font_size=_FONT),
        axis_x(time_ticks(t0, t1, pw - 2 * pad, _FONT), x, _TOP, _TOP + ph, 0.0, _W, font_size=_FONT),
        f'<line x1="{_LEFT}" y1="{_TOP + ph}" x2="{_W - _RIGHT}" y2="{_TOP + ph}" stroke="#999"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + ph}" stroke="#999"/>',
    ]
    for name, pts in series.items():
        color = colors.get(name, "#444")
        pts = sorted(pts, key=lambda p: p[0])
        segments: list[list[tuple[float, float]]] = [[]]
        marks = []
        for i, (t, v) in enumerate(pts):
            if v is None or not math.isfinite(v):
                segments.append([])
                continue
            if step and segments[-1]:
                segments[-1].append((x(t), segments[-1][-1][1]))
            segments[-1].append((x(t), y(v)))
            if step and i == len(pts) - 1 and t_end is not None and t_end > t:
                segments[-1].append((x(t_end), y(v)))
            marks.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"><title>{escape(name)} '
                         f'{_clock(t)} UTC: {v:.4g}{escape(unit)}</title></circle>')
        for seg in segments:
            if len(seg) > 1:
                coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in seg)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        out.extend(marks)
    out.append("</svg>")
    return "".join(out)


def _drift_chart(health: VersionHealth) -> str:
    """Horizontal bars of value / threshold per feature; the dashed line at 1 is the threshold."""
    rows = [d for d in health.drift if d.get("value") is not None and d.get("threshold")]
    if not rows:
        note = health.drift_note or "no drift figures"
        return f'<p class="muted">v{escape(health.version)}: {escape(note)}</p>'
    left, bar, width, right = 130, 16, 420, 24
    bottom = _TOP + bar * len(rows)
    height = bottom + 20
    pw = width - left - right

    def x(r: float) -> float:
        return left + pw * min(max(r, 0.0), _DRIFT_CAP) / _DRIFT_CAP

    steps = [k * 0.5 for k in range(int(_DRIFT_CAP / 0.5) + 1)]
    grid = "".join(f'<line x1="{x(r):.1f}" y1="{_TOP}" x2="{x(r):.1f}" y2="{bottom}"/>' for r in steps)
    labels = "".join(f'<text x="{x(r):.1f}" y="{bottom + 12}">{r:g}×</text>' for r in steps if r == int(r))
    out = [svg_open(width, height, f"drift of v{health.version}"),
           f'<g class="grid" stroke="{GRID}">{grid}</g>',
           f'<g class="x-ticks" font-size="{_FONT:g}" fill="{TICK}" text-anchor="middle">{labels}</g>']
    names = []
    for i, d in enumerate(rows):
        ratio = float(d["value"]) / float(d["threshold"])
        top = _TOP + i * bar
        color = "#b3261e" if d.get("drifted") else "#5b8def"
        name = str(d["feature"])
        short = name if len(name) <= 18 else name[:17] + "…"
        names.append(f'<text x="{left - 4}" y="{top + bar - 5}">{escape(short)}<title>{escape(name)}</title></text>')
        out.append(f'<rect x="{left}" y="{top + 2}" width="{x(ratio) - left:.1f}" height="{bar - 4}" '
                   f'fill="{color}"><title>{escape(name)}: {escape(str(d["metric"]))} {float(d["value"]):.4g} '
                   f'(threshold {float(d["threshold"]):g})</title></rect>')
    out.append(f'<g class="names" font-size="10" fill="#444" text-anchor="end">{"".join(names)}</g>')
    out.append(f'<line x1="{x(1.0):.1f}" y1="{_TOP}" x2="{x(1.0):.1f}" y2="{bottom}" stroke="#222" '
               'stroke-dasharray="3,2"><title>threshold</title></line>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" stroke="#999"/></svg>')
    return "".join(out)


def _legend(colors: Mapping[str, str], labels: Mapping[str, str]) -> str:
    return '<div class="legend muted">' + "".join(
        f'<span style="background:{c}"></span>{escape(labels.get(v, v))}' for v, c in colors.items()) + "</div>"


def _versions_table(current: MonitorPass) -> str:
    head = ("<table><tr><th>version</th><th>role</th><th>requests</th><th>errors</th><th>error %</th>"
            "<th>p50 ms</th><th>p99 ms</th><th>rows</th><th>labels</th><th>quality</th><th>offline</th>"
            "<th>drifted features</th></tr>")
    rows = []
    for v, h in current.versions.items():
        drifted = ", ".join(h.drifted_features) or (h.drift_note or "none")
        cls = ' class="drifted"' if h.drifted_features else ""
        rows.append(
            f"<tr{cls}><td>v{escape(v)}</td><td>{escape(_role(h.role))}</td><td>{h.requests:,}</td><td>{h.errors:,}</td>"
            f"<td>{escape(fmt(h.error_rate_pct))}</td><td>{escape(fmt(h.p50_ms))}</td>"
            f"<td>{escape(fmt(h.p99_ms))}</td><td>{h.rows:,}</td><td>{h.labels:,}</td>"
            f"<td>{escape(h.quality_metric)} {escape(fmt(h.quality))}</td><td>{escape(fmt(h.offline_quality))}"
            f"</td><td>{escape(drifted)}</td></tr>")
    return head + "".join(rows) + "</table>" if rows else "<p>No version is serving or logged yet.</p>"


def _drift_table(current: MonitorPass) -> str:
    rows = []
    for v, h in current.versions.items():
        for d in h.drift:
            cls = ' class="drifted"' if d.get("drifted") else ""
            rows.append(
                f"<tr{cls}><td>v{escape(v)}</td><td>{escape(str(d['feature']))}</td><td>{escape(str(d['metric']))}"
                f"</td><td>{escape(fmt(d.get('value')))}</td><td>{escape(fmt(d.get('threshold')))}</td>"
                f"<td>{'yes' if d.get('drifted') else 'no'}</td><td>{escape(str(d.get('note', '')))}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>version</th><th>feature</th><th>metric</th><th>value</th><th>threshold</th>"
            "<th>drifted</th><th>note</th></tr>" + "".join(rows) + "</table>")


def render_monitor_report(
    passes: Sequence[MonitorPass],
    weights_timeline: Sequence[tuple[float, Mapping[str, float]]] = (),
    *,
    title: str = "raymlops monitor",
    window: tuple[float, float] | None = None,
    drift_reference: str = "",
    refresh_s: float | None = None,
) -> str:
    """The monitor page for ``passes`` (oldest first; the last one is the current pass) and the weights
    timeline ``[(t, {version: percent})]``; with ``refresh_s`` a browser reloads the page that often."""
    current = passes[-1] if passes else None
    versions = list(dict.fromkeys(
        [v for p in passes for v in p.versions] + [_key(v) for _, w in weights_timeline for v in w]))
    colors = _colors(versions)
    labels = {v: f"v{v}" + (f" ({_role(current.versions[v].role)})" if current and v in current.versions else "")
              for v in versions}
    # Only latest.html reloads itself (refresh_s): a stamped page is a record of one pass.
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if current is None:
        out.append("<p>No monitor pass yet.</p>")
    else:
        span = f"window {_clock(window[0])} – {_clock(window[1])} UTC · " if window else ""
        champ = f"champion v{current.champion}" if current.champion else "no champion"
        ref = f" · drift measured against {drift_reference}" if drift_reference else ""
        out.append(f'<p class="muted">{escape(span)}pass at {_clock(current.at)} UTC · {escape(champ)}'
                   f"{escape(ref)}</p><h2>Versions</h2>{_versions_table(current)}")
        out.append('<h2>Live input drift per feature</h2><p class="muted">value / threshold of each feature\'s '
                   'drift metric against the version\'s training reference (red: drifted)</p><div class="grid">')
        out.extend(f'<div class="card"><h3>v{escape(v)} ({escape(_role(h.role))})</h3>{_drift_chart(h)}</div>'
                   for v, h in current.versions.items())
        out.append("</div>" + _drift_table(current))
    out.append("<h2>Canary vs champion over time</h2>" + _legend(colors, labels) + '<div class="grid wide">')
    for key, name, unit in (("error_rate_pct", "error rate (%)", "%"), ("p99_ms", "p99 latency (ms)", " ms"),
                            ("quality", "online quality", "")):
        series = {v: [(p.at, getattr(p.versions[v], key)) for p in passes if v in p.versions] for v in versions}
        metric = next((p.versions[v].quality_metric for p in passes for v in p.versions), "")
        shown = f"{name}: {metric}" if key == "quality" and metric else name
        out.append(f'<div class="card"><h3>{escape(shown)}</h3>'
                   f"{_time_chart(series, colors, shown, unit)}</div>")
    out.append("</div><h2>Traffic weights</h2>" + _legend(colors, labels) + '<div class="card">')
    timeline = [(float(t), {_key(k): float(x) for k, x in w.items()})
                for t, w in sorted(weights_timeline, key=lambda p: p[0])]
    weights = {v: [(t, w.get(v, 0.0)) for t, w in timeline] for v in versions}
    t_end = current.at if current is not None else None
    out.append(_time_chart(weights, colors, "weight (%)", "%", step=True, t_end=t_end))
    out.append("</div></body></html>")
    return "\n".join(out)
