"""An event as a Telegram ``sendMessage`` in HTML: a bold title, the message, the
metrics and the traceback's end in ``<pre>`` blocks, all within 4,096 characters.

The message is built from parts of plain text, each wrapped in at most one tag, and
escaped only when the HTML is written: so what a user typed never becomes a tag, and a
cut (made on the plain text, before escaping) can never split ``&amp;`` or leave a
tag open.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import (
    ELLIPSIS,
    cut_to,
    event_fields,
    fit_lines,
    headline,
    loss_summary,
    one_line,
    run_link,
    source_line,
    strip_control,
    traceback_tail,
)
from afs_core.formatting import utf16_units as units  # Telegram's measure: UTF-16 code units

#: Telegram's limit on a message, in characters after entities are parsed. Counted
#: here in UTF-16 code units (an emoji counts two), never fewer than Telegram counts.
TEXT_UNITS = 4096
TITLE_CHARS = 256
#: The facts block: at most this many lines (the rest counted), each cut to LINE_CHARS.
MAX_FIELDS, LINE_CHARS, LABEL_CHARS = 12, 80, 20
#: The traceback block: its last lines, at most this many units in all.
TRACEBACK_LINES, TRACEBACK_UNITS = 12, 1200
FIELDS_UNITS, SOURCE_UNITS = 1200, 160

#: The text of the run's link (:func:`~afs_core.formatting.run_link`) under the message.
LINK_TEXT = "Open the run"

#: Below WARNING nothing rings: Telegram delivers the message silently.
SILENT_BELOW = NotificationLevel.WARNING
NO_PREVIEW: Mapping[str, bool] = {"is_disabled": True}
#: Our own key in a rendered message: the event it carries (which chats have it is
#: remembered by it). Taken out before the message is sent.
EVENT_KEY = "afs_event_id"

# An @ before a name makes a mention, which notifies that user in a group: a word
# joiner after it keeps the text as typed but no longer a mention.
_MENTION = re.compile(r"@(?=[A-Za-z0-9_])")
_TAG = re.compile(r"<[^>]*>")


class Part(NamedTuple):
    """Plain text, shown in ``tag`` (b, i, pre) or as is (None)."""

    text: str
    tag: str | None = None


def escape(text: str) -> str:
    """``<``, ``>`` and ``&`` as entities: the only characters Telegram's HTML reads."""
    return html.escape(text, quote=False)


def no_mentions(text: str) -> str:
    return _MENTION.sub("@\u2060", text)


def cut(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` in at most ``limit`` UTF-16 units, ending with ``marker`` when cut; never
    between a character and the accent, joiner or selector that belongs to it."""
    return cut_to(text, limit, measure=units, marker=marker)


def to_html(parts: list[Part]) -> str:
    return "".join(f"<{p.tag}>{escape(p.text)}</{p.tag}>" if p.tag else escape(p.text) for p in parts)


def visible_units(parts: list[Part]) -> int:
    return sum(units(p.text) for p in parts)


def _facts(event: NotificationEvent) -> str:
    """The run's context and metrics, one aligned ``label  value`` line each."""
    fields = [(one_line(label, LABEL_CHARS), one_line(value, LINE_CHARS)) for label, value in event_fields(event)]
    width = max((len(label) for label, _ in fields), default=0)
    lines = [cut(f"{label.ljust(width)}  {value}", LINE_CHARS) for label, value in fields]
    return fit_lines(lines, FIELDS_UNITS, measure=units, most=MAX_FIELDS)


def _traceback(event: NotificationEvent) -> str:
    """The traceback's last lines, where the error is."""
    return traceback_tail(event, TRACEBACK_UNITS, measure=units, lines=TRACEBACK_LINES, line_chars=LINE_CHARS * 2)


def text(event: NotificationEvent) -> str:
    """The HTML text: at most :data:`TEXT_UNITS` once parsed; the event's message is cut first."""
    head = [Part(no_mentions(one_line(headline(event), TITLE_CHARS)), "b")]
    tail: list[Part] = []
    link = run_link(event)
    facts, traceback = _facts(event), _traceback(event)
    summary = loss_summary(event)  # the loss curve as a line of text
    if summary:
        tail += [Part("\n\n"), Part(cut(summary, SOURCE_UNITS))]
    if facts:
        tail += [Part("\n\n"), Part(facts, "pre")]
    if traceback:
        tail += [Part("\n\n"), Part(traceback, "pre")]
    tail += [Part("\n"), Part(no_mentions(cut(source_line(event), SOURCE_UNITS)), "i")]
    message = no_mentions(strip_control(event.message, keep="\n\t").strip())
    room = TEXT_UNITS - visible_units(head) - visible_units(tail) - (units(LINK_TEXT) + 1 if link else 0)
    body = [Part("\n" + cut(message, room - 1))] if message else []  # room - 1: its line break
    anchor = f'\n<a href="{html.escape(link, quote=True)}">{LINK_TEXT}</a>' if link else ""
    return to_html(head + body) + anchor + to_html(tail)


def render(event: NotificationEvent) -> dict[str, Any]:
    """The ``sendMessage`` fields for ``event``, without ``chat_id`` (added per chat)."""
    return {
        "text": text(event),
        "parse_mode": "HTML",
        "disable_notification": event.level < SILENT_BELOW,
        "link_preview_options": dict(NO_PREVIEW),
        EVENT_KEY: event.event_id,
    }


def shown_text(message_html: str) -> str:
    """What Telegram shows of an HTML text: tags gone, entities read."""
    return html.unescape(_TAG.sub("", message_html))


def fit(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Any payload (a plugin's own too) within Telegram's limit. HTML that is too long is
    sent as plain text, cut: cutting markup could leave a tag open or split an entity."""
    fitted = {key: value for key, value in payload.items() if key != EVENT_KEY}
    fitted.setdefault("link_preview_options", dict(NO_PREVIEW))
    message = fitted.get("text")
    if not isinstance(message, str):
        return fitted
    mode = str(fitted.get("parse_mode") or "").lower()
    if mode == "html":
        if units(shown_text(message)) > TEXT_UNITS:
            fitted.pop("parse_mode")
            fitted["text"] = cut(shown_text(message), TEXT_UNITS)
    elif units(message) > TEXT_UNITS:
        fitted.pop("parse_mode", None)  # Markdown cut anywhere could break too: plain text
        fitted["text"] = cut(message, TEXT_UNITS)
    return fitted
