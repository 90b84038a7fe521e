"""HTTP posting for webhook channels, with a total deadline per request.

Socket timeouts only bound each socket operation, so a server that accepts the
connection and then dribbles a byte a second could hold a send forever. Here a
watchdog shuts the request's socket when the deadline passes. A URL reached
directly is posted over one kept-alive connection per host (:mod:`afs_core.channels.http1`):
the delivery thread spends a third of the time per request that urllib3's pools
cost it, and every microsecond there is taken from the training loop's GIL; nor does
the first send import urllib3 and ``requests`` (40 ms, on the same GIL). A URL
behind a proxy goes through urllib3's proxy pools (:mod:`afs_core.channels.proxied`,
loaded only then), with the proxy ``requests`` would find for it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from afs_core.channels import http1
from afs_core.channels.deadline import Deadline
from afs_core.channels.webhook import encode_json
from afs_core.errors import DeliveryError, NotSent, PermanentDeliveryError, TransientDeliveryError
from afs_core.redaction import scrub

if TYPE_CHECKING:
    import ssl

    from afs_core.channels.proxied import ProxiedPools

_current = threading.local()
logger = logging.getLogger("afs.http")


class _ScrubSecrets(logging.Filter):
    """urllib3 logs each request line at DEBUG, path and all; the path of a webhook
    holds its token. Every session's secrets are masked in those records (and in the
    line logged here for a direct request)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = scrub(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


_scrubber = _ScrubSecrets()
logging.getLogger("urllib3.connectionpool").addFilter(_scrubber)


class WatchedMixin:
    """For a connection class: the request's deadline watches its socket."""

    def _attach(self) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.attach(self)

    def connect(self) -> None:
        self._attach()
        super().connect()  # type: ignore[misc]
        self._attach()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._attach()
        super().request(*args, **kwargs)  # type: ignore[misc]


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """Certificates checked against certifi's bundle, as ``requests`` does; loaded
    once (reading the bundle takes milliseconds)."""
    global _tls_context
    if _tls_context is None:
        import ssl  # here: a plain http URL never loads it (10 ms on the delivery thread)

        import certifi

        _tls_context = ssl.create_default_context(cafile=certifi.where())
    return _tls_context


#: The most of an answer's body read (what it says is quoted, never more than a page):
#: a receiver streaming without end fills no memory. Past it the connection is not kept.
MAX_ANSWER_BYTES = 1024 * 1024
#: The most requests, and bytes, sent back to back before their answers are read. Bytes
#: are bounded so that the requests fit the socket buffers while the receiver's answers
#: wait unread: it never blocks writing an answer while this thread blocks writing.
PIPELINE_REQUESTS = 16
PIPELINE_BYTES = 64 * 1024
#: What comes after a pipeline (see ``WebhookSession._pipelined``).
_PIPELINE, _HALT, _ONE_THEN_MORE, _REST_ALONE = "pipeline", "halt", "one then more", "rest alone"
#: Less time than this left of a batch's budget: its next request is not sent.
MIN_SEND_SECONDS = 0.05
#: A request's headers for :meth:`WebhookSession.post_many`: as they are, or made as it goes out.
RequestHeaders = Mapping[str, str] | Callable[[], Mapping[str, str]] | None
#: Charsets an answer is read in; any other is read as UTF-8 (what JSON is): some of
#: Python's codecs are slow enough to outlast the deadline, or fail on their own.
CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252", "cp1252",
            "utf-16", "utf-16le", "utf-16be"}


