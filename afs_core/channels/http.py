"""HTTP posting for webhook channels, with a total deadline per request.

Socket timeouts only bound each socket operation, so a server that accepts the
connection and then dribbles a byte a second could hold a send forever. Here a
watchdog shuts the request's socket when the deadline passes. A URL reached
directly is posted over one kept-alive ``http.client`` connection per host: the
delivery thread spends less than half the time per request that urllib3's pools
cost it, and every microsecond there is taken from the training loop's GIL. A URL
behind a proxy (from the environment, as ``requests`` finds it) goes through
urllib3's proxy pools. Needs ``requests``, which the HTTP channel distributions
declare; ``import afs_core`` never loads it.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
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


class _Direct(_WatchedMixin, http.client.HTTPConnection):
    pass


class _DirectTLS(_WatchedMixin, http.client.HTTPSConnection):
    pass


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """Certificates checked against certifi's bundle, as ``requests`` does; loaded
    once (reading the bundle takes milliseconds)."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context(cafile=certifi.where())
    return _tls_context


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """True when a kept-alive connection was closed by the server while idle (it is
    readable: an end of file, or bytes nobody asked for); sending on it would fail."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Headers(Mapping[str, str]):
    """An answer's headers as a case-insensitive mapping, read from http.client's
    message as asked (nothing copied)."""

    def __init__(self, message: http.client.HTTPMessage) -> None:
        self._message = message

    def __getitem__(self, name: str) -> str:
        value = self._message.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._message.keys())

    def __len__(self) -> int:
        return len(self._message)


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
    return _Target(tls, parts.hostname, parts.port or (443 if tls else 80), path)


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
        self._targets: dict[str, _Target] = {}
        self._direct: dict[tuple[bool, str, int], http.client.HTTPConnection] = {}

    def _proxy(self, url: str) -> str | None:
        if url not in self._proxy_of:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            self._proxy_of[url] = requests.utils.get_environ_proxies(url).get(scheme) or None
        return self._proxy_of[url]

    def _manager(self, proxy: str) -> urllib3.PoolManager:
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
        proxy = self._proxy(url)
        with Deadline(timeout) as deadline:
            _current.deadline = deadline
            try:
                if proxy is None:
                    answer = self._post_direct(url, body, sent, timeout)
                else:
                    response = self._manager(proxy).urlopen(
                        "POST", url, body=body, headers=sent, redirect=False, retries=False,
                        timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=True)
                    answer = HttpAnswer(response.status, response.headers, _text(response.headers, response.data))
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
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

    def _post_direct(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        """One request on the host's kept-alive connection (made anew when the server
        closed it while idle). Not retried: a POST may have been acted on."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        key = (target.tls, target.host, target.port)
        # Taken out while in use: a direct send from the training thread and the
        # channel's worker never share one connection.
        connection = self._direct.pop(key, None)
        if connection is not None and _dropped(connection):
            connection.close()
            connection = None
        if connection is None:
            connection = (_DirectTLS(target.host, target.port, timeout=timeout, context=_tls()) if target.tls
                          else _Direct(target.host, target.port, timeout=timeout))
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close or self._direct.setdefault(key, connection) is not connection:
            connection.close()
        if logger.isEnabledFor(logging.DEBUG):  # the path holds a webhook's token: masked
            logger.debug("%s:%s \"POST %s HTTP/1.1\" %s %s", target.host, target.port,
                         scrub(target.path, _scrubber.secrets), response.status, len(data))
        return HttpAnswer(response.status, _Headers(response.headers), _text(response.headers, data))

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()
        for connection in self._direct.values():
            connection.close()
        self._direct.clear()


def _text(headers: Any, data: bytes) -> str:
    """The body as text: in the charset the answer names, else UTF-8 (what JSON is)."""
    charset = None
    for part in (headers.get("Content-Type") or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"').strip()
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


def _describe(exc: BaseException) -> str:
    # requests' messages quote the URL path (which holds the token): name the
    # failure by its class and leave the detail to the channel's secret scrubbing.
    kinds: dict[type[BaseException], str] = {
        # NewConnectionError is a ConnectTimeoutError in urllib3 2: asked first.
        urllib3.exceptions.NewConnectionError: "could not connect",
        urllib3.exceptions.ConnectTimeoutError: "connect timed out",
        urllib3.exceptions.ReadTimeoutError: "read timed out",
        urllib3.exceptions.SSLError: "TLS handshake failed",
        ssl.SSLError: "TLS handshake failed",
        ConnectionRefusedError: "could not connect",
        TimeoutError: "timed out",
        http.client.RemoteDisconnected: "the connection was closed before an answer",
        http.client.HTTPException: "the answer could not be read",
        urllib3.exceptions.ProxyError: "could not connect through the proxy",
        urllib3.exceptions.ProtocolError: "could not connect",
        urllib3.exceptions.NameResolutionError: "could not connect",
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
