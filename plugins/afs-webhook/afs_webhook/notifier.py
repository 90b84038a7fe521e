"""``WebhookNotifier``: posts each event, signed, to one or several HTTP endpoints.

The body is rendered once (:mod:`afs_webhook.payload`); the signature is made for
each request as it goes out (:mod:`afs_webhook.signing`), so a retry carries the
same ``webhook-id`` and a fresh, valid timestamp. With several URLs a retry goes
only to those that did not take the event yet (``deliver_to_each``). Posting,
deadlines and 429s come from :class:`~afs_core.channels.webhook.WebhookChannel`;
this module says what a receiver's answer means.
"""

from __future__ import annotations

import functools
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core import PermanentDeliveryError, SendsDirectly
from afs_core.channels import Setting, WebhookChannel, deliver_to_each, seconds
from afs_core.channels.webhook import parse_retry_after
from afs_core.errors import ConfigurationError, DeliveryError, NotSent, TransientDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import ELLIPSIS, strip_control
from afs_core.redaction import Secret, scrub
from afs_webhook import endpoints as _endpoints
from afs_webhook.endpoints import Endpoint, origin_of
from afs_webhook.headers import header_secrets, parse_headers
from afs_webhook.payload import encode, to_payload, webhook_id
from afs_webhook.signing import SECRET_PREFIX, decode_secret, signature_headers

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

#: A signing key shorter than this is refused (the spec asks for 24 to 64 bytes).
MIN_KEY_BYTES = 16
#: How much of a refusing receiver's body an error quotes.
QUOTED_CHARACTERS = 200
#: How much of a body is masked to quote it: far more than is quoted, so that a secret
#: running past the quote's end is masked whole, not cut (its start would show).
READ_CHARACTERS = 64 * 1024
#: How an error names a redirect whose ``Location`` is no URL.
UNREADABLE_LOCATION = " to an unreadable location"


