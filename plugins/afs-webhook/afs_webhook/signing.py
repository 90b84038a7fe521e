"""Standard Webhooks signatures: made for each request, checked by :func:`verify`.

The spec (https://www.standardwebhooks.com) is what receiver authors already know:
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body``, keyed with the bytes a
``whsec_`` secret encodes). :func:`verify` is for receivers written without the
``standardwebhooks`` package; it needs nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
#: The header names of the spec, in the lower case HTTP/2 sends them in.
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
#: How far a timestamp may be from the receiver's clock, as the spec recommends (5 minutes).
DEFAULT_TOLERANCE = 300

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


class WebhookVerificationError(ValueError):
    """A request is not a genuine, fresh AFS webhook: answer it with 400 or 401 and
    ignore it. The message says why and never quotes the secret."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes (the spec asks
    for 24 to 64). Give the same text to ``WEBHOOK_SECRET`` and to the receiver."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret encodes (padded or unpadded standard base64).

    Raises ``ValueError`` saying what is wrong with its shape, never quoting it.
    """
    if not isinstance(secret, str):
        raise ValueError(f"must be text ({SECRET_PREFIX}...), got {type(secret).__name__}")
    secret = secret.strip()
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} followed by the base64 key")
    encoded = secret[len(SECRET_PREFIX):]
    if not encoded:
        raise ValueError(f"has nothing after {SECRET_PREFIX!r}")
    if not _BASE64.fullmatch(encoded) or len(encoded.rstrip("=")) % 4 == 1:
        raise ValueError(f"is not {SECRET_PREFIX!r} followed by standard base64 (A-Z, a-z, 0-9, +, /, = padding)")
    bare = encoded.rstrip("=")
    try:
        key = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except ValueError:
        raise ValueError(f"is not {SECRET_PREFIX!r} followed by valid base64") from None
    if not key:
        raise ValueError("encodes an empty key")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one request."""
    import hashlib  # here, not at the top: a training process builds the channel, its courier signs
    import hmac

    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signature_headers(key: bytes, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, timestamped ``now`` (default: the clock)."""
    timestamp = math.floor(time.time() if now is None else now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(key, msg_id, timestamp, body),
    }


def verify(
    body: bytes | str, headers: Mapping[str, str], secret: str, tolerance: float = DEFAULT_TOLERANCE,
    *, now: float | None = None,
) -> Any:
    """Check an AFS webhook request as it arrived; return its JSON body, parsed.

    ``body`` is the raw request body (the exact bytes: re-serialised JSON will not
    verify), ``headers`` the request's headers (any case), ``secret`` the
    ``whsec_...`` text given to ``WEBHOOK_SECRET``. The signature is compared in
    constant time; any one of several space-separated signatures may match (as
    during a secret rotation). A timestamp more than ``tolerance`` seconds before or
    after ``now`` (default: the clock) is refused, so a captured request cannot be
    replayed later. Deduplicate on ``webhook-id``: a retry carries the same one.

    Raises :class:`WebhookVerificationError` for a request that fails any check, and
    ``ValueError`` for a ``secret`` that is not ``whsec_`` + base64.
    """
    try:
        key = decode_secret(secret)
    except ValueError as exc:
        raise ValueError(f"the secret {exc}") from None
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError("tolerance must be a finite number of seconds, 0 or more")
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            raise WebhookVerificationError("the body is not valid text") from None
    elif not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be the raw request body (bytes or str), got {type(body).__name__}")
    raw = bytes(body)
    found = {str(name).lower(): value for name, value in headers.items()}
    given = {name: found.get(name) for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)}
    missing = [name for name, value in given.items() if not isinstance(value, str) or not value]
    if missing:
        raise WebhookVerificationError(f"missing header {', '.join(missing)}")
    msg_id, stamp, signatures = (str(given[name]) for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not _TIMESTAMP.fullmatch(stamp.strip()):
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} is not a number of Unix seconds")
    timestamp = int(stamp.strip())
    try:
        msg_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no sender could have signed it
        raise WebhookVerificationError(f"{ID_HEADER} is not valid text") from None
    expected = sign(key, msg_id, timestamp, raw).encode("ascii")
    # Every candidate is compared, in constant time each, so the answer's timing
    # says nothing about which one came close.
    import hmac

    matched = False
    for candidate in signatures.split(" "):
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    if not matched:
        raise WebhookVerificationError("no matching signature (wrong secret, or the body or headers were changed)")
    clock = time.time() if now is None else now
    if timestamp < clock - tolerance:
        raise WebhookVerificationError(f"the timestamp is more than {tolerance:g} s old (a replayed request?)")
    if timestamp > clock + tolerance:
        raise WebhookVerificationError(f"the timestamp is more than {tolerance:g} s in the future (check the clocks)")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the signature is valid but the body is not JSON") from None
    except RecursionError:  # validly signed, but nested deeper than the parser goes: not an AFS body
        raise WebhookVerificationError("the signature is valid but the body is JSON nested too deeply") from None
