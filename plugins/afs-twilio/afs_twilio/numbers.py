"""Phone numbers and Twilio identifiers: checked when the channel is configured, masked
wherever they are shown.

A number in the wrong form (``07700 900123``) would only fail at the first alert,
at night; here it stops the configuration instead. Errors quote a bad number (the
user needs to see which one) only when it is written with what phone numbers are
written with (digits, ``+``, spaces, brackets, dots, dashes) and is short enough to
be one; anything else may be a token pasted into the wrong setting, so it is
described, never quoted. A SID-shaped setting is never quoted either, since people
paste the auth token where the SID belongs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from afs_core.errors import ConfigurationError

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SEPARATORS = re.compile(r"[\s().-]")
#: What a value may hold, and how long it may be, to be quoted in an error.
_QUOTABLE = re.compile(r"[0-9+ ().-]{1,20}")
_SID_SHAPES = {"AC": "Account SID", "SK": "API key SID", "MG": "Messaging Service SID"}


def e164(text: str, setting: str) -> str:
    """``text`` as an E.164 number (``+`` country code and number, up to 15 digits);
    spaces, dots, dashes and brackets people write inside numbers are removed."""
    number = _SEPARATORS.sub("", text.strip())
    if not _E164.fullmatch(number):
        raise ConfigurationError(
            f"{setting}: {_shown(text.strip())} is not a phone number in E.164 form "
            "(+ then the country code and the number, e.g. +447700900123)"
        )
    return number


def _shown(text: str) -> str:
    """A bad number quoted, when it is written like one; otherwise only what is wrong
    with it: a value with letters or other signs, or a long one, may be the auth token
    pasted into the wrong setting."""
    if _QUOTABLE.fullmatch(text):
        return repr(text)
    return (f"the value given ({len(text)} characters, not shown: it holds more than digits, +, spaces, "
            "brackets, dots and dashes, or is too long for a number)")


def e164_list(numbers: str | Iterable[str], setting: str) -> tuple[str, ...]:
    """Comma-separated numbers (or a list of them), each checked; repeats are texted once."""
    items = numbers.split(",") if isinstance(numbers, str) else list(numbers)
    checked: list[str] = []
    for position, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise ConfigurationError(f"{setting} must hold phone numbers, got {type(item).__name__}")
        if item.strip():
            number = e164(item, setting if len(items) == 1 else f"{setting} (number {position})")
            if number not in checked:
                checked.append(number)
    if not checked:
        raise ConfigurationError(f"{setting} holds no phone number")
    return tuple(checked)


def sid(value: str, prefix: str, setting: str) -> str:
    """A Twilio SID: ``prefix`` and 32 hexadecimal digits. The value is never quoted."""
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(rf"{prefix}[0-9a-fA-F]{{32}}", text):
        raise ConfigurationError(
            f"{setting} must be {prefix} followed by 32 hexadecimal digits (the {_SID_SHAPES[prefix]} shown "
            f"in the Twilio console); the value given ({len(text)} characters) is not"
        )
    return text


def mask(number: str) -> str:
    """``+447700901234`` -> ``+44…1234``: enough to tell recipients apart in a report."""
    return f"{number[:3]}…{number[-4:]}" if len(number) > 7 else "…" + number[-2:]
