"""HTTP posting for webhook channels, with a total deadline per request.

``requests`` only bounds each socket operation, so a server that accepts the
connection and then dribbles a byte a second could hold a send forever. Here a
watchdog shuts the request's socket when the deadline passes. Needs ``requests``,
which the HTTP channel distributions declare; ``import afs_core`` never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from afs_core.channels.deadline import Deadline
from afs_core.channels.webhook import encode_json
from afs_core.errors import PermanentDeliveryError, TransientDeliveryError
from afs_core.redaction import scrub

_current = threading.local()


class _ScrubSecrets(logging.Filter):
    """urllib3 logs each request line at DEBUG, path and all; the path of a webhook
    holds its token. Every session's secrets are masked in those records."""

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


class _WatchedMixin:
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


class _HTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


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
        self._session = requests.Session()
        adapter = _DeadlineAdapter(pool_connections=2, pool_maxsize=4, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._headers = {"User-Agent": user_agent, "Content-Type": "application/json; charset=utf-8"}
        # Reading proxy settings and ~/.netrc on every request costs a millisecond;
        # proxies are looked up once per URL instead, and webhooks need no netrc.
        self._session.trust_env = False
        self._proxies: dict[str, dict[str, str]] = {}

    def post_json(self, url: str, payload: Mapping[str, Any], *, timeout: float,
                  headers: Mapping[str, str] | None = None) -> HttpAnswer:
        return self.post(url, encode_json(payload), timeout=timeout, headers=headers)

    def post(self, url: str, body: bytes, *, timeout: float, headers: Mapping[str, str] | None = None) -> HttpAnswer:
        """POST ``body`` (JSON unless ``headers`` give another Content-Type); redirects
        are never followed (a 3xx is the answer)."""
        late = TransientDeliveryError(f"no complete answer within the {timeout:.1f} s deadline")
        sent = {**self._headers, **headers} if headers else self._headers
        with Deadline(timeout) as deadline:
            _current.deadline = deadline
            try:
                proxies = self._proxies.get(url)
                if proxies is None:
                    proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
                # Prepared here rather than by Session.post, which merges cookies,
                # hooks and settings on every call: a third of a delivery's cost.
                request = requests.Request("POST", url, data=body, headers=sent).prepare()
                response = self._session.send(
                    request, proxies=proxies, timeout=(timeout, timeout), allow_redirects=False, verify=True,
                )
                answer = HttpAnswer(response.status_code, response.headers, response.text)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    raise late from None
                raise TransientDeliveryError(f"connection failed: {_describe(exc)}") from None
            except ValueError:  # requests reads a redirect's Location even when not following it
                raise PermanentDeliveryError("the answer could not be read (a redirect to an unreadable "
                                             "location?); not followed") from None
            finally:
                _current.deadline = None
        if deadline.expired:
            raise late
        return answer

    def close(self) -> None:
        self._session.close()


def _describe(exc: BaseException) -> str:
    # requests' messages quote the URL path (which holds the token): name the
    # failure by its class and leave the detail to the channel's secret scrubbing.
    kinds = {
        requests.ConnectTimeout: "connect timed out",
        requests.ReadTimeout: "read timed out",
        requests.exceptions.SSLError: "TLS handshake failed",
        requests.ConnectionError: "could not connect",
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
