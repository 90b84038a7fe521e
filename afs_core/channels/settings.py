"""Settings a channel declares once: name, how to read the text, required, secret.

The core reads them for ``from_env``, ``afs status`` names the missing ones from
the declaration, and a channel's ``secrets()`` comes from the ones marked secret,
so no channel parses its environment by hand or twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from afs_core.config import MAX_TIMEOUT, parse_bool
from afs_core.errors import ConfigurationError


class Setting(NamedTuple):
    """One setting: ``env`` is its name in the environment and ``.env``, ``param`` the
    channel's constructor keyword it fills.

    :param parse: text to value; raises ``ValueError`` (or ConfigurationError) when wrong.
    :param required: the channel cannot work without it; with none of its required
        settings present a channel is simply not configured.
    :param secret: never shown (``secrets()``, status, logs).
    :param configures: setting it alone shows the user meant to use this channel, so
        missing required settings are then an error, not "not configured".
    """

    env: str
    param: str
    parse: Callable[[str], Any] = str
    required: bool = False
    secret: bool = False
    configures: bool = False
    help: str = ""


def seconds(text: str) -> float:
    """A per-send deadline in seconds (0.1 to an hour)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0.1 <= value <= MAX_TIMEOUT:  # also refuses NaN and infinity
        raise ValueError(f"must be between 0.1 and {MAX_TIMEOUT:g} seconds")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def text_list(text: str) -> list[str]:
    """Comma-separated values, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def boolean(text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise ValueError("must be true or false")
    return value


def read_settings(settings: Sequence[Setting], env: Mapping[str, str]) -> dict[str, Any] | None:
    """Constructor keywords from ``env`` for the declared ``settings``.

    None when none of the required settings is present (the channel is not
    configured); ConfigurationError when some are present but a required one is
    missing, or when a value cannot be read ("SMTP_PORT must be a whole number, got
    'smtp'"; a secret's value is never shown). Settings left unset are left out, so
    the constructor's defaults apply.
    """
    present = {s.env: env[s.env].strip() for s in settings if (env.get(s.env) or "").strip()}
    required = [s.env for s in settings if s.required]
    if required and not any(name in present for name in required):
        meant = [s.env for s in settings if s.configures and s.env in present]
        if not meant:
            return None
        raise ConfigurationError(f"{_names(required)} missing, but {_names(meant)} set")
    missing = [name for name in required if name not in present]
    if missing:
        raise ConfigurationError(f"{_names(missing)} not set")
    values: dict[str, Any] = {}
    for setting in settings:
        if setting.env not in present:
            continue
        try:
            present[setting.env].encode("utf-8")
        except UnicodeEncodeError:  # bytes the environment held that are not UTF-8
            raise ConfigurationError(f"{setting.env} holds bytes that are not UTF-8 text (not shown)") from None
        try:
            values[setting.param] = setting.parse(present[setting.env])
        except (TypeError, ValueError) as exc:
            if setting.secret:  # the parser's own words may quote the value
                raise ConfigurationError(f"{setting.env} is not valid (the value is secret, so not shown)") from None
            raise ConfigurationError(f"{setting.env} {exc}, got {present[setting.env]!r}") from None
    return values


def _names(names: Sequence[str]) -> str:
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names)} are"
