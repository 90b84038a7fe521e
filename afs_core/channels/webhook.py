"""The webhook channel base: a channel that posts JSON to a URL, written once.

:class:`WebhookChannel` validates the URL at construction (loopback allowed for
tests and local relays), posts over one reused connection within a total
deadline, honours the waits a service asks for (a 429's Retry-After, a rate
bucket out of slots: one mechanism, :data:`HOLDS`) and turns the answer into a
receipt or a typed error. A subclass declares its settings, hosts and URL path
and writes ``format``; Slack and Discord are such subclasses. None of this imports
an HTTP library until the first send.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from afs_core.channels.base import Channel
from afs_core.config import check_timeout
from afs_core.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from afs_core.formatting import one_line
from afs_core.redaction import redact_url, scrub, url_secrets

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer, RequestHeaders, WebhookSession

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


def parse_http_url(
    url: str, *, setting: str, names: str = "a host", example: str = "",
) -> urllib.parse.SplitResult:
    """``url`` (stripped) split into its parts, or a :class:`ConfigurationError` that
    says what is wrong with ``setting``: not a URL (a bad port included), not http(s),
    no host. Every URL setting starts with these checks, worded the same way; what it
    allows next (which hosts, plain http, a path, a login) is its own to check.
    ``names`` and ``example`` complete "must start with https:// and name ...".
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigurationError(f"{setting} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{setting} must start with https:// and name {names}"
                                 + (f", e.g. {example}" if example else ""))
    return parts


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
    parts = parse_http_url(url, setting=setting)
    host = (parts.hostname or "").lower()
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
    every other 4xx (and anything unexpected) permanent; a 3xx is a redirect, never
    followed (the event would go where the settings did not say)."""
    if 200 <= status < 300:
        return None
    if status in (408, 429) or status >= 500:
        return TransientDeliveryError(f"HTTP {status}: {reason}", retry_after=retry_after)
    if 300 <= status < 400:
        return PermanentDeliveryError(f"HTTP {status}: {reason} (a redirect, not followed)")
    return PermanentDeliveryError(f"HTTP {status}: {reason}")


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Strict JSON: a NaN that slipped through fails here, not at the service."""
    try:
        # "replace": a lone surrogate in some text becomes "?" instead of losing the event.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8", "replace")
    except ValueError as exc:
        raise PermanentDeliveryError(f"payload is not valid JSON: {exc}") from None


def json_object(text: str | None) -> dict[str, Any]:
    """A service's answer body (or a record a channel stored) as a JSON object; ``{}``
    when it is empty, not JSON, or JSON but not an object (a proxy's HTML page, ``null``,
    a list). Channels read the fields they know with ``.get``, so what a service or a
    proxy sent can never make them fail."""
    if not text:
        return {}
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return {}
    return body if isinstance(body, dict) else {}


def _host_of(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url.strip()).hostname
    except ValueError:
        return None


