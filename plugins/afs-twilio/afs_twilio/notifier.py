"""``TwilioNotifier``: texts what must wake someone, one short SMS per event, to each number.

The text comes from :mod:`afs_twilio.render` (GSM-7, within the segment budget);
Twilio's answers are read in :mod:`afs_twilio.answers`. This module holds the
settings, the request (a form POST with basic auth) and the fan-out: a number that
has answered for an event (Twilio took the text, or refused it for good) is never
texted that event again, whatever else fails and is retried, even by another process.
A process killed while a request is out cannot know whether Twilio took it: that one
number may get the text a second time when the event is retried.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core import SendsDirectly
from afs_core.channels import Setting, WebhookChannel, deliver_to_each, seconds, text_list, whole_number
from afs_core.channels.webhook import is_loopback_host, parse_retry_after
from afs_core.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.redaction import Secret, redact_url, scrub
from afs_twilio import answers
from afs_twilio.numbers import e164, e164_list, mask, sid
from afs_twilio.render import render
from afs_twilio.sms import MAX_SEGMENTS, fit

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

DEFAULT_API_URL = "https://api.twilio.com"
TWILIO_HOSTS = ("api.twilio.com",)
FORM = "application/x-www-form-urlencoded"


def segment_budget(text: str) -> int:
    """``TWILIO_MAX_SEGMENTS``: 1 to 10 (ten GSM-7 segments stay under Twilio's 1,600 characters)."""
    value = whole_number(text)
    if not 1 <= value <= MAX_SEGMENTS:
        raise ValueError(f"must be between 1 and {MAX_SEGMENTS}")
    return value


def api_base(url: object, setting: str = "TWILIO_API_URL") -> str:
    """The API's base URL, without a trailing slash. Any https host is accepted (a
    proxy or a regional edge is the reason to set it); plain http only on loopback,
    since every request carries the credentials."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{setting} must be a URL such as {DEFAULT_API_URL}")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigurationError(f"{setting} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{setting} must start with https:// and name a host")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigurationError(f"{setting} must use https:// (every request carries the Twilio credentials)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(f"{setting} must not carry credentials, a query or a fragment")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class TwilioNotifier(SendsDirectly, WebhookChannel):
    """SMS through Twilio's Messages API, for ERROR and CRITICAL events by default.

    Settings: ``TWILIO_ACCOUNT_SID``; ``TWILIO_AUTH_TOKEN``, or ``TWILIO_API_KEY_SID``
    and ``TWILIO_API_KEY_SECRET``; ``TWILIO_FROM`` and/or ``TWILIO_MESSAGING_SERVICE_SID``;
    ``TWILIO_TO`` (comma-separated E.164 numbers); ``TWILIO_API_URL``,
    ``TWILIO_MAX_SEGMENTS`` (default 2), ``TWILIO_TIMEOUT`` (seconds per request).
    """

    name = "twilio"
    settings = (
        # TWILIO_TO alone decides whether the channel is on: TWILIO_ACCOUNT_SID and
        # TWILIO_AUTH_TOKEN are also read by Twilio's own tools, and having them set
        # for those must not break every other channel's start-up.
        Setting("TWILIO_TO", "to", parse=text_list, required=True, help="comma-separated E.164 numbers"),
        Setting("TWILIO_ACCOUNT_SID", "account_sid", help="AC followed by 32 hex digits"),
        Setting("TWILIO_AUTH_TOKEN", "auth_token", secret=True),
        Setting("TWILIO_API_KEY_SID", "api_key_sid", help="SK followed by 32 hex digits"),
        Setting("TWILIO_API_KEY_SECRET", "api_key_secret", secret=True),
        Setting("TWILIO_FROM", "from_number", help="an E.164 number of the account"),
        Setting("TWILIO_MESSAGING_SERVICE_SID", "messaging_service_sid", help="MG followed by 32 hex digits"),
        Setting("TWILIO_API_URL", "api_url"),
        Setting("TWILIO_MAX_SEGMENTS", "max_segments", parse=segment_budget),
        Setting("TWILIO_TIMEOUT", "timeout", parse=seconds),
    )
    required_settings = ("TWILIO_TO", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM")
    default_min_level = NotificationLevel.ERROR
    hosts = TWILIO_HOSTS
    user_agent = "afs-twilio"

    def __init__(
        self,
        to: str | Sequence[str] | None = None,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_url: str | None = None,
        max_segments: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if to is None:
            raise ConfigurationError("TWILIO_TO is not set")
        if not account_sid:
            raise ConfigurationError("TWILIO_ACCOUNT_SID is not set")
        self.to = e164_list(to, "TWILIO_TO")
        self.account_sid = sid(account_sid, "AC", "TWILIO_ACCOUNT_SID")
        self.api_key_sid = sid(api_key_sid, "SK", "TWILIO_API_KEY_SID") if api_key_sid else None
        if bool(api_key_sid) != bool(api_key_secret):
            raise ConfigurationError("TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET go together: set both")
        if not api_key_sid and not auth_token:
            raise ConfigurationError(
                "TWILIO_AUTH_TOKEN is not set (or set TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET)")
        self.auth_token = Secret(auth_token) if auth_token else None
        self.api_key_secret = Secret(api_key_secret) if api_key_secret else None
        self.from_number = e164(from_number, "TWILIO_FROM") if from_number else None
        self.messaging_service_sid = (
            sid(messaging_service_sid, "MG", "TWILIO_MESSAGING_SERVICE_SID") if messaging_service_sid else None)
        if self.from_number is None and self.messaging_service_sid is None:
            raise ConfigurationError("TWILIO_FROM is not set (or set TWILIO_MESSAGING_SERVICE_SID)")
        if max_segments is None:
            max_segments = 2
        if isinstance(max_segments, bool) or not isinstance(max_segments, int) or not 1 <= max_segments <= MAX_SEGMENTS:
            raise ConfigurationError(f"TWILIO_MAX_SEGMENTS must be a whole number from 1 to {MAX_SEGMENTS}")
        self.max_segments = max_segments
        self.api_url = api_base(DEFAULT_API_URL if api_url is None else api_url)
        super().__init__(f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json",
                         timeout=timeout, allow_any_host=True)
        # An API key when given (it can be revoked alone), else the account's token.
        user, password = ((self.api_key_sid, self.api_key_secret) if self.api_key_sid and self.api_key_secret
                          else (self.account_sid, self.auth_token))
        assert password is not None
        credentials = base64.b64encode(f"{user}:{password.reveal()}".encode()).decode("ascii")
        self._credentials = Secret(credentials)
        self._authorization = Secret(f"Basic {credentials}")

    # -- rendering ----------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        """``body``: the text; ``key``: the event's id, under which the numbers that
        have it are remembered, so a retry texts only the others."""
        return {"body": render(event, self.max_segments).text, "key": event.event_id}

    # -- sending ------------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        """Text ``message`` to every number that does not have it yet; the receipt is
        each number's message SID, by masked number."""
        body, key = self._read_message(message)
        text = fit(body, self.max_segments).text  # again: a plugin's formatter may have written it
        if not text:
            raise PermanentDeliveryError("nothing left to text once control characters and emoji were removed")
        account_error: list[AccountWideError] = []  # an error every other number would meet too

        def send(number: str) -> str:
            if account_error:
                raise account_error[0]
            try:
                return self._send(number, text)
            except AccountWideError as exc:
                account_error.append(exc)
                raise

        receipts = deliver_to_each(self, key or _digest(text), self.to, send, label=mask)
        shown: dict[str, Any] = {}
        for number, receipt in receipts.items():
            label = mask(number)
            shown[label if label not in shown else f"{label} ({number[-6:]})"] = receipt
        return shown

    @staticmethod
    def _read_message(message: Any) -> tuple[str, str]:
        if isinstance(message, str):
            return message, ""
        if isinstance(message, Mapping) and isinstance(message.get("body"), str):
            key = message.get("key")
            return message["body"], key if isinstance(key, str) else ""
        raise PermanentDeliveryError(
            f"a Twilio message must be text or a mapping with a 'body' text, got {type(message).__name__}")

    def _send(self, number: str, text: str) -> str:
        """One request: the message SID, or the typed error (the number masked in it)."""
        form = {"To": number}
        if self.from_number:
            form["From"] = self.from_number
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        form["Body"] = text
        answer: HttpAnswer | None = None
        try:
            answer = self.post(self.webhook_url, body=urllib.parse.urlencode(form).encode("ascii"),
                               headers={"Content-Type": FORM, "Authorization": self._authorization.reveal(),
                                        "Accept": "application/json"})
            return answers.read(answer, self.secrets())
        except DeliveryError as exc:
            # Masked here, before the reason is raised, stored or logged: a service (or
            # a proxy) may echo the token or the basic-auth value back.
            reason = scrub(exc.reason, self.secrets())
            reason = reason.replace(number, mask(number))  # Twilio quotes the number it refused
            if not exc.permanent:
                raise TransientDeliveryError(reason, retry_after=exc.retry_after) from None
            if answer is not None and answers.is_account_wide(answer):
                raise AccountWideError(reason) from None
            raise PermanentDeliveryError(reason) from None

    # -- what Twilio says ---------------------------------------------------------------

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        """A 429 (Twilio 20429): every number of the account waits for its Retry-After."""
        return (parse_retry_after(answer.headers.get("Retry-After")), self.webhook_url,
                answers.words(answer, self.secrets()))

    def words(self, answer: HttpAnswer) -> str:
        return answers.words(answer, self.secrets())

    def read_answer(self, answer: HttpAnswer) -> Any:
        return answers.read(answer, self.secrets())

    # -- status -------------------------------------------------------------------------

    def describe(self) -> str:
        sender = f" from {mask(self.from_number)}" if self.from_number else ""
        if self.messaging_service_sid:
            sender += f" via messaging service MG…{self.messaging_service_sid[-4:]}"
        where = "" if self.api_url == DEFAULT_API_URL else f" through {redact_url(self.api_url, 0)}"
        return f"{self.name} to {', '.join(mask(n) for n in self.to)}{sender}{where}"

    def secrets(self) -> Iterable[str]:
        declared = [s for s in super(WebhookChannel, self).secrets() if s]
        return [*declared, self._authorization.reveal(), self._credentials.reveal()]


class AccountWideError(PermanentDeliveryError):
    """A refusal of the account or the sender, not of the number asked for: the
    event's other numbers are not asked, they would be refused the same way."""


def _digest(text: str) -> str:
    """A key for a message that came without its event's id (a plugin's own text)."""
    return "body:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
