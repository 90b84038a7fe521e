"""One HTTP/1.1 exchange at a time on a kept-alive socket: a POST, and its answer read.

What a webhook needs and no more: no redirects, no cookies, no compression, no
proxies (those go through urllib3, see :mod:`afs_core.channels.proxied`). It exists
because reading an answer with ``http.client`` costs the delivery thread about
60 microseconds of GIL time, most of it in the ``email`` package parsing a handful
of header lines, and that time is taken from the training loop. The answer is framed
as RFC 9112 says (section 6.3): no body for 1xx, 204 and 304; chunked when that is
the last transfer coding; else Content-Length; else until the connection closes.
Everything read is bounded (line length, header count, body size).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ssl loads with the first https URL's context: a plain http relay never needs it
    import ssl

#: The longest status, header or chunk-size line read; the most header lines.
MAX_LINE = 65536
MAX_HEADERS = 100
#: Interim answers (102, 103) skipped before the final one.
MAX_INTERIM_ANSWERS = 8

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but the tab: one could end the line
_STATUS = re.compile(rb"HTTP/1\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n")
_LENGTH = re.compile(r"[0-9]{1,18}")
#: Headers this client writes itself: a caller's own would contradict the framing.
_OWN_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class RequestError(ValueError):
    """The request cannot be sent as asked (a header HTTP does not allow): nothing was sent."""


class AnswerError(Exception):
    """The answer does not read as HTTP/1.1 (or is past the limits)."""


class ClosedBeforeAnswer(ConnectionError):
    """The server closed the connection before its answer began."""


class Headers(Mapping[str, str]):
    """An answer's headers, looked up without regard to case; a name given twice
    reads as its first value (as ``http.client`` does)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for name, value in pairs:
            self._first.setdefault(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(name for name, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def all(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key.lower() == name.lower()]


class Answer:
    """A final answer: status, headers, the body (at most the limit asked), and whether
    the connection may carry the next request."""

    __slots__ = ("status", "headers", "body", "reusable")
    reusable: bool

    def __init__(self, status: int, headers: Headers, body: bytes, reusable: bool) -> None:
        self.status, self.headers, self.body, self.reusable = status, headers, body, reusable


class Connection:
    """A connection to ``host:port`` (TLS with ``context``), made on first use.

    ``sock`` is public: a deadline watching the exchange shuts it to end a blocked call.
    Not for two threads at once.
    """

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout, self.context = host, port, timeout, context
        self.sock: socket.socket | None = None
        default = 443 if context is not None else 80
        name = f"[{host}]" if ":" in host else host
        self._host_header = name if port == default else f"{name}:{port}"

    def connect(self, time_left: Callable[[], float] | None = None) -> None:
        """Connect (and shake hands over TLS), each step bounded by ``timeout`` and by
        ``time_left()`` (the request's deadline): one address after another, never
        the whole timeout each. ``sock`` is set before each blocking step, so a
        deadline watching this connection can cut it."""
        def bound() -> float:
            left = self.timeout if time_left is None else min(self.timeout, time_left())
            if left <= 0:
                raise TimeoutError("timed out")
            return left

        failure: OSError = OSError(f"{self.host} has no address")
        for family, kind, protocol, _, address in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, protocol)
            self.sock = sock
            try:
                sock.settimeout(bound())
                sock.connect(address)
            except OSError as exc:
                self.sock = None
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                failure = exc
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body leave at once
                if self.context is not None:  # a TLS failure is no other address's to mend
                    sock = self.context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
                    self.sock = sock
                    sock.settimeout(bound())
                    sock.do_handshake()
                sock.settimeout(self.timeout)
            except BaseException:
                self.sock = None
                sock.close()
                raise
            return
        raise failure

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def post(self, target: str, body: bytes, headers: Mapping[str, str], *, max_body: int,
             time_left: Callable[[], float] | None = None) -> Answer:
        """Send one POST and read its final answer (the body up to ``max_body`` bytes;
        past that the rest is left unread and the connection is not reusable)."""
        head = self.head(target, body, headers)
        reader = self.open(time_left)
        try:
            try:
                self.send(head + body)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # The server answered early (413: too large) and closed: its answer, if it came.
                try:
                    answer = read_answer(reader, max_body)
                except Exception:
                    raise exc from None
                answer.reusable = False
                return answer
            answer = read_answer(reader, max_body)
            self.check_drained(answer)
            return answer
        finally:
            reader.close()

    # -- the steps of a request, for a caller that sends several before reading ------

    def open(self, time_left: Callable[[], float] | None = None) -> Any:
        """Connect if not yet connected; a buffered reader of the answers (one reader for
        every answer read in a row: it may hold the start of the next one)."""
        if self.sock is None:
            self.connect(time_left)
        sock = self.sock
        assert sock is not None
        sock.settimeout(self.timeout)
        return sock.makefile("rb")

    def send(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            raise ConnectionError("not connected")
        sock.sendall(data)

    def check_drained(self, answer: Answer) -> None:
        """After the last answer read: bytes after it, already decrypted inside TLS where
        polling the socket cannot see them, mean the next answer could not be told apart.
        (Any left in the reader's buffer go with it; any still in the socket are seen by
        the poll before the connection is used again.)"""
        sock = self.sock
        if answer.reusable and self.context is not None and sock is not None and sock.pending():  # type: ignore[attr-defined]
            answer.reusable = False

    def head(self, target: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        """A POST's request line and headers; :class:`RequestError` for a header or
        target that cannot be sent."""
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or not _TOKEN.fullmatch(name):
                raise RequestError(f"a header named {str(name)[:40]!r} cannot be sent (not an HTTP header name)")
            if _BAD_VALUE.search(value) or not value.isascii() and not _latin1(value):
                # A value that would end the head early, or start another header: never sent.
                raise RequestError(f"header {name!r} cannot be sent (a character HTTP does not allow in it)")
            if name.lower() in _OWN_HEADERS:
                raise RequestError(f"header {name!r} is this client's to write")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}")
        if " " in target or _BAD_VALUE.search(target) or not target.isascii():
            raise RequestError("the request target holds a space, a control character or a letter past ASCII")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _line(reader: Any) -> bytes:
    line: bytes = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise AnswerError("a line of the answer is longer than 64 KiB")
    return line


def read_answer(reader: Any, max_body: int) -> Answer:
    """The next final answer on ``reader`` (interim ones skipped)."""
    for _ in range(MAX_INTERIM_ANSWERS + 1):
        status_line = _line(reader)
        if not status_line:
            raise ClosedBeforeAnswer("the connection was closed before an answer")
        match = _STATUS.fullmatch(status_line)
        if match is None:
            raise AnswerError("the answer does not begin with an HTTP/1.x status line")
        minor, status = int(match.group(1)), int(match.group(2))
        headers = _read_headers(reader)
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer: the final one follows
        return _with_body(reader, minor, status, headers, max_body)
    raise AnswerError("no final answer after several interim ones")


def _read_headers(reader: Any) -> Headers:
    pairs: list[tuple[str, str]] = []
    for _ in range(MAX_HEADERS + 1):  # folded lines count too
        line = _line(reader)
        if line in (b"\r\n", b"\n", b""):
            return Headers(pairs)
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and pairs:  # an obsolete folded line: part of the one before
            name, value = pairs[-1]
            pairs[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise AnswerError("a header line of the answer cannot be read")
        pairs.append((name, value.strip()))
    raise AnswerError(f"the answer has more than {MAX_HEADERS} header lines")


def _with_body(reader: Any, minor: int, status: int, headers: Headers, max_body: int) -> Answer:
    connection = {token.strip().lower() for value in headers.all("Connection") for token in value.split(",")}
    keep = "close" not in connection if minor >= 1 else "keep-alive" in connection
    lengths = {value.strip() for value in headers.all("Content-Length")}
    if status in (101,):
        return Answer(status, headers, b"", False)  # another protocol: nothing more of HTTP here
    if 100 <= status < 200 or status in (204, 304):
        return Answer(status, headers, b"", keep)
    codings = [token.strip().lower() for value in headers.all("Transfer-Encoding") for token in value.split(",")]
    codings = [coding for coding in codings if coding]
    if codings:
        if codings[-1] != "chunked":
            body, complete = _until_closed(reader, max_body)
            return Answer(status, headers, body, False)
        body, complete = _chunked(reader, max_body)
        # Chunked with a Content-Length beside it, or from HTTP/1.0: read, but not trusted again.
        return Answer(status, headers, body, keep and complete and not lengths and minor >= 1)
    if lengths:
        if len(lengths) != 1 or not _LENGTH.fullmatch(next(iter(lengths))):
            raise AnswerError("the answer's Content-Length cannot be read")
        length = int(next(iter(lengths)))
        body = reader.read(min(length, max_body))
        if len(body) < min(length, max_body):
            raise AnswerError("the connection was closed in the middle of the answer")
        return Answer(status, headers, body, keep and length <= max_body)
    body, complete = _until_closed(reader, max_body)
    return Answer(status, headers, body, False)


def _until_closed(reader: Any, max_body: int) -> tuple[bytes, bool]:
    """The body that ends with the connection: up to ``max_body`` bytes of it."""
    body = reader.read(max_body + 1)
    return body[:max_body], len(body) <= max_body


def _chunked(reader: Any, max_body: int) -> tuple[bytes, bool]:
    """A chunked body, up to ``max_body`` bytes; True when it was read to its end."""
    body = bytearray()
    while True:
        line = _line(reader)
        if not line:
            raise AnswerError("the connection was closed in the middle of the answer")
        digits = line.split(b";", 1)[0].strip()
        if not digits or len(digits) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
            raise AnswerError("a chunk size of the answer cannot be read")
        chunk = int(digits, 16)
        if chunk == 0:
            for _ in range(MAX_HEADERS + 1):  # the trailer: header lines to a blank one
                if _line(reader) in (b"\r\n", b"\n", b""):
                    return bytes(body), True
            raise AnswerError(f"the answer has more than {MAX_HEADERS} trailer lines")
        if len(body) + chunk > max_body:
            body += reader.read(max_body - len(body))
            return bytes(body), False
        data = reader.read(chunk)
        if len(data) < chunk or _line(reader) not in (b"\r\n", b"\n"):
            raise AnswerError("the connection was closed in the middle of the answer")
        body += data
