"""Server-side SVG bar charts for the admin's pages (the retention dashboard, the execution console).

No JavaScript, no CDN: each chart is an ``<svg>`` with one ``<rect>`` per bar, its value in
``data-value`` and a ``<title>`` tooltip, styled by the page (``svg.chart``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: its axis label, value and tooltip."""

    label: str
    value: float
    title: str


def nice_peak(value: float) -> float:
    """The top of the axis: 2, 4, 6, 8 or 10 times a power of ten at or above ``value`` (its half is round too)."""
    if value <= 2:
        return 2
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 4, 6, 8, 10) if m * power >= value)


def bar_chart(
    bars: Sequence[Bar], *, label: str, fmt: Callable[[float], str] = lambda v: f"{v:g}", every: int = 1
) -> SafeString:
    """An SVG bar chart; every ``every``-th bar gets its axis label."""
    width, height, left, right, top, bottom = 460, 170, 64, 6, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_peak(max((bar.value for bar in bars), default=0))
    step = plot_w / max(len(bars), 1)
    out = [
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" data-total="{sum(bar.value for bar in bars):g}">',
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(peak * fraction))}</text>'
        )
    for index, bar in enumerate(bars):
        bar_h = plot_h * bar.value / peak
        x = left + index * step + step * 0.1
        out.append(
            f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{step * 0.8:.1f}" '
            f'height="{bar_h:.1f}" data-value="{bar.value:g}"><title>{escape(bar.title)}</title></rect>'
        )
        if index % every == 0:
            out.append(
                f'<text class="axis" x="{x + step * 0.4:.1f}" y="{height - 10}" text-anchor="middle">'
                f"{escape(bar.label)}</text>"
            )
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 - every interpolated text above is escaped


def duration_text(delta: timedelta) -> str:
    """A short human duration: 0 s, 42 s, 5 min, 3 h 20 min, 2 d 4 h."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{days} d {hours % 24} h"
    if hours:
        return f"{hours} h {minutes % 60} min"
    return f"{minutes} min"
