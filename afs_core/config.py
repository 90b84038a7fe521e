"""Reading settings: ``.env`` for convenience, the real environment always winning.

Channels receive the merged settings as a plain mapping, so ``from_env`` is easy
to test and the process environment is never modified.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from afs_core.errors import ConfigurationError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def find_env_file(start: str | None = None) -> str | None:
    """The nearest ``.env`` file from ``start`` (the working directory) upwards."""
    directory = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(directory, ".env")
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def load_env(dotenv_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The settings: ``.env`` values (``dotenv_path``, or the nearest ``.env`` found
    from the working directory upwards) overlaid by the process environment."""
    if dotenv_path is None:
        path = find_env_file()
    else:
        path = os.fspath(dotenv_path)
        if not os.path.isfile(path):
            raise ConfigurationError(f"env file {path!r} does not exist")
    values: dict[str, str] = {}
    if path is not None:
        from dotenv import dotenv_values  # parsing is python-dotenv's job; only when needed

        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    values.update(os.environ)
    return values


def parse_bool(text: str) -> bool | None:
    """``true/yes/on/1`` and ``false/no/off/0`` in any case; None for anything else."""
    raw = text.strip().lower()
    return True if raw in _TRUE else False if raw in _FALSE else None


def env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip()
    if raw == "":
        return default
    value = parse_bool(raw)
    if value is None:
        raise ConfigurationError(f"{key} must be true or false, got {raw.lower()!r}")
    return value


def _env_number(env: Mapping[str, str], key: str, default: Any, minimum: Any, parse: Any, kind: str) -> Any:
    raw = env.get(key, "").strip()
    if raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be {kind}, got {raw!r}") from None
    if not value >= minimum:  # also rejects NaN
        raise ConfigurationError(f"{key} must be at least {minimum}, got {raw!r}")
    return value


def env_float(env: Mapping[str, str], key: str, default: float, *, minimum: float = 0.0) -> float:
    return float(_env_number(env, key, default, minimum, float, "a number"))


def env_int(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    return int(_env_number(env, key, default, minimum, int, "a whole number"))


def env_duration(env: Mapping[str, str], key: str, default: float | None = None) -> float | None:
    """A duration setting (``90s``, ``30m``, ``2h``, ``1h30m``, plain seconds) in seconds;
    ``default`` when it is unset or empty."""
    raw = env.get(key, "").strip()
    if raw == "":
        return default
    try:
        return parse_duration(raw)
    except ValueError:
        raise ConfigurationError(
            f"{key} must be a duration such as 90s, 30m, 2h or 1h30m (a plain number is seconds), got {raw!r}"
        ) from None


MAX_TIMEOUT = 3600.0


def check_timeout(value: object, setting: str) -> float:
    """A per-send deadline in seconds: a finite number from 0.1 to an hour."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{setting} must be a number of seconds, got {value!r}") from None
    if not 0.1 <= seconds <= MAX_TIMEOUT:  # also rejects NaN and infinity
        raise ConfigurationError(f"{setting} must be between 0.1 and {MAX_TIMEOUT:g} seconds, got {value!r}")
    return seconds


def env_list(env: Mapping[str, str], key: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [part.strip() for part in env.get(key, "").split(",") if part.strip()]


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1h30m``; ``ValueError`` (which
    says what is accepted) for anything else, zero, or a negative value."""
    import re

    cleaned = text.strip().lower().replace(" ", "")
    parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[smhd])+)|(\d+(?:\.\d+)?)", cleaned)
    if parts is None:
        raise ValueError(f"{text!r} is not a duration (write 90s, 30m, 2h or 1h30m)")
    if parts.group(2) is not None:
        seconds = float(parts.group(2))
    else:
        seconds = sum(float(number) * _DURATION_UNITS[unit]
                      for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", cleaned))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration above zero")
    return seconds