class WebhookNotifier(SendsDirectly, WebhookChannel):
    """Generic signed-webhook channel (Standard Webhooks).

    Settings: ``WEBHOOK_URL`` (one URL, or several separated by commas),
    ``WEBHOOK_SECRET`` (``whsec_`` + base64), ``WEBHOOK_HEADERS`` (a JSON object of
    extra headers, every value secret), ``WEBHOOK_TIMEOUT`` (seconds, a total
    deadline per request).
    """

    name = "webhook"
    settings = (
        Setting("WEBHOOK_URL", "webhook_url", required=True, secret=True,
                help="https URL(s) receiving the events, separated by commas"),
        Setting("WEBHOOK_SECRET", "secret", required=True, secret=True,
                help="whsec_ + base64 key the requests are signed with (Standard Webhooks)"),
        Setting("WEBHOOK_HEADERS", "headers", secret=True,
                help='JSON object of extra headers, e.g. {"Authorization": "Bearer ..."}'),
        Setting("WEBHOOK_TIMEOUT", "timeout", parse=seconds, help="seconds per request (default 10)"),
    )
    user_agent = "afs-webhook"

    def __init__(
        self,
        webhook_url: str | Sequence[str] | None = None,
        secret: str | None = None,
        headers: str | Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        if webhook_url is None:  # WebhookNotifier(): from .env and the environment
            given = self.settings_from_env({"secret": secret, "headers": headers, "timeout": timeout})
            webhook_url, secret = given["webhook_url"], given.get("secret")
            headers, timeout = given.get("headers"), given.get("timeout")
        if not secret:
            raise ConfigurationError("WEBHOOK_SECRET is not set: every request is signed (Standard Webhooks); "
                                     "make one with: python -c 'import afs_webhook; print(afs_webhook.new_secret())'")
        try:
            key = decode_secret(secret)
        except ValueError as exc:
            raise ConfigurationError(f"WEBHOOK_SECRET {exc} (the value is secret, so not shown)") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigurationError(f"WEBHOOK_SECRET is too short: its key must be at least {MIN_KEY_BYTES} bytes "
                                     "(24 to 64 recommended; afs_webhook.new_secret() makes 32)")
        self.secret = Secret(secret.strip())
        self.headers = parse_headers(headers)
        self.endpoints: tuple[Endpoint, ...] = _endpoints.endpoints(_endpoints.parse_urls(webhook_url), key)
        super().__init__(self.endpoints[0].url, timeout=timeout, allow_any_host=True)
        if len(self.endpoints) > 1:
            # Each event to every URL, one request after another, each with its timeout: one
            # event a batch, so a claim's lease is three times that, not sixteen times.
            setattr(self, "batch_size", 1)  # noqa: B010 - a class setting, made this instance's
            self.batch_timeouts = len(self.endpoints)
        #: Wall-clock seconds for the signature timestamp (replaceable in tests).
        self.clock: Callable[[], float] = time.time
        self._posting = threading.local()  # which URL this thread is posting to, for a 429's hold

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        return to_payload(event)

    # -- sending --------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        """Post ``message`` (a JSON object) to every URL that has not taken it yet.

        Returns the receiver's answer (``"HTTP 200: ok"``); with several URLs, a dict
        of the answers by URL label, for the URLs this call posted to.
        """
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a webhook message must be a JSON object, got {type(message).__name__}")
        body = encode(message)
        msg_id = webhook_id(message, body)
        by_key = {endpoint.key: endpoint for endpoint in self.endpoints}
        receipts = deliver_to_each(self, msg_id, list(by_key), lambda key: self._send(by_key[key], msg_id, body),
                                   label=lambda key: by_key[key].label)
        if len(self.endpoints) == 1:
            return next(iter(receipts.values()))
        return {by_key[key].label: receipt for key, receipt in receipts.items()}

    #: A burst to one URL goes out as one batch: its requests back to back on the kept-alive
    #: connection, each still one signed event (see :meth:`deliver_batch`), all within one
    #: timeout: what does not fit is sent by the next batch, at once.
    batch_size = 16
    batch_timeouts = 1

    def deliver_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Several messages to a single URL: each its own signed request, as
        :meth:`deliver` sends it, but sent back to back on the kept-alive connection
        and answered in order (HTTP/1.1 pipelining), so a burst or a backlog is not
        one round trip per event. The receiver sees the same requests in the same
        order. With several URLs, one :meth:`deliver` each (what each URL took is
        remembered per event)."""
        if len(self.endpoints) != 1:
            return super().deliver_batch(messages)
        endpoint = self.endpoints[0]
        results: list[Any] = [None] * len(messages)
        going: list[int] = []
        requests: list[tuple[bytes, Callable[[], dict[str, str]]]] = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):
                results[index] = PermanentDeliveryError(
                    f"a webhook message must be a JSON object, got {type(message).__name__}")
                continue
            try:
                body = encode(message)
            except DeliveryError as exc:
                results[index] = exc
                continue
            going.append(index)
            # Signed as it goes out: one sent alone after a trouble is as fresh as deliver()'s.
            requests.append((body, functools.partial(self._signed, webhook_id(message, body), body)))
        self._posting.url = endpoint.url
        try:
            answers = self.post_many(endpoint.url, requests, hold_keys=(endpoint.url,), budget=self.timeout)
            for index, answer in zip(going, answers, strict=True):
                try:
                    if isinstance(answer, DeliveryError):
                        raise answer
                    results[index] = str(self.read_answer(answer))
                except DeliveryError as exc:
                    results[index] = self._scrubbed(exc)
                except Exception as exc:  # classified by the core, as from deliver(); the others keep theirs
                    results[index] = exc
        finally:
            self._posting.url = None
        return results

    def _signed(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The request's headers: the extra ones, and a signature made now, for this attempt."""
        key = decode_secret(self.secret.reveal())
        headers = {name: value.reveal() for name, value in self.headers}
        headers.update(signature_headers(key, msg_id, body, now=self.clock()))
        return headers

    def _scrubbed(self, exc: DeliveryError) -> DeliveryError:
        # Scrubbed here too: deliver_to_each keeps a refusal's reason in the store.
        if isinstance(exc, NotSent):
            return exc  # nothing was sent: no words of a receiver's in it
        kind = PermanentDeliveryError if exc.permanent else TransientDeliveryError
        return kind(scrub(exc.reason, self.secrets()), retry_after=exc.retry_after)

    def _send(self, endpoint: Endpoint, msg_id: str, body: bytes) -> str:
        """One signed request; the timestamp is taken now, for this attempt."""
        headers = self._signed(msg_id, body)
        self._posting.url = endpoint.url
        try:
            # A redirect to a Location that is no URL fails here, for this URL alone
            # (the core makes requests' bare ValueError a permanent error).
            answer = self.post(endpoint.url, body=body, headers=headers, hold_keys=(endpoint.url,))
            return str(self.read_answer(answer))
        except DeliveryError as exc:
            raise self._scrubbed(exc) from None
        finally:
            self._posting.url = None

    # -- what a receiver says -------------------------------------------------------

    def hold_keys(self) -> tuple[str, ...]:
        """A 429 holds back the URL that said it, not the others."""
        return (self._posting_url(),)

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        return parse_retry_after(answer.headers.get("Retry-After")), self._posting_url(), "rate limited"

    def words(self, answer: HttpAnswer) -> str:
        """The body's first 200 characters, on one line, without control characters,
        every secret masked. Masked before it is cut: a secret cut in two by the quote's
        end would no longer match, and its first part would be shown."""
        secrets = list(self.secrets())
        body = answer.text.strip()
        text = scrub(body[:READ_CHARACTERS], secrets)
        if len(body) > READ_CHARACTERS and len(text) < QUOTED_CHARACTERS + max(map(len, secrets), default=0):
            text = scrub(body, secrets)  # masking shrank the window so far that its cut end could show
        head = " ".join(strip_control(text[:QUOTED_CHARACTERS], keep=" \t\n").split())
        head = scrub(head, secrets)  # a secret the receiver wrapped over lines is whole again
        if not head:
            return "no body"
        return head + (ELLIPSIS if len(text) > QUOTED_CHARACTERS else "")

    def read_answer(self, answer: HttpAnswer) -> str:
        """2xx: delivered; 408, 429, 5xx: transient (Retry-After honoured); a redirect
        and every other 4xx: permanent."""
        if 300 <= answer.status < 400:
            raise PermanentDeliveryError(f"HTTP {answer.status}: a redirect{self._redirect_target(answer)}, "
                                         "not followed; set WEBHOOK_URL to the address the receiver really answers on")
        said = super().read_answer(answer)  # raises for everything but 2xx; else what words() made of it
        return f"HTTP {answer.status}: {said}"

    def _redirect_target(self, answer: HttpAnswer) -> str:
        """`` to https://host`` for a redirect's ``Location``; ``""`` without one; and
        `` to an unreadable location`` for one that is no URL (``http://[oops/``): the
        receiver's mistake is this URL's permanent failure, never an error that would
        stop the event's other URLs."""
        location = answer.headers.get("Location")
        if not location or not location.strip():
            return ""
        try:
            target = urllib.parse.urlsplit(urllib.parse.urljoin(self._posting_url(), location.strip()))
            shown = origin_of(target) if target.scheme and target.hostname else ""
        except ValueError:  # an unclosed IPv6 bracket, a port out of range
            return UNREADABLE_LOCATION
        return f" to {shown}" if shown else ""

    def _posting_url(self) -> str:
        return getattr(self._posting, "url", None) or self.webhook_url

    # -- status ---------------------------------------------------------------------

    def describe(self) -> str:
        return f"{self.name or type(self).__name__} {', '.join(endpoint.origin for endpoint in self.endpoints)}"

    def secrets(self) -> Iterable[str]:
        # The channel's declared settings, but not WebhookChannel's own reading of the
        # first URL, which would mask its last path segment even when it is a word
        # ("/in"): each endpoint says which parts of its URL are secret. Worked out
        # once for these settings (a delivery asks up to three times).
        basis = (self.secret, self.headers, self.endpoints)
        cached = getattr(self, "_secrets_for", None)
        if cached is not None and cached[0] == basis:
            return list(cached[1])
        found = list(super(WebhookChannel, self).secrets())
        for endpoint in self.endpoints:
            found += endpoint.secrets()
        secret = self.secret.reveal()
        found += [secret, secret[len(SECRET_PREFIX):]]
        found += header_secrets(self.headers)
        result = list(dict.fromkeys(s for s in found if s))
        self._secrets_for = (basis, tuple(result))
        return result
