"""Requests to a webhook behind a proxy: urllib3's proxy pools, whose connections
the request's deadline watches. Loaded only when the environment names a proxy for
a URL; a webhook reached directly never imports urllib3 or ``requests``.
"""

from __future__ import annotations

from typing import Any

import certifi
import requests.utils
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from afs_core.channels.http import HttpAnswer, WatchedMixin, answer_text

#: What a failed request through the proxy raises, with its words.
ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError,)
KINDS: dict[type[BaseException], str] = {
    # NewConnectionError is a ConnectTimeoutError in urllib3 2: asked first.
    urllib3.exceptions.NewConnectionError: "could not connect",
    urllib3.exceptions.ConnectTimeoutError: "connect timed out",
    urllib3.exceptions.ReadTimeoutError: "read timed out",
    urllib3.exceptions.SSLError: "TLS handshake failed",
    urllib3.exceptions.ProxyError: "could not connect through the proxy",
    urllib3.exceptions.ProtocolError: "could not connect",
    urllib3.exceptions.NameResolutionError: "could not connect",
}


def environ_proxy(url: str, scheme: str) -> str | None:
    """The proxy the environment (or the system's settings) names for ``url``, as
    ``requests`` finds it, no_proxy included."""
    return requests.utils.get_environ_proxies(url).get(scheme) or None


class _HTTPConnection(WatchedMixin, HTTPConnection):
    pass


class _HTTPSConnection(WatchedMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class ProxiedPools:
    """One urllib3 proxy manager per proxy; certificates checked against certifi's
    bundle, as ``requests`` does."""

    def __init__(self) -> None:
        self._managers: dict[str, urllib3.ProxyManager] = {}

    def post(self, proxy: str, url: str, body: bytes, headers: dict[str, str], timeout: float) -> HttpAnswer:
        manager = self._managers.get(proxy)
        if manager is None:
            options: dict[str, Any] = {"num_pools": 2, "maxsize": 4, "retries": False, "cert_reqs": "CERT_REQUIRED",
                                       "ca_certs": certifi.where()}
            manager = self._managers[proxy] = urllib3.ProxyManager(proxy, **options)
            manager.pool_classes_by_scheme = _POOLS
        response = manager.urlopen("POST", url, body=body, headers=headers, redirect=False, retries=False,
                                   timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=True)
        return HttpAnswer(response.status, response.headers, answer_text(response.headers, response.data))

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()
        self._managers.clear()
