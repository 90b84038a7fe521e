"""Curves drawn on the server as SVG: no chart library, no script, and a page that
shows its figures with JavaScript off. Colours are presentation attributes, which
the Content-Security-Policy allows (inline ``style`` it does not)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 28


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def _time(value: float) -> str:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%H:%M:%S")


def line_chart(points: Sequence[tuple[float, float]], *, label: str, x_is_time: bool = False,
               colour: str = "#2563eb") -> Markup:
    """``points`` (x, y) as a line with its axes' ends labelled; a single point is a dot.

    The figure says how many points it draws (``data-points``) and, for a screen
    reader, what it shows.
    """
    finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    count = len(finite)
    title = escape(f"{label}: {count} point{'s' if count != 1 else ''}")
    if not finite:
        return Markup(f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" data-points="0">'
                      f'<title>{title}</title><text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" '
                      f'fill="#6b7280">no values</text></svg>')
    xs, ys = [x for x, _ in finite], [y for _, y in finite]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def at(x: float, y: float) -> str:
        return f"{_LEFT + (x - x0) / (x1 - x0) * plot_w:.1f},{_TOP + (y1 - y) / (y1 - y0) * plot_h:.1f}"

    shown_x = _time if x_is_time else _number
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" data-points="{count}">',
        f"<title>{title}</title>",
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{HEIGHT - _BOTTOM}" stroke="#9ca3af"/>',
        f'<line x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH - _RIGHT}" y2="{HEIGHT - _BOTTOM}" stroke="#9ca3af"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 10}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(_number(y1))}</text>",
        f'<text x="{_LEFT - 6}" y="{HEIGHT - _BOTTOM}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(_number(y0))}</text>",
        f'<text x="{_LEFT}" y="{HEIGHT - 8}" font-size="11" fill="#374151">{escape(shown_x(x0))}</text>',
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 8}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(shown_x(x1))}{' UTC' if x_is_time else ''}</text>",
    ]
    if count == 1:
        cx, cy = at(*finite[0]).split(",")
        parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
    else:
        parts.append(f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{" ".join(at(x, y) for x, y in finite)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
