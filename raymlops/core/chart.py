"""Axes for the reports' inline SVG charts: nice ticks, time ticks, gridlines, labels that do not overlap.

Every chart is drawn in its own coordinate box (``viewBox``) and scaled to its panel's width by the browser
(``svg_open``), so a chart never draws past its panel however narrow the page. Label widths are estimated from the
character count (``text_width``): a report has no script to measure text, and the estimate errs wide.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["GRID", "TICK", "axis_x", "axis_y", "nice_ticks", "svg_open", "text_width", "thin", "time_ticks"]

GRID, TICK = "#e6e6e6", "#666"
_CHAR_EM = 0.62  # average advance of a system-ui character, in ems; digits are ~0.55
_TIME_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)


def svg_open(width: float, height: float, label: str) -> str:
    """An ``<svg>`` that scales to its container's width (never wider than ``width``), keeping its aspect."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}" width="100%" '
            f'preserveAspectRatio="xMidYMid meet" style="max-width:{width:g}px" role="img" '
            f'aria-label="{escape(label)}">')


def text_width(text: str, font_size: float) -> float:
    """Estimated width of ``text`` at ``font_size`` px (errs wide, so labels spaced by it do not touch)."""
    return len(text) * font_size * _CHAR_EM


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round values (1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``; first <= lo,
    last >= hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(hi) * 0.5 or 1.0
        lo, hi = lo - pad if lo < 0 else max(0.0, lo - pad), hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_text(value: float, step: float) -> str:
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    shown = f"{step:.6f}".rstrip("0").rstrip(".")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return f"{value:.{decimals}f}"


def time_ticks(t0: float, t1: float, width_px: float, font_size: float = 9.0) -> list[tuple[float, str, str]]:
    """Round instants (UTC) in ``[t0, t1]`` as ``(t, clock, day)``, few enough that their labels, each with its
    date, fit side by side in ``width_px``."""
    if not t1 > t0:
        return [(t0, _clock(t0, "%H:%M:%S"), _clock(t0, "%m-%d"))]
    fmt = "%H:%M:%S" if t1 - t0 < 600 else "%H:%M"
    longest = text_width("00-00 " + _clock(t0, fmt), font_size) + 6
    fits = max(2, int(width_px // longest))
    step = next((s for s in _TIME_STEPS_S if (t1 - t0) / s <= fits - 1), _TIME_STEPS_S[-1])
    if step >= 86400:
        fmt = ""
    out = []
    t = float(math.ceil(t0 / step) * step)
    while t <= t1 + 1e-6:
        out.append((t, _clock(t, fmt) if fmt else "", _clock(t, "%m-%d")))
        t += step
    return out


def _clock(t: float, fmt: str) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(fmt)


def thin(positions: Sequence[float], widths: Sequence[float], lo: float, hi: float, gap: float = 4.0) -> list[int]:
    """Indices of labels to keep, left to right, so that no two centred labels overlap and none leaves
    ``[lo, hi]``."""
    kept: list[int] = []
    right = -math.inf
    for i, (x, w) in enumerate(zip(positions, widths, strict=True)):
        if x - w / 2 < lo or x + w / 2 > hi:
            continue
        if x - w / 2 >= right + gap:
            kept.append(i)
            right = x + w / 2
    return kept


def axis_y(ticks: Sequence[float], y: Callable[[float], float], left: float, right: float,
           label: Callable[[float], str] | None = None, font_size: float = 9.0) -> str:
    """Horizontal gridlines at ``ticks`` across ``[left, right]``, with their values right-aligned left of it."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    text = label or (lambda v: _tick_text(v, step))
    lines = "".join(f'<line x1="{left:.1f}" y1="{y(v):.1f}" x2="{right:.1f}" y2="{y(v):.1f}"/>' for v in ticks)
    labels = "".join(f'<text x="{left - 4:.1f}" y="{y(v) + font_size / 3:.1f}">{escape(text(v))}</text>'
                     for v in ticks)
    return (f'<g class="grid" stroke="{GRID}">{lines}</g><g class="y-ticks" font-size="{font_size:g}" '
            f'fill="{TICK}" text-anchor="end">{labels}</g>')


def axis_x(ticks: Sequence[tuple[float, str, str]], x: Callable[[float], float], top: float, bottom: float,
           lo: float, hi: float, font_size: float = 9.0) -> str:
    """Vertical gridlines at the ``time_ticks`` from ``top`` to ``bottom``, with tick marks and centred labels
    under ``bottom``. Labels that would overlap or leave ``[lo, hi]`` are left out (their gridline stays); the
    first label shown, and each one where the day changes, carries the date."""
    xs = [x(t) for t, _, _ in ticks]
    keep = thin(xs, [text_width(f"{day} {clock}".strip(), font_size) for _, clock, day in ticks], lo, hi)
    texts, day_shown = {}, None
    for i in keep:
        _, clock, day = ticks[i]
        texts[i] = f"{day} {clock}".strip() if day != day_shown else clock
        day_shown = day
    lines = "".join(f'<line x1="{p:.1f}" y1="{top:.1f}" x2="{p:.1f}" y2="{bottom:.1f}"/>' for p in xs)
    marks = "".join(f'<line x1="{xs[i]:.1f}" y1="{bottom:.1f}" x2="{xs[i]:.1f}" y2="{bottom + 3:.1f}"/>'
                    for i in keep)
    labels = "".join(f'<text x="{xs[i]:.1f}" y="{bottom + 4 + font_size:.1f}">{escape(texts[i])}</text>'
                     for i in keep)
    return (f'<g class="grid" stroke="{GRID}">{lines}</g><g class="x-marks" stroke="{TICK}">{marks}</g>'
            f'<g class="x-ticks" font-size="{font_size:g}" fill="{TICK}" text-anchor="middle">{labels}</g>')