class RateHolds:
    """What services said about later sends, by key (a webhook, a rate bucket, a whole
    service after a global 429), shared by every channel of the process posting there.

    A key has a number of sends left until a time; a 429 is a key with none left until
    its Retry-After. A send takes its slot before it goes out, so threads sharing a
    webhook cannot all fire into its last one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[int, float]] = {}  # key -> (sends left, until when: monotonic)

    def hold(self, key: str, seconds: float) -> None:
        """Nothing is posted under ``key`` for ``seconds`` from now."""
        until = time.monotonic() + max(seconds, 0.0)
        with self._lock:
            _, known_until = self._keys.get(key, (0, 0.0))
            self._keys[key] = (0, max(known_until, until))

    def limit(self, key: str, remaining: int, reset_after: float) -> None:
        """``remaining`` sends are left under ``key`` for the next ``reset_after`` seconds."""
        now = time.monotonic()
        until = now + max(reset_after, 0.0)
        with self._lock:
            known = self._keys.get(key)
            if known is not None and known[1] > now and abs(known[1] - until) < 1.0:
                remaining = min(remaining, known[0])  # an older answer arriving late cannot refill it
            self._keys[key] = (remaining, until)

    def reserve(self, keys: Iterable[str]) -> float:
        """Seconds to wait before posting under ``keys``; 0 means go now (and a slot
        was taken from each key that counts them)."""
        now = time.monotonic()
        with self._lock:
            current = [(key, self._keys[key]) for key in keys if key in self._keys and self._keys[key][1] > now]
            wait = max([until - now for _, (left, until) in current if left <= 0] + [0.0])
            if wait > 0:
                return wait
            for key, (left, until) in current:
                self._keys[key] = (left - 1, until)
            return 0.0

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


#: The process's holds: a 429 from one channel makes every channel posting there wait.
HOLDS = RateHolds()


class WebhookChannel(Channel):
    """A channel that posts JSON to a webhook URL.

    Declare ``settings`` (the URL as ``param="webhook_url"``, a ``timeout`` if it
    has one), ``hosts`` (the service's own, https only), ``url_path`` and write
    ``format``. Override the ``read_answer``/``rate_limited``/``learn`` steps only
    where the service speaks differently from plain HTTP statuses.
    """

    #: The service's own hosts; any other needs ``allow_any_host=True`` (a relay you trust).
    hosts: ClassVar[tuple[str, ...]] = ()
    #: The path a URL on those hosts must have, and how to say it when it does not.
    url_path: ClassVar[re.Pattern[str] | None] = None
    url_hint: ClassVar[str] = ""
    #: On a loopback host (tests, a local relay) any path is accepted.
    loopback_any_path: ClassVar[bool] = False
    #: Sent as the User-Agent header.
    user_agent: ClassVar[str] = "afs-notifications"
    default_timeout: ClassVar[float] = 10.0

    def __init__(self, webhook_url: str, *, timeout: float | None = None, allow_any_host: bool = False) -> None:
        validate_webhook_url(webhook_url, setting=self._setting_name("webhook_url", "WEBHOOK_URL"), hosts=self.hosts,
                             path_check=self._path_check(webhook_url), path_hint=self.url_hint,
                             allow_any_host=allow_any_host)
        self.webhook_url = self.normalise_url(webhook_url.strip())
        setting = self._setting_name("timeout", "timeout")
        self.timeout = self.default_timeout if timeout is None else check_timeout(timeout, setting)
        self._public_segments = self.public_segments(urllib.parse.urlsplit(self.webhook_url).path)
        self._session: WebhookSession | None = None

    def _path_check(self, url: object) -> Callable[[str], bool] | None:
        pattern = self.url_path
        if pattern is None:
            return None
        anywhere = self.loopback_any_path and isinstance(url, str) and is_loopback_host(_host_of(url))
        return lambda path: anywhere or pattern.match(path) is not None

    @classmethod
    def _setting_name(cls, param: str, default: str) -> str:
        return next((s.env for s in cls.settings if s.param == param), default)

    # -- what a subclass may change ---------------------------------------------------

    def normalise_url(self, url: str) -> str:
        """The URL as posted to (a service's preferred host, a required query)."""
        return url

    def public_segments(self, path: str) -> int:
        """How many leading path segments are safe to show; the rest is the secret."""
        return 0

    def hold_keys(self) -> tuple[str, ...]:
        """Whose waits this channel keeps to before posting: its own webhook's."""
        return (self.webhook_url,)

    def learn(self, answer: HttpAnswer) -> None:
        """What an answer says about later sends (a bucket out of slots: hold it)."""

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        """For a 429: (the wait the service asked for, if it said, the key to hold, what
        to say). With no wait given, the key is held for a second and the engine backs off."""
        return parse_retry_after(answer.headers.get("Retry-After")), self.webhook_url, "rate limited"

    def words(self, answer: HttpAnswer) -> str:
        """What the service said, short and safe to log."""
        return self.quote(answer.text) or "no body"

    def quote(self, text: str, limit: int = 200) -> str:
        """``text`` from the service on one line, its secrets masked before it is cut to
        ``limit`` characters (cut first, a secret across the cut would show in part)."""
        return one_line(scrub(text.strip(), self.secrets()), limit)

    def read_answer(self, answer: HttpAnswer) -> Any:
        """The receipt of a 2xx answer; otherwise the typed error for its status."""
        said = self.words(answer)
        error = classify_status(answer.status, said, retry_after=parse_retry_after(answer.headers.get("Retry-After")))
        if error is not None:
            raise error
        return said

    # -- sending ----------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a {self.name or 'webhook'} message must be a JSON object, "
                                         f"got {type(message).__name__}")
        return self.read_answer(self.post(self.webhook_url, message))

    def post(
        self, url: str, payload: Mapping[str, Any] | None = None, *, body: bytes | None = None,
        headers: Mapping[str, str] | None = None, hold_keys: Iterable[str] | None = None,
    ) -> HttpAnswer:
        """POST ``payload`` as JSON (or ``body`` as given, with its Content-Type in
        ``headers``) to ``url`` within the channel's timeout, after any wait a service
        asked for under ``hold_keys`` (default :meth:`hold_keys`). Returns the answer;
        raises the transient error of a failed connection, a deadline or a 429.

        For a channel that sends one event as several requests (several chats, several
        phone numbers), each call is one request with its own deadline.
        """
        deadline = time.monotonic() + self.timeout
        keys = tuple(self.hold_keys() if hold_keys is None else hold_keys)
        self._keep_to_holds(deadline, keys)
        session = self._open_session()
        left = max(deadline - time.monotonic(), 0.1)
        if body is None:
            answer = session.post_json(url, payload or {}, timeout=left, headers=headers)
        else:
            answer = session.post(url, body, timeout=left, headers=headers)
        return self._heard(answer)

    def post_many(
        self, url: str, requests: Sequence[tuple[bytes, RequestHeaders]], *,
        hold_keys: Iterable[str] | None = None, budget: float | None = None,
    ) -> list[HttpAnswer | DeliveryError]:
        """:meth:`post` for several ``(body, headers)`` to one ``url``, in order, sent back
        to back on a kept-alive connection where the receiver allows it (see
        :meth:`~afs_core.channels.http.WebhookSession.post_many`): for each, the answer or
        the error :meth:`post` would have raised. Each request keeps to the holds before
        it goes; after a 429 nothing more is sent until the hold it set is kept to (one
        that outlasts the deadline fails the rest, unsent). ``budget``: seconds for the
        whole call, waits included; what is not sent within them is
        :class:`~afs_core.errors.NotSent`."""
        keys = tuple(self.hold_keys() if hold_keys is None else hold_keys)
        ends = None if budget is None else time.monotonic() + budget
        results: list[HttpAnswer | DeliveryError | None] = [None] * len(requests)
        waiting = list(range(len(requests)))
        while waiting:
            going: list[int] = []
            for index in waiting:
                try:
                    self._keep_to_holds(time.monotonic() + self.timeout if ends is None else ends, keys)
                    going.append(index)
                except TransientDeliveryError as exc:
                    results[index] = exc
            left = None if ends is None else ends - time.monotonic()
            answers = self._open_session().post_many(url, [requests[i] for i in going], timeout=self.timeout,
                                                     halt=lambda answer: answer.status == 429, budget=left)
            for index, answer in zip(going, answers, strict=False):
                if not isinstance(answer, DeliveryError):
                    try:
                        answer = self._heard(answer)
                    except DeliveryError as exc:
                        answer = exc
                results[index] = answer
            waiting = going[len(answers):]  # after a 429: asked about the hold again
        return [result for result in results if result is not None]

    def _open_session(self) -> WebhookSession:
        if self._session is None:
            from afs_core.channels.http import WebhookSession  # loaded on the first send only

            self._session = WebhookSession(user_agent=self.user_agent, secrets=self.secrets())
        return self._session

    def _heard(self, answer: HttpAnswer) -> HttpAnswer:
        """What ``answer`` says about later sends, learnt; a 429 holds its key and raises."""
        self.learn(answer)
        if answer.status == 429:
            wait, key, what = self.rate_limited(answer)
            HOLDS.hold(key, 1.0 if wait is None else wait)
            raise TransientDeliveryError(f"HTTP 429: {what}", retry_after=wait)
        return answer

    def _keep_to_holds(self, deadline: float, keys: tuple[str, ...]) -> None:
        """Wait out a hold that ends within this send's deadline; report a longer one
        (the engine then retries when it ends). Asked again after each wait: a hold
        may have begun meanwhile."""
        while True:
            wait = HOLDS.reserve(keys)
            if wait <= 0:
                return
            if time.monotonic() + wait >= deadline:
                raise TransientDeliveryError(f"the service asked to wait {wait:.2f} s more",
                                             retry_after=min(wait, MAX_RETRY_AFTER))
            time.sleep(wait)

    # -- status -----------------------------------------------------------------------

    def describe(self) -> str:
        return f"{self.name or type(self).__name__} {redact_url(self.webhook_url, self._public_segments)}"

    def secrets(self) -> Iterable[str]:
        return [*url_secrets(self.webhook_url, public_segments=self._public_segments), *super().secrets()]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
