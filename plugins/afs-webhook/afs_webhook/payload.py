"""The request body: an event as ``afs.event/1`` JSON, within documented sizes.

A receiver may be written in any language, so the body is plain, stable data: every
field always present (``null`` when unknown), times in RFC 3339, numbers that JSON
can carry (NaN and the infinities become the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``), user text exactly as given (control characters and all, escaped by
JSON) unless it is longer than its limit, and ``truncated`` naming what was cut.
Limits are in bytes of UTF-8, and a cut never splits a character. The JSON Schema
is shipped in the package (:func:`afs_webhook.schema.load_schema`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from afs_core import PermanentDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import ELLIPSIS
from afs_webhook.schema import SCHEMA

#: Limits, in bytes of UTF-8 (a cut text ends with "…", counted in).
TITLE_LIMIT = 1024
MESSAGE_LIMIT = 64 * 1024
DETAILS_LIMIT = 64 * 1024  # error_details
CONTEXT_TEXT_LIMIT = 64 * 1024  # each string inside context (a traceback)
CONTEXT_TEXT_LIMIT_TIGHT = 4 * 1024  # the same, when the whole body would pass BODY_LIMIT
IDENTIFIER_LIMIT = 1024  # model, run_id, source host, a metric's text value
NAME_LIMIT = 256  # a metric's name, a context key, a tag
MAX_TAGS = 64
MAX_DEPTH = 16  # context nesting; deeper values arrive as their text
#: The whole body stays under this (nginx refuses more than 1 MiB by default): past it,
#: context strings are cut to 4 KiB, then context, then metrics, are left out.
BODY_LIMIT = 512 * 1024

_WEBHOOK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def rfc3339(moment: dt.datetime) -> str:
    """``2026-11-27T12:00:00Z`` (microseconds when there are any), always UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def fit_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` within ``limit`` bytes of UTF-8 and whether it was cut. A lone surrogate
    (which UTF-8 cannot carry) becomes U+FFFD; nothing else changes."""
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
        encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text, False
    room = limit - len(ELLIPSIS.encode("utf-8"))
    if room <= 0:
        return "", True
    # Decoding with "ignore" drops the partial character a byte cut leaves at the end.
    return encoded[:room].decode("utf-8", "ignore") + ELLIPSIS, True


def number(value: float | int) -> float | int | str:
    """A number JSON can carry: NaN and the infinities as text that ``float()`` and
    JavaScript's ``Number()`` both read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


class _Builder:
    """Builds one payload, noting the JSON Pointer (RFC 6901) of every cut value."""

    def __init__(self, context_text_limit: int) -> None:
        self.truncated: list[str] = []
        self.context_text_limit = context_text_limit

    def text(self, value: str, limit: int, where: str) -> str:
        kept, cut = fit_text(value, limit)
        if cut:
            self.truncated.append(where)
        return kept

    def name(self, key: str, within: str) -> str:
        """A key cut to :data:`NAME_LIMIT`; the pointer names the key as sent."""
        kept, cut = fit_text(key, NAME_LIMIT)
        if cut:
            self.truncated.append(f"{within}/{_pointer(kept)}")
        return kept

    def optional(self, value: str | None, limit: int, where: str) -> str | None:
        return None if value is None else self.text(value, limit, where)

    def data(self, value: Any, where: str, depth: int = 0) -> Any:
        """Any context value as JSON data: containers kept, other objects as their text."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return number(value)
        if isinstance(value, str):
            return self.text(value, self.context_text_limit, where)
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return rfc3339(value)
        if depth < MAX_DEPTH:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key, item in value.items():
                    name = self.name(str(key), where)
                    out[name] = self.data(item, f"{where}/{_pointer(name)}", depth + 1)
                return out
            if isinstance(value, (list, tuple)):
                return [self.data(item, f"{where}/{index}", depth + 1) for index, item in enumerate(value)]
            if isinstance(value, (set, frozenset)):
                items = [self.data(item, f"{where}/-", depth + 1) for item in value]
                return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, ensure_ascii=False))
        try:
            shown = str(value)
        except Exception:  # a user object whose __str__ fails still leaves the event whole
            shown = f"<{type(value).__name__}>"
        return self.text(shown, self.context_text_limit, where)


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _build(event: NotificationEvent, context_text_limit: int) -> tuple[dict[str, Any], list[str]]:
    b = _Builder(context_text_limit)
    metrics: dict[str, Any] = {}
    for key, value in event.metrics.items():
        name = b.name(key, "/metrics")
        metrics[name] = (b.text(value, IDENTIFIER_LIMIT, f"/metrics/{_pointer(name)}")
                         if isinstance(value, str) else number(value))
    tags = [b.text(tag, NAME_LIMIT, f"/tags/{index}") for index, tag in enumerate(event.tags[:MAX_TAGS])]
    if len(event.tags) > MAX_TAGS:
        b.truncated.append("/tags")
    source = event.source
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "id": event.event_id,
        "type": event.event_type.value,
        "category": event.category.value,
        "level": event.level.value,
        "title": b.text(event.title, TITLE_LIMIT, "/title"),
        "message": b.text(event.message, MESSAGE_LIMIT, "/message"),
        "timestamp": rfc3339(event.timestamp),
        "model": b.optional(event.model_name, IDENTIFIER_LIMIT, "/model"),
        "run_id": b.optional(event.run_id, IDENTIFIER_LIMIT, "/run_id"),
        "epoch": event.epoch,
        "batch": event.batch,
        "cost": event.cost,
        "metrics": metrics,
        "error_details": b.optional(event.error_details, DETAILS_LIMIT, "/error_details"),
        "tags": tags,
        "context": b.data(dict(event.context), "/context"),
        "source": {
            "host": b.text(source.host, IDENTIFIER_LIMIT, "/source/host"),
            "pid": source.pid,
            "rank": source.rank,
            "world_size": source.world_size,
        },
        "truncated": [],
    }
    return payload, b.truncated


def to_payload(event: NotificationEvent) -> dict[str, Any]:
    """``event`` as an ``afs.event/1`` object whose JSON is at most :data:`BODY_LIMIT` bytes."""
    payload, truncated = _build(event, CONTEXT_TEXT_LIMIT)
    payload["truncated"] = truncated
    size = len(encode(payload))  # each size is measured once: encoding is most of this function's time
    if size > BODY_LIMIT:
        payload, truncated = _build(event, CONTEXT_TEXT_LIMIT_TIGHT)
        payload["truncated"] = truncated
        size = len(encode(payload))
    for field in ("context", "metrics"):  # what is left is bounded by the limits above
        if size <= BODY_LIMIT:
            break
        payload[field] = {}
        payload["truncated"] = [p for p in payload["truncated"] if not p.startswith(f"/{field}/")] + [f"/{field}"]
        size = len(encode(payload))
    return payload


def encode(message: Mapping[str, Any]) -> bytes:
    """The body as sent and signed: UTF-8 JSON, strict (no bare NaN), non-ASCII as is."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentDeliveryError(f"the message is not valid JSON: {exc}") from None
    # "replace": a lone surrogate in a message a plugin made becomes "?" instead of losing the event.
    return text.encode("utf-8", "replace")


def webhook_id(message: Mapping[str, Any], body: bytes) -> str:
    """The ``webhook-id`` of a message: its event id, the same on every retry. An id
    that is not safe in a header, or a message a plugin made without one, gets an id
    derived from it (or from the body) that is just as stable."""
    given = message.get("id")
    if isinstance(given, str) and _WEBHOOK_ID.fullmatch(given):
        return given
    import hashlib  # rare (a plugin's own message): not loaded for every sender

    seed = given.encode("utf-8", "replace") if isinstance(given, str) and given else body
    return "afs_" + hashlib.sha256(seed).hexdigest()[:32]
