"""Recorded metrics: what ``log_metrics`` and events say about a run, step by step.

Metrics are recorded, never sent: the history's curves (``afs dashboard``), and the loss
curve an end-of-run message carries (its picture, its sparkline), are drawn from them.
A step's values wait in memory for the ingest thread (half a second at most), so
recording one costs the training loop no write and no conversion; what a killed
process had not yet handed over is the only thing lost, and it is never an event.
Metrics a forked child (a data-loader worker) logs through its parent's manager are
not recorded: the parent records the run's.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

#: Events whose messages carry the run's loss curve (a picture, a sparkline).
CURVED_EVENTS = frozenset({"training_completed", "training_failed", "evaluation_completed", "loss_degraded"})
#: Points an event carries of its run's loss curve.
CURVE_POINTS = 200
#: The most points a series is drawn with (minima, maxima and the last value kept).
SERIES_POINTS = 500


class MetricPoint(NamedTuple):
    """One recorded value: the step it was logged for (None when not given), the value and when."""

    step: int | None
    value: float
    at: float


class MetricRow(NamedTuple):
    """A row of the store's ``metrics`` table. ``source`` is the event (or the
    ``log_metrics`` record) it came from, so a record read twice is kept once."""

    source: str
    run_id: str | None
    model_name: str | None
    name: str
    step: int | None
    value: float
    at: float


class MetricEntry(NamedTuple):
    """One ``log_metrics`` call as the caller's thread leaves it: turned into rows later,
    on the ingest thread (a float() of a framework's tensor is not the loop's cost)."""

    source: str
    run_id: str | None
    model_name: str | None
    step: Any
    values: Mapping[str, Any]
    at: float


def rows_from_entries(entries: Iterable[MetricEntry]) -> list[MetricRow]:
    """The rows of many ``log_metrics`` calls; a call whose values cannot be read (a
    mapping that raises) is left out, never in the way of the others."""
    rows: list[MetricRow] = []
    for entry in entries:
        try:
            rows += rows_from_values(*entry)
        except Exception:
            continue
    return rows


#: A journal line of ``log_metrics`` rows (written by a process whose courier delivers).
ROWS_KEY = "metric_rows"


def split_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[MetricRow]]:
    """Journal records apart from the metric rows some lines carry; a damaged row is left out."""
    events: list[dict[str, Any]] = []
    rows: list[MetricRow] = []
    for record in records:
        if ROWS_KEY not in record:
            events.append(record)
            continue
        for row in record[ROWS_KEY] if isinstance(record[ROWS_KEY], list) else ():
            try:
                rows.append(MetricRow(*row))
            except TypeError:
                continue
    return events, rows


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (NumPy and framework scalars too), else
    None; also None for one too large for a float (10**400): skipped, never an error."""
    kind = type(value)
    if kind is float:  # nearly every value: no ABC check
        return value  # type: ignore[no-any-return]
    try:
        if kind is bool:
            return None
        if isinstance(value, numbers.Real):
            return float(value)
        item = getattr(value, "item", None)  # a 0-d tensor or array
        if callable(item):
            inner = item()
            if isinstance(inner, numbers.Real) and not isinstance(inner, bool):
                return float(inner)
    except Exception:
        return None
    return None


_STEP_RANGE = range(-(2**63), 2**63)  # what SQLite's INTEGER holds


def as_step(value: Any) -> int | None:
    """``value`` as a step when it is an integer SQLite can hold, else None (no step)."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return None
    step = int(value)
    return step if step in _STEP_RANGE else None


def without_nan(value: Any) -> Any:
    """``value`` with each NaN or infinity, however deep, as the text JSON lacks a number for."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value


def rows_from_values(source: str, run_id: str | None, model_name: str | None, step: Any,
                     values: Mapping[str, Any], at: float) -> Iterator[MetricRow]:
    """The numeric values among ``values`` as rows (other values are not drawn: skipped)."""
    for name, raw in values.items():
        number = as_number(raw)
        if isinstance(name, str) and name and number is not None:
            yield MetricRow(source, run_id, model_name, name[:200], as_step(step), number, at)


def rows_from_event(event: Mapping[str, Any], at: float) -> Iterator[MetricRow]:
    """An event's own metrics, at the step its context names (if any)."""
    values = event.get("metrics")
    if not isinstance(values, Mapping) or not values:
        return iter(())
    context = event.get("context")
    step = context.get("step") if isinstance(context, Mapping) else None
    return rows_from_values(str(event.get("event_id")), event.get("run_id"), event.get("model_name"),
                            step, values, at)


def downsample(points: Sequence[MetricPoint], limit: int) -> list[MetricPoint]:
    """At most ``limit`` points that keep the series' shape: per bucket its minimum and
    maximum (in their order), and always the first and the last point."""
    if len(points) <= limit:
        return list(points)
    if limit < 4:
        return [points[0], points[-1]][:max(limit, 1)]
    buckets = (limit - 2) // 2
    inner = points[1:-1]
    size = len(inner) / buckets
    kept = [points[0]]
    for index in range(buckets):
        bucket = inner[int(index * size):int((index + 1) * size)]
        if not bucket:
            continue
        low = min(range(len(bucket)), key=lambda i: _order(bucket[i].value))
        high = max(range(len(bucket)), key=lambda i: _order(bucket[i].value))
        kept += [bucket[i] for i in sorted({low, high})]
    kept.append(points[-1])
    return kept


def _order(value: float) -> float:
    return value if not math.isnan(value) else -math.inf


def drawable(points: Iterable[MetricPoint]) -> list[MetricPoint]:
    """A series as drawn: where some points were logged with a step, the points without
    one (an event's copy of a value) are left out, so the x axis means one thing; in
    step order (a resumed run logs steps again: its curve does not jump back)."""
    points = list(points)
    if any(p.step is not None for p in points):
        return sorted((p for p in points if p.step is not None), key=lambda p: (p.step, p.at))
    return points


def curve_pairs(points: Sequence[MetricPoint]) -> list[list[float]]:
    """``[x, value]`` pairs for an event's ``loss_curve``: x is the step, else the index.
    Non-finite values are left out (a NaN has no place on the curve)."""
    pairs = []
    for index, point in enumerate(points):
        if math.isfinite(point.value):
            pairs.append([float(point.step if point.step is not None else index), point.value])
    return pairs


def loss_name(names: Iterable[str]) -> str | None:
    """The series an event's loss curve shows: ``loss``, else the first training loss."""
    names = list(names)
    if "loss" in names:
        return "loss"
    candidates = sorted(n for n in names if "loss" in n.lower() and not n.lower().startswith(("val", "eval", "test")))
    return candidates[0] if candidates else None
