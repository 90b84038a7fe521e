"""What Twilio's answers mean: a message SID, or an error to retry or to give up on.

Twilio says what went wrong in the JSON body (``code``, ``message``), so errors are
told by their code more than their status, with a hint that names the fix: the
reason is read by someone who was just woken up, or who was not and wants to know why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from afs_core.channels.webhook import classify_status, json_object, parse_retry_after
from afs_core.errors import PermanentDeliveryError, TransientDeliveryError
from afs_core.formatting import one_line
from afs_core.redaction import scrub

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

AUTHENTICATION_FAILED = 20003
TOO_MANY_REQUESTS = 20429
_CREDENTIALS = "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET)"
_SENDER = "TWILIO_FROM must be an SMS-capable number of this account (or use TWILIO_MESSAGING_SERVICE_SID)"

#: The fix for the errors people meet, by Twilio error code.
HINTS: Mapping[int, str] = {
    AUTHENTICATION_FAILED: f"authentication failed: check {_CREDENTIALS}",
    21211: "not a valid phone number: check TWILIO_TO",
    21614: "not a mobile number, so it cannot receive SMS: check TWILIO_TO",
    21608: ("a trial account can only text verified numbers: verify this one in the Twilio console "
            "(Phone Numbers > Verified Caller IDs) or upgrade the account"),
    21610: "the recipient replied STOP: they must text START to the sender before they can be texted again",
    21408: "the account may not text this country: enable it in the Twilio console (Messaging > Geo permissions)",
    21612: "Twilio cannot route a message from this sender to this number",
    21212: _SENDER,
    21606: _SENDER,
    21659: _SENDER,
    21660: _SENDER,
}
#: Errors about the account or the sender, not the recipient: every other number of
#: the same event would meet them too, so they are not asked for again.
ACCOUNT_WIDE = frozenset({AUTHENTICATION_FAILED, 21212, 21606, 21659, 21660})


def error_code(answer: HttpAnswer) -> int | None:
    code = json_object(answer.text).get("code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


#: How much of what Twilio (or a proxy) said an error quotes.
QUOTED_CHARACTERS = 200


def words(answer: HttpAnswer, secrets: Iterable[str] = ()) -> str:
    """Twilio's own explanation, ``Twilio 21211: Invalid 'To' Phone Number``, or the
    start of whatever else answered (a proxy's page), with ``secrets`` masked.

    Masked before it is cut to 200 characters: a secret the cut splits would no
    longer match, and its first part would be shown."""
    body = json_object(answer.text)
    message = body.get("message")
    code = error_code(answer)
    if isinstance(message, str) and message.strip():
        said = f"Twilio {code}: {message}" if code is not None else message
    else:
        said = f"Twilio {code}" if code is not None else (answer.text.strip() or "no body")
    secrets = list(secrets)
    return scrub(one_line(scrub(said, secrets), QUOTED_CHARACTERS), secrets)


def is_account_wide(answer: HttpAnswer) -> bool:
    return answer.status in (401, 403) or error_code(answer) in ACCOUNT_WIDE


def read(answer: HttpAnswer, secrets: Iterable[str] = ()) -> str:
    """The message SID of a 2xx answer; otherwise the typed error: invalid or
    unreachable numbers, authentication and sender errors are permanent, 20429/429
    and 5xx transient (with the Retry-After Twilio gave). What Twilio said is quoted
    with ``secrets`` (the channel's) masked."""
    retry_after = parse_retry_after(answer.headers.get("Retry-After"))
    secrets = list(secrets)
    if 200 <= answer.status < 300:
        sid = json_object(answer.text).get("sid")
        return scrub(sid, secrets) if isinstance(sid, str) and sid else words(answer, secrets)
    code = error_code(answer)
    said = words(answer, secrets)
    if code == TOO_MANY_REQUESTS:
        raise TransientDeliveryError(f"HTTP {answer.status}, {said}", retry_after=retry_after)
    hint = HINTS.get(code) if code is not None else None
    if hint is None and answer.status == 401:
        hint = HINTS[AUTHENTICATION_FAILED]
    if hint is not None:
        raise PermanentDeliveryError(f"HTTP {answer.status}, {said} ({hint})")
    raise classify_status(answer.status, said, retry_after=retry_after) or PermanentDeliveryError(said)
