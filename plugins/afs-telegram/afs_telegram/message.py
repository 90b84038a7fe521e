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
import unicodedata
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import ELLIPSIS, event_fields, headline, one_line, source_line, strip_control

#: Telegram's limit on a message, in characters after entities are parsed. Counted
#: here in UTF-16 code units (an emoji counts two), never fewer than Telegram counts.
TEXT_UNITS = 4096
TITLE_CHARS = 256
#: The facts block: at most this many lines (the rest counted), each cut to LINE_CHARS.
MAX_FIELDS, LINE_CHARS, LABEL_CHARS = 12, 80, 20
#: The traceback block: its last lines, at most this many units in all.
TRACEBACK_LINES, TRACEBACK_UNITS = 12, 1200
FIELDS_UNITS, SOURCE_UNITS = 1200, 160

#: Context keys whose http(s) URL becomes a link under the message; the first present wins.
LINK_KEYS = ("url", "run_url", "dashboard_url", "experiment_url", "wandb_url", "mlflow_url", "tensorboard_url")
LINK_CHARS = 2000
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
_JOINERS = frozenset("\u200d\u2060\ufe0e\ufe0f")
_TAG = re.compile(r"<[^>]*>")


class Part(NamedTuple):
    """Plain text, shown in ``tag`` (b, i, pre) or as is (None)."""

    text: str
    tag: str | None = None


def units(text: str) -> int:
    """Length as Telegram measures it: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def escape(text: str) -> str:
    """``<``, ``>`` and ``&`` as entities: the only characters Telegram's HTML reads."""
    return html.escape(text, quote=False)


def no_mentions(text: str) -> str:
    return _MENTION.sub("@\u2060", text)


def _splits_a_character(text: str, index: int) -> bool:
    """Whether a cut before ``text[index]`` would part it from the character before it
    (a combining accent, a joiner, a variation selector or a skin tone)."""
    if not 0 < index < len(text):
        return False
    ch, before = text[index], text[index - 1]
    return bool(unicodedata.combining(ch)) or ch in _JOINERS or before == "\u200d" or "\U0001f3fb" <= ch <= "\U0001f3ff"


def cut(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` in at most ``limit`` UTF-16 units, ending with ``marker`` when cut; never
    between a character and the accent, joiner or selector that belongs to it."""
    if units(text) <= limit:
        return text
    room = limit - units(marker)
    if room < 0:
        return ""
    end, used = 0, 0
    while end < len(text) and used + units(text[end]) <= room:
        used += units(text[end])
        end += 1
    while _splits_a_character(text, end):
        end -= 1
    return text[:end] + marker


def to_html(parts: list[Part]) -> str:
    return "".join(f"<{p.tag}>{escape(p.text)}</{p.tag}>" if p.tag else escape(p.text) for p in parts)


def visible_units(parts: list[Part]) -> int:
    return sum(units(p.text) for p in parts)


def _facts(event: NotificationEvent) -> str:
    """The run's context and metrics, one aligned ``label  value`` line each."""
    fields = [(one_line(label, LABEL_CHARS), one_line(value, LINE_CHARS)) for label, value in event_fields(event)]
    width = max((len(label) for label, _ in fields), default=0)
    lines: list[str] = []
    for index, (label, value) in enumerate(fields):
        line = cut(f"{label.ljust(width)}  {value}", LINE_CHARS)
        after = len(fields) - index - 1
        reserve = [f"{ELLIPSIS} {after} more"] if after else []  # room to say so, if the next does not fit
        if index == MAX_FIELDS or units("\n".join([*lines, line, *reserve])) > FIELDS_UNITS:
            lines.append(f"{ELLIPSIS} {after + 1} more")
            break
        lines.append(line)
    return "\n".join(lines)


def _traceback(event: NotificationEvent) -> str:
    """The traceback's last lines, where the error is."""
    text = event.context.get("traceback")
    if not isinstance(text, str) or not text.strip():
        return ""
    lines = [one_line(line, LINE_CHARS * 2) for line in strip_control(text, keep="\n").rstrip().splitlines()]
    lines = lines[-TRACEBACK_LINES:]
    while lines and units("\n".join(lines)) > TRACEBACK_UNITS:
        lines = lines[1:]
    return "\n".join(lines)


def link_of(event: NotificationEvent) -> str | None:
    """The first http(s) URL among the context's link keys, or None."""
    for key in LINK_KEYS:
        value = event.context.get(key)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if len(value) > LINK_CHARS or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
            continue
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            continue
        if parts.scheme.lower() in ("http", "https") and parts.hostname:
            return value
    return None


def text(event: NotificationEvent) -> str:
    """The HTML text: at most :data:`TEXT_UNITS` once parsed; the event's message is cut first."""
    head = [Part(no_mentions(one_line(headline(event), TITLE_CHARS)), "b")]
    tail: list[Part] = []
    link = link_of(event)
    facts, traceback = _facts(event), _traceback(event)
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
