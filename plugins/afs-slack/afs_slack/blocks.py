"""Rendering an event as a Slack message: Block Kit with a coloured bar.

Every piece of user text is escaped (``&``, ``<``, ``>``) before it is cut to
Slack's limits, and cuts never split an entity, so no text can ping a channel,
inject a link or produce a payload Slack rejects.
"""

from __future__ import annotations

from typing import Any

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import (
    ELLIPSIS,
    defuse_fences,
    event_fields,
    headline,
    loss_summary,
    source_line,
    strip_control,
    trim_traceback,
    truncate,
)

# Block Kit limits (shared/reference/protocols.md).
MAX_BLOCKS = 50
HEADER_TEXT = 150
SECTION_TEXT = 3000
FIELDS_PER_SECTION = 10
FIELD_TEXT = 2000
CONTEXT_ELEMENTS = 10
FALLBACK_TEXT = 4000

COLOURS = {
    NotificationLevel.INFO: "#439FE0",
    NotificationLevel.SUCCESS: "#2EB67D",
    NotificationLevel.WARNING: "#ECB22E",
    NotificationLevel.ERROR: "#E01E5A",
    NotificationLevel.CRITICAL: "#8B0000",
}


def escape(text: str) -> str:
    """Slack's three control characters as entities; nothing else changes."""
    return strip_control(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(text: str, limit: int) -> str:
    """Escaped ``text`` within ``limit`` characters, cut with a visible marker."""
    return truncate(escape(text), limit, keep_entities=True)


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _field_sections(fields: list[tuple[str, str]], room: int) -> list[dict[str, Any]]:
    """Run context and metrics as section fields, 10 per section, at most ``room`` sections."""
    items = [_mrkdwn(truncate(f"*{escape(label)}*\n{escape(value)}", FIELD_TEXT, keep_entities=True))
             for label, value in fields]
    capacity = room * FIELDS_PER_SECTION
    if len(items) > capacity:
        hidden = len(items) - capacity + 1
        items = [*items[: capacity - 1], _mrkdwn(f"*{ELLIPSIS}*\n{hidden} more not shown")]
    return [
        {"type": "section", "fields": items[start : start + FIELDS_PER_SECTION]}
        for start in range(0, len(items), FIELDS_PER_SECTION)
    ]


def render(event: NotificationEvent, channel: str | None = None) -> dict[str, Any]:
    """The webhook payload for ``event``."""
    body: list[dict[str, Any]] = []
    texts = [event.message]
    if event.error_details and event.error_details not in event.message:
        texts.append(event.error_details)
    for text in texts:
        fitted = fit(text, SECTION_TEXT).strip()
        if fitted:  # Slack refuses an empty text object
            body.append({"type": "section", "text": _mrkdwn(fitted)})
    summary = loss_summary(event)  # the loss curve as a line: webhooks cannot upload a picture
    if summary:
        body.append({"type": "section", "text": _mrkdwn(fit(summary, SECTION_TEXT))})
    traceback = event.context.get("traceback")
    tail: list[dict[str, Any]] = []
    if isinstance(traceback, str) and traceback:
        fence = "```"
        room = SECTION_TEXT - 2 * len(fence)  # trimmed to the room, so the innermost frame stays
        code = fit(defuse_fences(trim_traceback(traceback, max_chars=room)), room).strip()
        if code:
            tail.append({"type": "section", "text": _mrkdwn(f"{fence}{code}{fence}")})
    tail.append({"type": "context", "elements": [_mrkdwn(fit(source_line(event), SECTION_TEXT))]})
    # One header block sits outside the attachment; everything shares the 50-block budget.
    room = MAX_BLOCKS - 1 - len(body) - len(tail)
    body.extend(_field_sections(event_fields(event), room))
    payload: dict[str, Any] = {
        "text": fallback_text(event),
        "blocks": [{"type": "header",
                    "text": {"type": "plain_text", "text": fit(headline(event), HEADER_TEXT), "emoji": True}}],
        "attachments": [{"color": COLOURS[event.level], "blocks": [*body, *tail]}],
    }
    if channel:
        payload["channel"] = channel
    return payload


def fallback_text(event: NotificationEvent) -> str:
    """What a phone notification shows: ``✅ Training completed: m — Run r finished…``."""
    text = headline(event)
    if event.message:
        text += f" — {event.message}"
    return fit(text, FALLBACK_TEXT)
