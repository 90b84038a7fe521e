"""Keeping secrets out of logs, reprs, errors and history.

Channels declare what is secret; everything the core writes about a delivery goes
through :func:`scrub` first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-trivial secret replaced by ``***``."""
    # Longest first, so a secret that contains another is masked whole. Even a short
    # secret is masked: a mangled message beats a leaked password.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_url(url: str, keep_path_segments: int = 1) -> str:
    """A URL safe to show: scheme, host and the first path segments, the rest masked.

    ``https://hooks.slack.com/services/T0/B0/XYZ`` becomes
    ``https://hooks.slack.com/services/***``; user info and query are dropped.
    """
    import urllib.parse  # only status output and channels with URLs need it

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # out of range: show none rather than fail a status line
        port = None
    if port:
        host = f"{host}:{port}"
    segments = [s for s in parts.path.split("/") if s]
    shown = segments[:keep_path_segments]
    path = "/" + "/".join(shown) if shown else ""
    if len(segments) > len(shown):
        path += "/" + MASK
    return f"{parts.scheme}://{host}{path}" if parts.scheme else MASK


def url_secrets(url: str, public_segments: int = 1) -> list[str]:
    """The parts of a webhook URL that must be masked wherever they appear.

    HTTP libraries quote a URL's path without its host ("with url: /services/T/B/x"),
    so the path after the public segments, and its last segment, are secrets too.
    """
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    segments = [s for s in parts.path.split("/") if s]
    private = segments[public_segments:]
    secrets = [url]
    # A piece shorter than 6 characters ("in", "hook") alone would mask that word in
    # every message; the whole URL is masked still.
    if private:
        secrets += [piece for piece in dict.fromkeys(("/".join(private), private[-1])) if len(piece) >= 6]
    if parts.query:
        secrets.append(parts.query)
        # A service may echo one value alone ("invalid key=<token>").
        secrets += [value for _, value in urllib.parse.parse_qsl(parts.query) if len(value) >= 4]
    if parts.password:
        secrets.append(parts.password)
    return secrets


class Secret:
    """A value that shows as ``***`` in reprs, f-strings, ``vars()`` dumps and tracebacks;
    :meth:`reveal` gives it back where it is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not pickled")
