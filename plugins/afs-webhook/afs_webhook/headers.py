"""``WEBHOOK_HEADERS``: extra request headers (an ``Authorization``), all of them secret.

Read once, at configuration: a malformed value, a name HTTP does not allow, a
value with a line break (which would add a header of its own) or one that would
replace a header the channel sets is refused with a message that names the header,
never its value. A name HTTP does not allow is not quoted either: it may hold the
value (``{"Authorization: Bearer tk_...": ""}``); the message says what is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from afs_core.errors import ConfigurationError
from afs_core.redaction import Secret
from afs_webhook.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

SETTING = "WEBHOOK_HEADERS"
#: Headers the channel sets itself, or HTTP does: a user value would break the request or its signature.
RESERVED = frozenset({ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, "content-type", "content-length", "host",
                      "transfer-encoding", "connection"})

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, spaces and tabs: nothing that ends the line


def parse_headers(value: str | Mapping[str, str] | None) -> tuple[tuple[str, Secret], ...]:
    """``(name, value)`` pairs, each value kept as a :class:`~afs_core.redaction.Secret`."""
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:  # its message gives a position, never the text
            raise ConfigurationError(f"{SETTING} is not valid JSON ({exc.msg} at character {exc.pos}); "
                                     'expected an object such as {"Authorization": "Bearer ..."}') from None
        except RecursionError:
            raise ConfigurationError(f"{SETTING} is nested too deeply to be read; "
                                     'expected an object such as {"Authorization": "Bearer ..."}') from None
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{SETTING} must be a JSON object of header names to values, "
                                 f"got {type(value).__name__}")
    pairs: list[tuple[str, Secret]] = []
    seen: set[str] = set()
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigurationError(f"{SETTING} has a header name HTTP does not allow: {_what_is_wrong(name)}")
        lowered = name.lower()
        if lowered in RESERVED:
            raise ConfigurationError(f"{SETTING} may not set {name!r}: the channel sets it")
        if lowered in seen:
            raise ConfigurationError(f"{SETTING} sets {name!r} twice")
        seen.add(lowered)
        if not isinstance(text, str):
            raise ConfigurationError(f"{SETTING}: the value of {name!r} must be a string, got {type(text).__name__}")
        if not _VALUE.fullmatch(text):
            raise ConfigurationError(f"{SETTING}: the value of {name!r} must be ASCII text on one line "
                                     "(the value is secret, so not shown)")
        pairs.append((name, Secret(text.strip())))
    return tuple(pairs)


def _what_is_wrong(name: object) -> str:
    """Why ``name`` is no header name, without quoting it: a name that is not one may
    hold the value (``"Authorization: Bearer tk_..."`` written as the name)."""
    if not isinstance(name, str):
        return f"it must be text, got {type(name).__name__}"
    if not name:
        return "it is empty"
    unshown = " (the name is not shown: it may hold the value)"
    if ":" in name or any(ch.isspace() for ch in name):
        return ("it contains ':' or a space; write the value as the JSON value, not in the name, "
                'e.g. {"Authorization": "Bearer ..."}' + unshown)
    return "it may only hold letters, digits and !#$%&'*+-.^_`|~" + unshown


def header_secrets(pairs: tuple[tuple[str, Secret], ...]) -> list[str]:
    """Every value, and the credentials after an auth scheme (``Bearer <this>``)."""
    found: list[str] = []
    for _, secret in pairs:
        text = secret.reveal()
        found.append(text)
        scheme, _, credentials = text.partition(" ")
        if credentials.strip():
            found.append(credentials.strip())
    return [s for s in found if s]
