"""Curves drawn on the server as SVG: no chart library, no script, and a page that
shows its figures with JavaScript off. Colours are presentation attributes, which
the Content-Security-Policy allows (inline ``style`` it does not)."""

from __future__ import annotations

import datetime as dt
import math
import sys
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
    try:
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # no date: the number itself
        return _number(value)


def _span(low: float, high: float) -> tuple[float, float]:
    """An axis's ends: widened around a single value, never past the largest float."""
    if high == low:
        pad = abs(low) * 0.05 or 1.0
        low, high = max(low - pad, -sys.float_info.max), min(high + pad, sys.float_info.max)
    return low, high


def _fraction(value: float, low: float, high: float) -> float:
    """Where ``value`` lies between ``low`` and ``high`` (0 to 1), without overflow: a
    series from -1e308 to 1e308 spans more than a float holds, so it is scaled in halves."""
    span = high - low
    if math.isfinite(span):
        share = (value - low) / span
    else:
        share = (value / 2 - low / 2) / (high / 2 - low / 2)
    return min(max(share, 0.0), 1.0)


def line_chart(points: Sequence[tuple[float, float]], *, label: str, x_is_time: bool = False,
               colour: str = "#2563eb") -> Markup:
    """``points`` (x, y) as a line with its axes' ends labelled; a single point is a dot.

    The figure says how many points it draws (``data-points``) and how many it could
    not (``data-skipped``: NaN or infinite values, which no line can show), and, for a
    screen reader, what it shows.
    """
    finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    count, skipped = len(finite), len(points) - len(finite)
    title = escape(f"{label}: {count} point{'s' if count != 1 else ''}"
                   + (f" ({skipped} not drawn: NaN or infinite)" if skipped else ""))
    if not finite:
        return Markup(f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" data-points="0" '
                      f'data-skipped="{skipped}"><title>{title}</title><text x="{WIDTH // 2}" y="{HEIGHT // 2}" '
                      f'text-anchor="middle" fill="#6b7280">{"no finite values" if skipped else "no values"}'
                      f'</text></svg>')
    xs, ys = [x for x, _ in finite], [y for _, y in finite]
    x0, x1 = _span(min(xs), max(xs))
    y0, y1 = _span(min(ys), max(ys))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def at(x: float, y: float) -> str:
        return f"{_LEFT + _fraction(x, x0, x1) * plot_w:.1f},{_TOP + (1 - _fraction(y, y0, y1)) * plot_h:.1f}"

    shown_x = _time if x_is_time else _number
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" data-points="{count}" '
        f'data-skipped="{skipped}">',
        f"<title>{title}</title>",
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{HEIGHT - _BOTTOM}" stroke="#9ca3af"/>',
        f'<line x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH - _RIGHT}" y2="{HEIGHT - _BOTTOM}" stroke="#9ca3af"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 10}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(_number(y1))}</text>",
        f'<text x="{_LEFT - 6}" y="{HEIGHT - _BOTTOM}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(_number(y0))}</text>",
        f'<text x="{_LEFT}" y="{HEIGHT - 8}" font-size="11" fill="#374151">{escape(shown_x(x0))}</text>',
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 8}" text-anchor="end" font-size="11" fill="#374151">'
        f"{escape(shown_x(x1))}{' UTC' if x_is_time and ':' in shown_x(x1) else ''}</text>",
    ]
    if count == 1:
        cx, cy = at(*finite[0]).split(",")
        parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
    else:
        parts.append(f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{" ".join(at(x, y) for x, y in finite)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
