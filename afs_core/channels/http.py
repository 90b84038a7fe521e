"""HTTP posting for webhook channels, with a total deadline per request.

Socket timeouts only bound each socket operation, so a server that accepts the
connection and then dribbles a byte a second could hold a send forever. Here a
watchdog shuts the request's socket when the deadline passes. Requests go through
urllib3's connection pools directly: ``requests``' own layers (preparing, adapters,
hooks) cost about 40 % of a request's time on the delivery thread, and a webhook
needs none of them; ``requests`` still finds the proxy for each URL. Needs
``requests``, which the HTTP channel distributions declare; ``import afs_core``
never loads it.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import certifi
import requests
import urllib3
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


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def _pool_manager(proxy: str | None) -> urllib3.PoolManager:
    """Connection pools whose connections the deadline watches; certificates checked
    against certifi's bundle, as ``requests`` does."""
    options: dict[str, Any] = {"num_pools": 2, "maxsize": 4, "retries": False, "cert_reqs": "CERT_REQUIRED",
                               "ca_certs": certifi.where()}
    manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
    manager.pool_classes_by_scheme = _POOLS
    return manager


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
        # none) is looked up once per URL, and each proxy has its own pools.
        self._managers: dict[str | None, urllib3.PoolManager] = {}
        self._proxy_of: dict[str, str | None] = {}

    def _manager(self, url: str) -> urllib3.PoolManager:
        if url not in self._proxy_of:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            self._proxy_of[url] = requests.utils.get_environ_proxies(url).get(scheme) or None
        proxy = self._proxy_of[url]
        manager = self._managers.get(proxy)
        if manager is None:
            manager = self._managers[proxy] = _pool_manager(proxy)
        return manager

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
                response = self._manager(url).urlopen(
                    "POST", url, body=body, headers=sent, redirect=False, retries=False,
                    timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=True)
                answer = HttpAnswer(response.status, response.headers, _text(response))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    raise late from None
                raise TransientDeliveryError(f"connection failed: {_describe(exc)}") from None
            except ValueError:  # an answer (or a URL) that cannot be read
                raise PermanentDeliveryError("the answer could not be read (a redirect to an unreadable "
                                             "location?); not followed") from None
            finally:
                _current.deadline = None
        if deadline.expired:
            raise late
        return answer

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()


def _text(response: urllib3.BaseHTTPResponse) -> str:
    """The body as text: in the charset the answer names, else UTF-8 (what JSON is)."""
    charset = None
    for part in (response.headers.get("Content-Type") or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"').strip()
    try:
        return response.data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return response.data.decode("utf-8", errors="replace")


def _describe(exc: BaseException) -> str:
    # requests' messages quote the URL path (which holds the token): name the
    # failure by its class and leave the detail to the channel's secret scrubbing.
    kinds: dict[type[BaseException], str] = {
        # NewConnectionError is a ConnectTimeoutError in urllib3 2: asked first.
        urllib3.exceptions.NewConnectionError: "could not connect",
        urllib3.exceptions.ConnectTimeoutError: "connect timed out",
        urllib3.exceptions.ReadTimeoutError: "read timed out",
        urllib3.exceptions.SSLError: "TLS handshake failed",
        urllib3.exceptions.ProxyError: "could not connect through the proxy",
        urllib3.exceptions.ProtocolError: "could not connect",
        urllib3.exceptions.NameResolutionError: "could not connect",
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
