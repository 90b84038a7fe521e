"""The Events API v2 trigger for an event: what the on-call person reads first.

``summary`` becomes the incident's title (and the text of a phone or SMS page), so
it is one clean line of at most 1,024 characters; the rest (metrics, cost, rank,
the trimmed traceback, the whole message) goes in ``custom_details``, each part
capped so a hostile event cannot make the request too large for PagerDuty (512 KB).
The routing key is added only when the request is sent, never here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import one_line, strip_control, trim_traceback, truncate

SUMMARY_LIMIT = 1024  # PagerDuty's limit for payload.summary
FIELD_LIMIT = 255  # source, component, group, class: short names, kept short
MESSAGE_LIMIT = 8000  # the whole message in custom_details
DETAIL_LIMIT = 1000  # one context value or error text
TRACEBACK_LIMIT = 3000
MAX_ENTRIES = 50  # metrics, context entries, tags
MAX_LINKS = 5
CLIENT = "AFS notifications"

SEVERITY: Mapping[NotificationLevel, str] = {
    NotificationLevel.CRITICAL: "critical",
    NotificationLevel.ERROR: "error",
    NotificationLevel.WARNING: "warning",
    NotificationLevel.SUCCESS: "info",
    NotificationLevel.INFO: "info",
}

# Context entries shown elsewhere in the trigger, not again under "context".
_SHOWN_ELSEWHERE = frozenset({"traceback", "ranks", "held_back"})


def summary(event: NotificationEvent) -> str:
    """``Training failed: m — Run r failed: ValueError: x``, on one line, ≤ 1,024 characters."""
    text = f"{event.title} — {event.message}" if event.message.strip() else event.title
    return one_line(" ".join(text.split()), SUMMARY_LIMIT) or event.event_type.value


def trigger(event: NotificationEvent, dedup_key: str) -> dict[str, Any]:
    """The trigger request for ``event`` under ``dedup_key``, without the routing key."""
    payload: dict[str, Any] = {
        "summary": summary(event),
        "source": one_line(event.source.host, FIELD_LIMIT) or "unknown-host",
        "severity": SEVERITY[event.level],
        "timestamp": event.timestamp.isoformat(timespec="microseconds"),
        "class": event.event_type.value,
    }
    if event.model_name:
        payload["component"] = one_line(event.model_name, FIELD_LIMIT)
    if event.run_id:
        payload["group"] = one_line(event.run_id, FIELD_LIMIT)
    payload["custom_details"] = details(event)
    body: dict[str, Any] = {"event_action": "trigger", "dedup_key": dedup_key, "payload": payload, "client": CLIENT}
    links = _links(event)
    if links:
        body["links"] = links
    return body


def details(event: NotificationEvent) -> dict[str, Any]:
    """``custom_details``: every fact of the event PagerDuty shows beside the summary."""
    shown: dict[str, Any] = {}
    if event.message:
        shown["message"] = _text(event.message, MESSAGE_LIMIT)
    if event.error_details:
        shown["error"] = _text(event.error_details, DETAIL_LIMIT)
    if event.run_id:
        shown["run_id"] = _text(event.run_id, DETAIL_LIMIT)
    if event.model_name:
        shown["model"] = _text(event.model_name, DETAIL_LIMIT)
    for name in ("epoch", "batch"):
        value = getattr(event, name)
        if value is not None:
            shown[name] = value
    if event.cost is not None:
        shown["cost"] = event.cost
    if event.metrics:
        shown["metrics"] = _capped({key: _value(value) for key, value in event.metrics.items()})
    source = event.source
    if source.rank is not None:
        shown["rank"] = source.rank
    if source.world_size is not None:
        shown["world_size"] = source.world_size
    for key in ("ranks", "held_back"):  # the ranks that saw one failure; what throttling held back
        if event.context.get(key):
            shown[key] = _text(str(event.context[key]), DETAIL_LIMIT)
    shown["host"] = _text(source.host, FIELD_LIMIT)
    if source.pid is not None:
        shown["pid"] = source.pid
    context = {key: _value(value) for key, value in event.context.items()
               if key not in _SHOWN_ELSEWHERE and value is not None}
    if context:
        shown["context"] = _capped(context)
    if event.tags:
        shown["tags"] = [_text(tag, FIELD_LIMIT) for tag in event.tags[:MAX_ENTRIES]]
    traceback = event.context.get("traceback")
    if isinstance(traceback, str) and traceback.strip():
        shown["traceback"] = trim_traceback(strip_control(traceback), max_chars=TRACEBACK_LIMIT)
    shown["event_id"] = event.event_id
    return shown


def _text(text: str, limit: int) -> str:
    """User text as it may stand in the details: lines kept, control characters and
    direction overrides gone, cut at ``limit`` with a visible ``…``."""
    return truncate(strip_control(text), limit)


def _value(value: Any) -> Any:
    """A JSON value PagerDuty accepts: finite numbers and booleans as they are, NaN
    and infinity as text (bare NaN is not JSON), anything else as capped text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, str):
        return _text(value, DETAIL_LIMIT)
    try:
        text = str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return _text(text, DETAIL_LIMIT)


def _capped(entries: Mapping[str, Any]) -> dict[str, Any]:
    """At most :data:`MAX_ENTRIES` entries with short keys; how many were left out is said."""
    kept = {_text(key, 200): value for key, value in list(entries.items())[:MAX_ENTRIES]}
    if len(entries) > MAX_ENTRIES:
        kept["…"] = f"{len(entries) - MAX_ENTRIES} more not shown"
    return kept


def _links(event: NotificationEvent) -> list[dict[str, str]]:
    """A run's dashboard link (context ``*_url``/``*_link`` from an enrich hook) as a PagerDuty link."""
    links = []
    for key, value in event.context.items():
        if (isinstance(value, str) and key.lower().endswith(("url", "link"))
                and value.startswith(("https://", "http://")) and len(value) <= 2000 and value.isprintable()):
            links.append({"href": value, "text": one_line(key.replace("_", " "), 100)})
    return links[:MAX_LINKS]
