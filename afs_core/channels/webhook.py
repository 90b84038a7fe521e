"""What every webhook channel checks the same way: URLs, answers and JSON.

Webhook URL validation (with loopback allowed for tests and local relays),
``Retry-After`` parsing and the transient/permanent rule for HTTP statuses live
here once; none of it needs an HTTP library, so channels validate at
construction without importing one.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any

from afs_core.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: The longest wait a service may ask for before the event is left for later.
MAX_RETRY_AFTER = 3600.0

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    import ipaddress  # here, not at the top: every channel module loads this one at start-up

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_webhook_url(
    url: object,
    *,
    setting: str,
    hosts: Collection[str],
    path_check: Callable[[str], bool] | None = None,
    path_hint: str = "",
    allow_any_host: bool = False,
) -> urllib.parse.SplitResult:
    """``url`` parsed, or a :class:`ConfigurationError` that says what is wrong.

    Accepted: https on one of ``hosts``; http or https on a loopback host (tests,
    local relays); any host only with ``allow_any_host``. ``path_check`` applies to
    the service's own hosts and loopback alike. The URL itself never appears in
    the error, since it carries the token.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{setting} must be a webhook URL, got {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigurationError(f"{setting} is not a valid URL ({exc})") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"{setting} must start with https:// and name a host")
    loopback = is_loopback_host(host)
    if not loopback and not allow_any_host:
        if host not in hosts:
            expected = " or ".join(hosts)
            raise ConfigurationError(
                f"{setting} must point at {expected} (got host {host!r}); "
                "pass allow_any_host=True for a relay you trust"
            )
        if parts.scheme != "https":
            raise ConfigurationError(f"{setting} must use https:// (the URL carries a secret token)")
    if path_check is not None and (loopback or host in hosts) and not path_check(parts.path):
        raise ConfigurationError(f"{setting} has the wrong path; expected {path_hint}")
    return parts


def parse_retry_after(value: object, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date).

    Garbage gives ``None`` (the caller backs off on its own); the result is never
    negative and never above :data:`MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        import email.utils  # HTTP dates are rare; email.utils costs 9 ms to import

        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify_status(
    status: int, reason: str, *, retry_after: float | None = None
) -> DeliveryError | None:
    """``None`` for success; otherwise the error: 408, 429 and 5xx are transient,
    every other 4xx (and anything unexpected) permanent."""
    if 200 <= status < 300:
        return None
    if status in (408, 429) or status >= 500:
        return TransientDeliveryError(f"HTTP {status}: {reason}", retry_after=retry_after)
    return PermanentDeliveryError(f"HTTP {status}: {reason}")


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Strict JSON: a NaN that slipped through fails here, not at the service."""
    try:
        # "replace": a lone surrogate in some text becomes "?" instead of losing the event.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8", "replace")
    except ValueError as exc:
        raise PermanentDeliveryError(f"payload is not valid JSON: {exc}") from None
