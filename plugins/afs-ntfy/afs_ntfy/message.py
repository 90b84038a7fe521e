"""An event as an ntfy JSON message: priority, emoji tags, a Markdown body, a click link.

Published as JSON (not headers), so titles and messages in any script arrive as
written. The body is Markdown with every user-typed character that could become
markup escaped, and it always fits ntfy's 4,096-byte message limit: above it a
server turns the message into an ``attachment.txt`` or refuses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.formatting import (
    ELLIPSIS,
    cut_to,
    defuse_fences,
    event_fields,
    fit_lines,
    loss_summary,
    one_line,
    run_link,
    source_line,
    splits_character,
    strip_control,
    traceback_tail,
    utf8_size,
)

#: ntfy's limit on a message, in UTF-8 bytes.
MESSAGE_BYTES = 4096
#: ntfy documents no title limit; a phone shows about one line of it anyway.
TITLE_CHARS = 250
#: Label and value of one line in the list of facts, before escaping.
LABEL_CHARS, VALUE_CHARS = 40, 120
#: At most this many facts (context and metrics) are listed; the rest are counted.
MAX_FIELDS = 12
#: Bytes of the body the list of facts, the traceback and the source line may take at most,
#: so the event's own message always keeps most of the room.
FIELDS_BYTES, TRACEBACK_BYTES, SOURCE_BYTES = 1400, 1000, 200
TRACEBACK_LINES = 12
#: At most this many of the event's own tags follow the emoji tag.
MAX_USER_TAGS, TAG_CHARS = 5, 40

#: Only warnings and worse make a sound: 3 is ntfy's default (sound and vibration),
#: 2 is "low" (in the drawer, silent), so a finished run does not wake anyone.
PRIORITY: Mapping[NotificationLevel, int] = {
    NotificationLevel.INFO: 2,
    NotificationLevel.SUCCESS: 2,
    NotificationLevel.WARNING: 3,
    NotificationLevel.ERROR: 4,
    NotificationLevel.CRITICAL: 5,
}

#: The emoji (an ntfy tag that is an emoji short code) shown before the title.
EMOJI: Mapping[EventType, str] = {
    EventType.TRAINING_STARTED: "rocket",
    EventType.TRAINING_COMPLETED: "white_check_mark",
    EventType.TRAINING_FAILED: "x",
    EventType.TRAINING_PAUSED: "pause_button",
    EventType.TRAINING_RESUMED: "arrow_forward",
    EventType.TRAINING_STALLED: "hourglass",
    EventType.TRAINING_PROGRESS_RESUMED: "arrow_forward",
    EventType.CHECKPOINT_SAVED: "floppy_disk",
    EventType.CHECKPOINT_LOADING: "inbox_tray",
    EventType.EVALUATION_STARTED: "mag",
    EventType.EVALUATION_COMPLETED: "bar_chart",
    EventType.EVALUATION_FAILED: "x",
    EventType.EPOCH_COMPLETED: "repeat",
    EventType.BATCH_PROCESSED: "gear",
    EventType.LOSS_IMPROVED: "chart_with_downwards_trend",
    EventType.LOSS_DEGRADED: "chart_with_upwards_trend",
    EventType.COST_THRESHOLD_EXCEEDED: "moneybag",
    EventType.GPU_MEMORY_WARNING: "warning",
    EventType.GPU_UTILIZATION_LOW: "turtle",
    EventType.DISK_SPACE_WARNING: "file_cabinet",
    EventType.ERROR_OCCURRED: "x",
    EventType.OUT_OF_MEMORY: "boom",
    EventType.NAN_DETECTED: "warning",
}

# Everything CommonMark (and the GFM extensions ntfy's apps render) could read as markup
# anywhere in a line: emphasis, code, links and images, raw HTML and autolinks, entities
# (``&amp;`` would show as ``&``), tables, strikethrough, and the escape itself.
_INLINE = re.compile(r"([\\`*_\[\]<>&|~])")
# What is markup only at the start of a line: headings, list items, setext underlines
# and thematic breaks, ordered list items ("1." / "1)"); block quotes (">") are escaped above.
_LINE_START = re.compile(r"^([ \t]*)(#{1,6}(?=[ \t]|$)|[-+=](?=[ \t]|$|[-+=])|\d{1,9}(?=[.)](?:[ \t]|$)))",
                         re.MULTILINE)


def escape_markdown(text: str, *, inline: bool = False) -> str:
    """``text`` shown literally by a Markdown renderer: no link, image, HTML, emphasis,
    heading or list can come out of it; its line breaks are kept (as hard breaks).
    ``inline``: the text follows other text on its line (a value in a list), so what
    is markup only at the start of a line needs no escape."""
    text = _INLINE.sub(r"\\\1", strip_control(text, keep="" if inline else "\n"))
    if inline:
        return text
    text = _LINE_START.sub(_escape_line_start, text)
    return text.replace("\n", "  \n")


def _escape_line_start(match: re.Match[str]) -> str:
    indent, marker = match[1], match[2]
    return f"{indent}{marker}\\" if marker[0].isdigit() else f"{indent}\\{marker}"  # "1\." / "\#"


def cut_to_bytes(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, ending with ``marker`` when cut.

    The cut is :func:`~afs_core.formatting.cut_to`'s (between characters, never parting
    one from the accent, joiner or selector that belongs to it), and never leaves a
    lone backslash to escape the marker in Markdown.
    """
    cut = cut_to(text, limit, measure=utf8_size, marker=marker)
    if cut == text or not cut:
        return cut
    kept = cut[: len(cut) - len(marker)]
    if (len(kept) - len(kept.rstrip("\\"))) % 2:
        kept = kept[:-1]
    return kept + marker


