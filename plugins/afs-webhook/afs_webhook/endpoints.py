"""The receiving URLs: checked once, shown without their tokens, keyed without them.

Any host may receive (this is a generic webhook), but only over https, except a
loopback host (a local relay, a test). A URL's path and query may hold a token, so
a URL is shown as ``scheme://host`` and its path and query are secrets: the whole
of each, every query value, and every path segment that looks like a token
(:func:`looks_like_token`), wherever it sits in the path. Which URLs
already took an event is remembered in the store under a key derived from the URL
with the signing key, never under the URL itself.
"""

from __future__ import annotations

import dataclasses
import functools
import urllib.parse
from collections.abc import Sequence

from afs_core.channels.webhook import is_loopback_host, validate_webhook_url
from afs_core.errors import ConfigurationError

SETTING = "WEBHOOK_URL"
#: A path segment at least this long is a secret whatever its characters ...
TOKEN_LENGTH = 20
#: ... and one at least this long that holds a digit.
TOKEN_WITH_DIGIT_LENGTH = 8


def looks_like_token(segment: str) -> bool:
    """Whether a path segment may be a token: 8 characters or more with a digit in
    them (``pathT0KENxyz``, ``3f9c0a1b``), or 20 characters or more of anything.

    Ordinary words (``hooks``, ``events``, ``in``, ``v1``) are not: each secret is
    masked wherever it appears, in every log line of the process, so masking words
    would mangle ordinary text and hide nothing.
    """
    return len(segment) >= TOKEN_LENGTH or (
        len(segment) >= TOKEN_WITH_DIGIT_LENGTH and any("0" <= ch <= "9" for ch in segment))


def path_secrets(path: str) -> list[str]:
    """The secrets of a URL's path: the path whole (with and without its leading
    slash) when it holds more than one segment or a token, and each segment that
    looks like a token, as written and percent-decoded."""
    segments = [segment for segment in path.split("/") if segment]
    tokens = [form for segment in segments
              for form in dict.fromkeys((segment, urllib.parse.unquote(segment))) if looks_like_token(form)]
    found = list(tokens)
    if len(segments) > 1 or tokens:
        joined = "/".join(segments)
        found += [joined, "/" + joined, path]
    return found


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One receiving URL: where to post, how to show it, how to remember it."""

    url: str = dataclasses.field(repr=False)
    origin: str  # scheme://host[:port], safe to show
    label: str  # how errors name it: scheme://host/… (plus its position when two look alike)
    signing_key: bytes = dataclasses.field(repr=False)  # the channel's, which derives the key below

    @functools.cached_property
    def key(self) -> str:
        """The key it is remembered by: no part of the URL can be read back from it.
        Derived when first asked for, by the process that delivers: hashlib would add
        about 4 ms to a training process's start."""
        import hashlib
        import hmac

        message = b"afs-webhook endpoint\0" + self.url.encode("utf-8")
        return hmac.new(self.signing_key, message, hashlib.sha256).hexdigest()[:32]

    def secrets(self) -> list[str]:
        """What of the URL must never be shown: the URL whole, its path (see
        :func:`path_secrets`: each segment that looks like a token, wherever it is, but
        no ordinary word), its query and each value in the query (``?token=...``
        echoed back alone)."""
        parts = urllib.parse.urlsplit(self.url)
        if not (parts.path.strip("/") or parts.query):
            return []
        found = [self.url, *path_secrets(parts.path)]
        if parts.query:
            values = [value for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
            raw = [item.partition("=")[2] for item in parts.query.split("&")]  # as written, before unquoting
            found += [parts.query, f"{parts.path}?{parts.query}", *values, *raw]
        return list(dict.fromkeys(s for s in found if s))


def origin_of(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def parse_urls(value: str | Sequence[str]) -> list[str]:
    """The URLs of ``WEBHOOK_URL``: one, or several separated by commas."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in items):
        raise ConfigurationError(f"{SETTING} must be text: one URL or several separated by commas")
    urls = [item.strip() for item in items if item.strip()]
    if not urls:
        raise ConfigurationError(f"{SETTING} names no URL")
    return urls


def endpoints(urls: Sequence[str], key: bytes) -> tuple[Endpoint, ...]:
    """Each URL checked (https unless loopback, no user:password, none twice), with
    its label and key. Errors name a URL by position and host, never by its path."""
    checked: list[tuple[str, urllib.parse.SplitResult]] = []
    for position, url in enumerate(urls, 1):
        which = SETTING if len(urls) == 1 else f"{SETTING} (URL {position})"
        parts = validate_webhook_url(url, setting=which, hosts=(), allow_any_host=True)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" and not is_loopback_host(host):
            raise ConfigurationError(f"{which} must use https:// (host {host!r}); "
                                     "plain http is only accepted for a loopback host")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(f"{which} holds a user name or password (host {host!r}); put credentials in "
                                     "WEBHOOK_HEADERS instead, e.g. {\"Authorization\": \"Basic ...\"}")
        checked.append((url.strip(), parts))
    seen: dict[str, int] = {}
    for position, (url, _) in enumerate(checked, 1):
        if url in seen:
            raise ConfigurationError(f"{SETTING} lists the same URL twice (URL {seen[url]} and URL {position})")
        seen[url] = position
    shown = [origin_of(parts) + ("/…" if parts.path.strip("/") or parts.query else "") for _, parts in checked]
    result = []
    for position, ((url, parts), label) in enumerate(zip(checked, shown, strict=True), 1):
        if shown.count(label) > 1:
            label = f"{label} (URL {position})"
        result.append(Endpoint(url=url, origin=origin_of(parts), label=label, signing_key=key))
    return tuple(result)
