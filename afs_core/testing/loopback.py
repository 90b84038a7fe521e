"""A scriptable HTTP server on 127.0.0.1 for testing webhook channels for real.

It records every request (path, query, headers, JSON body, the client's port, so
connection reuse is visible, and the arrival time) and answers with scripted
responses: a status, headers and body, optionally late or dribbled byte by byte.
Standard library only; used through the ``webhook_server`` fixture.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Scripted:
    """One scripted answer."""

    status: int = 200
    body: str = "ok"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    delay: float = 0.0  # seconds before answering at all
    dribble: float = 0.0  # seconds between bytes of the status line and headers


@attrs.frozen
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    client_port: int
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class WebhookServer:
    """Loopback HTTP/1.1 server; ``url`` is its base, ``received`` what it got."""

    #: Every wait inside the server is bounded by this, so a test cannot hang on it.
    MAX_WAIT = 30.0

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: list[Received] = []
        self.default = Scripted()
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def respond(self, *answers: Scripted, **fields: Any) -> None:
        """Queue answers for the next requests (``respond(status=429, ...)`` for one)."""
        with self._lock:
            self._script.extend(answers or (Scripted(**fields),))

    def _next(self) -> Scripted:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(min(seconds, self.MAX_WAIT))

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urllib.parse.urlsplit(self.path)
                server.received.append(
                    Received(
                        "POST", parts.path, urllib.parse.parse_qs(parts.query),
                        dict(self.headers.items()), body, self.client_address[1], time.monotonic(),
                    )
                )
                self._answer(server._next())

            def _answer(self, answer: Scripted) -> None:
                if answer.delay:
                    server._wait(answer.delay)
                payload = answer.body.encode("utf-8")
                head = f"HTTP/1.1 {answer.status} Scripted\r\n"
                headers = {"Content-Type": "text/plain; charset=utf-8", **answer.headers}
                headers["Content-Length"] = str(len(payload))
                head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                raw = head.encode("latin-1")
                try:
                    if answer.dribble:
                        for index in range(len(raw)):
                            if server._stopping.is_set():
                                return
                            self.wfile.write(raw[index : index + 1])
                            self.wfile.flush()
                            server._wait(answer.dribble)
                        self.wfile.write(payload)
                    else:
                        # One write: head and body in separate segments would meet the
                        # client's delayed ACK (40 ms a request on Linux).
                        self.wfile.write(raw + payload)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

        return Handler