def _fit_escaped(raw: str, limit: int) -> str:
    """The longest start of ``raw`` whose escaped form (and a marker, when cut) fits in
    ``limit`` bytes: cut before escaping, so no escape is ever cut in half."""
    escaped = escape_markdown(raw)
    if utf8_size(escaped) <= limit:
        return escaped
    low, high = 0, len(raw)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if utf8_size(escape_markdown(raw[:middle]) + ELLIPSIS) <= limit:
            low = middle
        else:
            high = middle - 1
    while splits_character(raw, low):
        low -= 1
    return escape_markdown(raw[:low]).rstrip() + ELLIPSIS


def _facts(event: NotificationEvent) -> str:
    """The run's context and metrics as a short Markdown list, within its byte budget;
    what does not fit is counted on a last line."""
    # ntfy shows the event's tags under the message already.
    fields = [(label, value) for label, value in event_fields(event) if not (label == "Tags" and event.tags)]
    lines = [f"- **{escape_markdown(one_line(label, LABEL_CHARS), inline=True)}:** "
             f"{escape_markdown(one_line(value, VALUE_CHARS), inline=True)}" for label, value in fields]
    return fit_lines(lines, FIELDS_BYTES, measure=utf8_size, most=MAX_FIELDS, more=f"- {ELLIPSIS} {{}} more")


def _traceback(event: NotificationEvent) -> str:
    """The traceback's last lines (where the error is) in a code block, within its budget."""
    return traceback_tail(event, TRACEBACK_BYTES, measure=utf8_size, lines=TRACEBACK_LINES, line_chars=VALUE_CHARS * 2,
                          show=_code_block)


def _code_block(lines: list[str]) -> str:
    return "```\n" + defuse_fences("\n".join(lines)) + "\n```"


def _tags(event: NotificationEvent) -> list[str]:
    tags = [EMOJI.get(event.event_type, "bell")]
    if event.level is NotificationLevel.CRITICAL:
        tags.append("rotating_light")
    for tag in event.tags[:MAX_USER_TAGS]:
        cleaned = one_line(tag, TAG_CHARS).strip()
        if cleaned and cleaned not in tags:
            tags.append(cleaned)
    return tags


def body(event: NotificationEvent) -> str:
    """The Markdown message: the event's message, the loss curve as a line, its facts, the
    traceback's end and where it came from, in at most :data:`MESSAGE_BYTES`; the event's
    message is cut first."""
    summary = loss_summary(event)
    curve = _fit_escaped(summary, SOURCE_BYTES) if summary else ""
    facts = _facts(event)
    traceback = _traceback(event)
    source = _fit_escaped(source_line(event), SOURCE_BYTES)
    fixed = [part for part in (curve, facts, traceback, source) if part]
    room = MESSAGE_BYTES - utf8_size("\n\n".join(["", *fixed]))
    message = _fit_escaped(event.message.strip(), room) if event.message.strip() else ""
    return cut_to_bytes("\n\n".join(part for part in (message, *fixed) if part), MESSAGE_BYTES)


def render(event: NotificationEvent) -> dict[str, Any]:
    """The JSON message for ``event``, without the topic (the channel adds it)."""
    payload: dict[str, Any] = {
        "title": one_line(event.title, TITLE_CHARS),
        "message": body(event),
        "priority": PRIORITY[event.level],
        "tags": _tags(event),
        "markdown": True,
    }
    link = run_link(event)  # opens when the notification is tapped
    if link is not None:
        payload["click"] = link
    return payload


def fit(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Any payload (a plugin's own too) brought within ntfy's limits: the title on one
    line, the message in :data:`MESSAGE_BYTES`, a priority from 1 to 5."""
    fitted = dict(payload)
    title = fitted.get("title")
    if isinstance(title, str):
        fitted["title"] = one_line(title, TITLE_CHARS)
    message = fitted.get("message")
    if isinstance(message, str):
        fitted["message"] = cut_to_bytes(strip_control(message), MESSAGE_BYTES)
    priority = fitted.get("priority")
    if isinstance(priority, (int, float)) and not isinstance(priority, bool):
        fitted["priority"] = min(max(int(priority) if math.isfinite(priority) else 3, 1), 5)
    return fitted