def _dropped(connection: http1.Connection) -> bool:
    """True when a kept-alive connection was closed by the server while idle (it is
    readable: an end of file, or bytes nobody asked for); sending on it would fail."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):  # select() cannot watch a descriptor past 1023
            watch = select.poll()
            watch.register(sock, select.POLLIN)
            return bool(watch.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


#: What stays as written in a request's path (escapes included); the rest is percent-encoded.
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"


@attrs.frozen
class _Target:
    """What a URL comes to for a direct request: which connection, and the request line."""

    tls: bool
    host: str
    port: int
    path: str


def _target(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    tls = scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # What may not stand in a request line (a space, a character past ASCII) is
    # percent-encoded as UTF-8, as urllib3 does; escapes already there are kept.
    path = urllib.parse.quote(path, safe=_PATH_SAFE)
    return _Target(tls, parts.hostname, parts.port or (443 if tls else 80), path)


@attrs.frozen
class HttpAnswer:
    """What the service answered: status, headers (case-insensitive) and body text."""

    status: int
    headers: Mapping[str, str]
    text: str


class WebhookSession:
    """One connection pool per channel: posts JSON within a total deadline.

    Errors raised are :class:`~afs_core.errors.TransientDeliveryError` for
    connection failures and deadlines, with messages that never include the URL.
    """

    def __init__(self, user_agent: str = "afs-notifications", secrets: Iterable[str] = ()) -> None:
        _scrubber.secrets.update(s for s in secrets if s)
        self._headers = {"User-Agent": user_agent, "Content-Type": "application/json; charset=utf-8"}
        # Reading proxy settings on every request costs a millisecond: the proxy (or
        # none) is looked up once per URL.
        self._proxy_of: dict[str, str | None] = {}
        self._proxied: ProxiedPools | None = None
        self._targets: dict[str, _Target] = {}
        self._direct: dict[tuple[bool, str, int], http1.Connection] = {}
        #: Seconds an answer from a URL took last (alone, or a group's by answer): how many
        #: requests a pipeline within a time budget holds.
        self._answer_seconds: dict[str, float] = {}

    def _proxy(self, url: str) -> str | None:
        if url not in self._proxy_of:
            proxy = None
            if _may_have_proxies():
                from afs_core.channels.proxied import environ_proxy
                proxy = environ_proxy(url, urllib.parse.urlsplit(url).scheme.lower())
            self._proxy_of[url] = proxy
        return self._proxy_of[url]

    def post_json(self, url: str, payload: Mapping[str, Any], *, timeout: float,
                  headers: Mapping[str, str] | None = None) -> HttpAnswer:
        return self.post(url, encode_json(payload), timeout=timeout, headers=headers)

    def post(self, url: str, body: bytes, *, timeout: float, headers: Mapping[str, str] | None = None) -> HttpAnswer:
        """POST ``body`` (JSON unless ``headers`` give another Content-Type); redirects
        are never followed (a 3xx is the answer)."""
        late = TransientDeliveryError(f"no complete answer within the {timeout:.1f} s deadline")
        sent = {**self._headers, **headers} if headers else self._headers
        proxy = self._proxy(url)
        with Deadline(timeout) as deadline:
            _current.deadline = deadline
            try:
                if proxy is None:
                    answer = self._post_direct(url, body, sent, timeout)
                else:
                    if self._proxied is None:
                        from afs_core.channels.proxied import ProxiedPools
                        self._proxied = ProxiedPools()
                    answer = self._proxied.post(proxy, url, body, dict(sent), timeout)
            except Exception as exc:
                failure = _failure(exc, deadline, timeout)
                if failure is exc:
                    raise
                raise failure from None
            finally:
                _current.deadline = None
        if deadline.expired:
            raise late
        return answer

    def post_many(self, url: str, requests: Sequence[tuple[bytes, RequestHeaders]], *, timeout: float,
                  halt: Callable[[HttpAnswer], bool] | None = None,
                  budget: float | None = None) -> list[HttpAnswer | DeliveryError]:
        """POST each ``(body, headers)`` to ``url``, in order: one answer, or the error
        :meth:`post` would have raised, for each. ``headers`` may be a function, called
        as its request goes out (a signature made then is as fresh as a lone send's).
        After an answer ``halt`` says yes to (a 429), no more requests go out: the answers
        of those already sent are read, and the list is shorter than ``requests``.
        ``budget``: seconds for the whole call; a request whose turn comes after them is
        not sent (:class:`~afs_core.errors.NotSent`), and no answer is waited for past them.

        On a connection that has already answered and stayed open, the requests go out
        back to back, up to :data:`PIPELINE_REQUESTS` (and :data:`PIPELINE_BYTES`) at a
        time, and their answers are read in order (HTTP/1.1 pipelining): the receiver's
        time for one overlaps this thread's time for the next, and one write and a few
        reads carry them all. Each answer has ``timeout`` from the one before; within a
        budget, a group is as large as the receiver's last answers say fits in half of
        what is left. A new connection proves itself with one request alone first, so a
        receiver that closes after each answer is never sent a pipeline. At the first
        trouble (an answer that closes the connection, a failure, a deadline) the rest
        go one at a time, as :meth:`post` sends them. The request that met a failure is
        not sent again here: the engine's retry decides.
        """
        results: list[HttpAnswer | DeliveryError] = []
        # What goes next: a pipeline, one request alone and then pipelines, or every
        # request alone (through a proxy, and after a trouble).
        then = _PIPELINE if self._proxy(url) is None else _REST_ALONE
        halted = halt or (lambda answer: False)
        ends = None if budget is None else time.monotonic() + budget
        while len(results) < len(requests):
            left = timeout if ends is None else min(timeout, ends - time.monotonic())
            if left < MIN_SEND_SECONDS or results and ends is not None and self._answer_seconds.get(url, 0.0) > left:
                # Out of time, or (after the first request of the call, which always goes
                # with its whole time) less of it than the receiver's last answer took.
                late = NotSent("not sent: the batch's time ran out before its turn")
                results.extend(late for _ in range(len(requests) - len(results)))
                break
            if then is _PIPELINE:
                then = self._pipelined(url, requests, timeout, results, halted, ends)
                if then is _HALT:
                    break
                continue  # the time left is looked at again
            body, headers = requests[len(results)]
            began = time.monotonic()
            try:
                answer = self.post(url, body, timeout=left, headers=_made(headers))
            except DeliveryError as exc:
                results.append(exc)
                continue
            self._answer_seconds[url] = time.monotonic() - began
            results.append(answer)
            if halted(answer):
                break
            if then is _ONE_THEN_MORE:
                then = _PIPELINE
        return results

    def _pipelined(self, url: str, requests: Sequence[tuple[bytes, RequestHeaders]], timeout: float,
                   results: list[HttpAnswer | DeliveryError], halted: Callable[[HttpAnswer], bool],
                   ends: float | None) -> str:
        """Append the answers of as many of ``requests`` as go through pipelines on the
        host's kept-alive connection. Stops, and says what comes next: after a group with
        an answer ``halted`` says yes to (:data:`_HALT`); where the next request goes alone
        on a new connection (:data:`_ONE_THEN_MORE`: pipelines may follow it); after a
        trouble (:data:`_REST_ALONE`)."""
        target, key = self._target_of(url)
        while len(results) < len(requests):
            connection = self._direct.pop(key, None)
            if connection is None or _dropped(connection):
                if connection is not None:
                    connection.close()
                return _ONE_THEN_MORE  # a new connection's first request goes alone: post()
            most = PIPELINE_REQUESTS
            if ends is not None:  # as many as the receiver's last answers say fit in half the time left
                left, each = ends - time.monotonic(), self._answer_seconds.get(url)
                most = 0 if left < MIN_SEND_SECONDS else most if not each else min(most, int(left / (2 * each)))
            group: list[bytes] = []
            size = 0
            for body, given in requests[len(results):len(results) + most]:
                try:
                    headers = _made(given)
                    sent = {**self._headers, **headers} if headers else self._headers
                    head = connection.head(target.path, body, sent)
                except http1.RequestError:
                    break  # post() says why this one cannot be sent
                if group and size + len(head) + len(body) > PIPELINE_BYTES:
                    break
                group.append(head + body)
                size += len(head) + len(body)
            if len(group) < 2:
                if self._direct.setdefault(key, connection) is not connection:
                    connection.close()
                return _ONE_THEN_MORE  # nothing to gain: post() sends it
            before, began = len(results), time.monotonic()
            try:
                kept = self._answer_group(connection, target, group, timeout, ends, results)
            except BaseException:
                connection.close()
                raise
            answered = sum(isinstance(result, HttpAnswer) for result in results[before:])
            if answered:  # a deadline's cut is no answer time: it would hold back every request after
                self._answer_seconds[url] = (time.monotonic() - began) / answered
            if not kept:
                connection.close()
            elif self._direct.setdefault(key, connection) is not connection:
                connection.close()
            if any(isinstance(result, HttpAnswer) and halted(result) for result in results[before:]):
                return _HALT
            if not kept:
                return _REST_ALONE
        return _ONE_THEN_MORE

    def _answer_group(self, connection: http1.Connection, target: _Target, group: list[bytes], timeout: float,
                      ends: float | None, results: list[HttpAnswer | DeliveryError]) -> bool:
        """Send ``group`` in one write and read its answers, each within ``timeout`` of
        the one before and none past ``ends``; True when every answer came and the
        connection may carry more."""
        connection.timeout = timeout
        reader = connection.open()
        unsent: OSError | None = None
        try:
            for index in range(len(group)):
                seconds = timeout if ends is None else max(min(timeout, ends - time.monotonic()), 0.001)
                with Deadline(seconds) as deadline:
                    deadline.attach(connection)
                    try:
                        if index == 0:
                            try:
                                connection.send(b"".join(group))
                            except (BrokenPipeError, ConnectionResetError) as exc:
                                unsent = exc  # the receiver may have answered some and closed
                        answer = http1.read_answer(reader, MAX_ANSWER_BYTES)
                    except Exception as exc:
                        failure = _failure(exc if unsent is None else unsent, deadline, timeout)
                        if not isinstance(failure, DeliveryError):
                            raise
                        results.append(failure)
                        return False
                    finally:
                        deadline.detach()  # before the socket may go: its number may be another's next
                if index == len(group) - 1:
                    connection.check_drained(answer)
                self._log(target, answer)
                results.append(HttpAnswer(answer.status, answer.headers, answer_text(answer.headers, answer.body)))
                if not answer.reusable or unsent is not None:
                    return False
            return True
        finally:
            reader.close()

    def _target_of(self, url: str) -> tuple[_Target, tuple[bool, str, int]]:
        """What ``url`` comes to (worked out once), and the key of its host's connection."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        return target, (target.tls, target.host, target.port)

    def _post_direct(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        """One request on the host's kept-alive connection (made anew when the server
        closed it while idle). Not retried: a POST may have been acted on."""
        target, key = self._target_of(url)
        # Taken out while in use: a direct send from the training thread and the
        # channel's worker never share one connection.
        connection = self._direct.pop(key, None)
        if connection is not None and _dropped(connection):
            connection.close()
            connection = None
        if connection is None:
            connection = http1.Connection(target.host, target.port, timeout=timeout,
                                          context=_tls() if target.tls else None)
        connection.timeout = timeout
        deadline: Deadline | None = getattr(_current, "deadline", None)
        try:
            if deadline is not None:
                deadline.attach(connection)
            answer = connection.post(target.path, body, headers, max_body=MAX_ANSWER_BYTES,
                                     time_left=None if deadline is None else deadline.left)
        except BaseException as exc:
            if deadline is not None:
                deadline.detach()  # before the socket goes: its number may be another's next
            # Nothing was sent: a connection that has answered before is kept as it was (one
            # made for this request has not, and is no kept-alive one to pipeline on).
            if isinstance(exc, http1.RequestError) and connection.sock is not None:
                if self._direct.setdefault(key, connection) is not connection:
                    connection.close()
            else:
                connection.close()
            raise
        if deadline is not None:
            deadline.detach()  # the deadline no longer reaches this connection: kept, another request's
        if not answer.reusable or self._direct.setdefault(key, connection) is not connection:
            connection.close()
        self._log(target, answer)
        return HttpAnswer(answer.status, answer.headers, answer_text(answer.headers, answer.body))

    @staticmethod
    def _log(target: _Target, answer: http1.Answer) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # the path holds a webhook's token: masked
            # Masked as sent too: a token with a character the path percent-encodes.
            hidden = {*_scrubber.secrets, *(urllib.parse.quote(s, safe=_PATH_SAFE) for s in _scrubber.secrets)}
            logger.debug("%s:%s \"POST %s HTTP/1.1\" %s %s", target.host, target.port,
                         scrub(target.path, hidden), answer.status, len(answer.body))

    def close(self) -> None:
        if self._proxied is not None:
            self._proxied.close()
        for connection in self._direct.values():
            connection.close()
        self._direct.clear()


def _made(headers: RequestHeaders) -> Mapping[str, str] | None:
    return headers() if callable(headers) else headers


def _failure(exc: Exception, deadline: Deadline, timeout: float) -> Exception:
    """What a request's failure is to the channel: transient for a connection or an
    answer that failed (the deadline's own error when it had passed), permanent for a
    request that could never be sent or an answer that cannot be read; anything else
    (a bug) as it was."""
    failures: tuple[type[BaseException], ...] = (http1.AnswerError, OSError, *_proxy_errors())
    if isinstance(exc, failures):
        if deadline.expired:
            return TransientDeliveryError(f"no complete answer within the {timeout:.1f} s deadline")
        return TransientDeliveryError(f"connection failed: {_describe(exc)}")
    if isinstance(exc, http1.RequestError):  # nothing was sent: it never could be
        return PermanentDeliveryError(str(exc))
    if isinstance(exc, ValueError):  # an answer (or a URL) that cannot be read
        return PermanentDeliveryError("the answer could not be read (a redirect to an unreadable location?); "
                                      "not followed")
    return exc


def _may_have_proxies() -> bool:
    """False when no proxy can apply: on Linux and the like, proxies come from the
    environment alone (macOS and Windows have system settings: always asked)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return any(name.lower() in ("http_proxy", "https_proxy", "all_proxy") for name in os.environ)


def _proxy_errors() -> tuple[type[BaseException], ...]:
    """urllib3's errors, where a proxied request loaded it (nothing to catch otherwise)."""
    proxied = sys.modules.get("afs_core.channels.proxied")
    return proxied.ERRORS if proxied is not None else ()


def answer_text(headers: Any, data: bytes) -> str:
    """The body as text: in the charset the answer names, else UTF-8 (what JSON is)."""
    charset = None
    for part in (headers.get("Content-Type") or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"').strip()
    if charset is not None and charset.lower() in CHARSETS:
        try:
            return data.decode(charset, errors="replace")
        except (LookupError, UnicodeError):
            pass
    return data.decode("utf-8", errors="replace")


def _describe(exc: BaseException) -> str:
    # urllib3's messages quote the URL path (which holds the token): name the
    # failure by its class and leave the detail to the channel's secret scrubbing.
    proxied, tls = sys.modules.get("afs_core.channels.proxied"), sys.modules.get("ssl")
    kinds: dict[type[BaseException], str] = {
        **(proxied.KINDS if proxied is not None else {}),
        **({tls.SSLError: "TLS handshake failed"} if tls is not None else {}),
        ConnectionRefusedError: "could not connect",
        TimeoutError: "timed out",
        http1.ClosedBeforeAnswer: "the connection was closed before an answer",
        http1.AnswerError: "the answer could not be read",
        socket.gaierror: "could not connect",
        ConnectionError: "could not connect",
    }
    detail = _root_os_error(exc)
    for kind, text in kinds.items():
        if isinstance(exc, kind):
            return f"{text} ({detail})" if detail else text
    return f"{type(exc).__name__} ({detail})" if detail else type(exc).__name__


def _root_os_error(exc: BaseException) -> str | None:
    """The operating system's words ("Connection refused"), found in the cause chain."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None
