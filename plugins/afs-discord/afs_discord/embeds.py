"""Rendering an event as a Discord embed, and keeping any payload within Discord's limits.

Limits are counted in code points after trimming whitespace, as Discord counts
them; every cut ends with a visible ``…``. Markdown in user text is escaped so a
model name cannot turn into a heading, a masked link or a spoiler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import (
    ELLIPSIS,
    defuse_fences,
    event_fields,
    headline,
    loss_summary,
    strip_control,
    trim_traceback,
    truncate,
)

CONTENT = 2000
EMBEDS_PER_MESSAGE = 10
TITLE = 256
DESCRIPTION = 4096
FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR_NAME = 256
EMBEDS_TOTAL = 6000

COLOURS = {
    NotificationLevel.INFO: 0x3498DB,  # blue
    NotificationLevel.SUCCESS: 0x2ECC71,  # green
    NotificationLevel.WARNING: 0xFFBF00,  # amber
    NotificationLevel.ERROR: 0xE74C3C,  # red
    NotificationLevel.CRITICAL: 0x8B0000,  # dark red
}
NO_MENTIONS = {"parse": []}

_INLINE = re.compile(r"([\\*_~`|\[\]])")  # emphasis, code, spoilers, masked links
_LINE_START = re.compile(r"^(\s*)([#>-])", re.MULTILINE)  # headings, quotes, lists


def escape(text: str) -> str:
    """User text with Discord markdown disarmed (shown literally, not rendered)."""
    return _LINE_START.sub(r"\1\\\2", _INLINE.sub(r"\\\1", strip_control(text)))


def _fit(text: str, limit: int) -> str:
    return truncate(text.strip(), limit)


def render(event: NotificationEvent, *, image: str | None = None) -> dict[str, Any]:
    """One embed for ``event``; ``image``, the name of a file sent with it, is shown in it
    (the loss curve), else the curve is a line of text in the description."""
    parts = [escape(event.message)] if event.message else []
    if event.error_details and event.error_details not in event.message:
        parts.append(escape(event.error_details))
    summary = None if image else loss_summary(event)
    if summary:
        parts.append(escape(summary))
    description = "\n".join(parts)
    traceback = event.context.get("traceback")
    if isinstance(traceback, str) and traceback:
        room = DESCRIPTION - len(description) - 9  # fences and newline
        if room > 200:
            code = truncate(defuse_fences(trim_traceback(traceback, max_chars=room)), room)  # innermost frame kept
            description += f"\n```\n{code}\n```"
    footer = " · ".join(
        part for part in (event.source.host, f"run {event.run_id}" if event.run_id else "",
                          f"rank {event.source.rank}" if event.source.rank is not None else "") if part
    )
    embed: dict[str, Any] = {
        "title": _fit(strip_control(headline(event), keep=""), TITLE),
        "color": COLOURS[event.level],
        "timestamp": event.timestamp.isoformat(),
        "fields": [
            {"name": _fit(escape(label), FIELD_NAME), "value": _fit(escape(value), FIELD_VALUE) or "-", "inline": True}
            for label, value in event_fields(event)
        ],
    }
    if description:
        embed["description"] = _fit(description, DESCRIPTION)
    if footer:
        embed["footer"] = {"text": _fit(strip_control(footer), FOOTER)}
    if image:
        embed["image"] = {"url": f"attachment://{image}"}
    return fit_embed(embed)


def embed_size(embed: Mapping[str, Any]) -> int:
    """Characters Discord counts towards the 6000 total."""
    size = len(str(embed.get("title", "")).strip()) + len(str(embed.get("description", "")).strip())
    size += len(str((embed.get("footer") or {}).get("text", "")).strip())
    size += len(str((embed.get("author") or {}).get("name", "")).strip())
    for field in embed.get("fields") or []:
        size += len(str(field.get("name", "")).strip()) + len(str(field.get("value", "")).strip())
    return size


def fit_embed(embed: Mapping[str, Any], budget: int = EMBEDS_TOTAL) -> dict[str, Any]:
    """``embed`` within every per-part limit and within ``budget`` characters in all."""
    fitted = dict(embed)
    if "title" in fitted:
        fitted["title"] = _fit(str(fitted["title"]), TITLE)
    if "description" in fitted:
        fitted["description"] = _fit(str(fitted["description"]), DESCRIPTION)
    if isinstance(fitted.get("footer"), Mapping):
        fitted["footer"] = {**fitted["footer"], "text": _fit(str(fitted["footer"].get("text", "")), FOOTER)}
    if isinstance(fitted.get("author"), Mapping):
        fitted["author"] = {**fitted["author"], "name": _fit(str(fitted["author"].get("name", "")), AUTHOR_NAME)}
    fields = [
        {**f, "name": _fit(str(f.get("name", "")), FIELD_NAME) or "-",
         "value": _fit(str(f.get("value", "")), FIELD_VALUE) or "-"}
        for f in fitted.get("fields") or []
    ]
    if len(fields) > FIELDS:
        hidden = len(fields) - FIELDS + 1
        fields = [*fields[: FIELDS - 1], {"name": ELLIPSIS, "value": f"{hidden} more not shown", "inline": False}]
    if fields or "fields" in fitted:
        fitted["fields"] = fields
    # Over budget: shorten the description, then drop fields from the end, then cut
    # the footer, the author and finally the title.
    excess = embed_size(fitted) - budget
    if excess > 0 and fitted.get("description"):
        fitted["description"] = _cut_keeping_fences(fitted["description"], len(fitted["description"]) - excess)
        if not fitted["description"]:
            del fitted["description"]
    while embed_size(fitted) > budget and fitted.get("fields"):
        fitted["fields"] = fitted["fields"][:-1]
    for part in ("footer", "author"):
        key = "text" if part == "footer" else "name"
        excess = embed_size(fitted) - budget
        if excess > 0 and isinstance(fitted.get(part), Mapping):
            text = str(fitted[part].get(key, ""))
            fitted[part] = {**fitted[part], key: truncate(text, max(len(text) - excess, 0))}
    excess = embed_size(fitted) - budget
    if excess > 0 and "title" in fitted:
        title = str(fitted["title"])
        fitted["title"] = truncate(title, max(len(title) - excess, 0))
    return fitted


def _cut_keeping_fences(text: str, keep: int) -> str:
    """``text`` cut to ``keep`` characters; a code block the cut opened is closed again,
    so what follows a cut fence is never rendered as markdown."""
    cut = truncate(text, max(keep, 0))
    if cut.count("```") % 2 == 1:
        cut = truncate(text, max(keep - 4, 0)) + "\n```" if keep > 8 else ""
        if cut.count("```") % 2 == 1:  # the cut fell inside the opening fence itself
            cut = truncate(text.split("```")[0], max(keep, 0))
    return cut


class FittedPayload(dict):  # type: ignore[type-arg]
    """A payload this module built within the limits; delivering it needs no second pass.

    ``files`` are sent with it, as ``(file name, content type, bytes)``: the payload then
    goes as multipart/form-data, and its ``attachments`` list them by index.
    """

    files: tuple[tuple[str, str, bytes], ...] = ()


def fit_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Any execute-webhook payload within Discord's limits, mentions always off."""
    if type(payload) is FittedPayload:
        return payload
    fitted = dict(payload)
    if "content" in fitted and fitted["content"] is not None:
        fitted["content"] = _fit(strip_control(str(fitted["content"])), CONTENT)
    embeds = [e for e in list(fitted.get("embeds") or [])[:EMBEDS_PER_MESSAGE] if isinstance(e, Mapping)]
    remaining, fitted_embeds = EMBEDS_TOTAL, []
    for embed in embeds:
        fitted_embed = fit_embed(embed, budget=remaining)
        if embed_size(fitted_embed) > remaining:
            break  # nothing of it fits any more
        remaining -= embed_size(fitted_embed)
        fitted_embeds.append(fitted_embed)
    if "embeds" in fitted:
        fitted["embeds"] = fitted_embeds
    fitted["allowed_mentions"] = NO_MENTIONS
    return FittedPayload(fitted)
