"""Reading an HTTP/1.1 answer (afs_core.channels.http1): framing, limits and what
makes a connection reusable, on a real socket pair; and the head that is sent."""

import socket
import threading

import pytest

from afs_core.channels import http1


def read(raw: bytes, max_body: int = 1024 * 1024, close: bool = True) -> http1.Answer:
    """The answer read from ``raw`` written into one end of a socket pair."""
    mine, theirs = socket.socketpair()
    mine.settimeout(5)

    def write() -> None:
        theirs.sendall(raw)
        if close:
            theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reader = mine.makefile("rb")
    try:
        return http1.read_answer(reader, max_body)
    finally:
        reader.close()
        writer.join(timeout=5)
        mine.close()
        theirs.close()


def test_a_content_length_answer_is_read_exactly_and_keeps_the_connection():
    answer = read(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", close=False)
    assert (answer.status, answer.body, answer.reusable) == (200, b"hello", True)
    assert answer.headers["content-type"] == "text/plain" and answer.headers.get("CONTENT-LENGTH") == "5"


def test_a_chunked_answer_with_extensions_and_a_trailer_is_joined():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")
    answer = read(raw, close=False)
    assert (answer.body, answer.reusable) == (b"hello world", True)


def test_a_body_without_a_length_ends_with_the_connection_which_is_then_not_kept():
    answer = read(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert (answer.body, answer.reusable) == (b"until the end", False)
    answer = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes")  # not chunked last: the same
    assert (answer.body, answer.reusable) == (b"raw bytes", False)


@pytest.mark.parametrize(("head", "reusable"), [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\n", False),
    (b"HTTP/1.0 200 OK\r\n", False),  # 1.0 closes unless it says otherwise
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", True),
])
def test_whether_the_connection_is_kept_is_what_the_answer_says(head, reusable):
    assert read(head + b"Content-Length: 2\r\n\r\nok", close=False).reusable is reusable


def test_interim_answers_are_skipped_and_no_body_is_read_where_there_is_none():
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
           b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
    answer = read(raw, close=False)
    assert (answer.status, answer.body, answer.reusable) == (204, b"", True)
    assert "link" not in answer.headers  # the interim answer's headers are not the answer's


def test_a_folded_header_line_joins_the_one_before_and_a_repeated_name_reads_first():
    answer = read(b"HTTP/1.1 429 Too Many\r\nRetry-After: 5\r\nX-Note: one\r\n  two\r\nRetry-After: 9\r\n"
                  b"Content-Length: 0\r\n\r\n", close=False)
    assert answer.headers["x-note"] == "one two" and answer.headers["retry-after"] == "5"
    assert answer.headers.all("Retry-After") == ["5", "9"] and len(answer.headers) == 4


def test_a_body_past_the_limit_is_cut_and_its_connection_not_kept():
    answer = read(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, max_body=10)
    assert (answer.body, answer.reusable) == (b"x" * 10, False)
    answer = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"y" * 32 + b"\r\n0\r\n\r\n",
                  max_body=10)
    assert (answer.body, answer.reusable) == (b"y" * 10, False)


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "closed before an answer"),
    (b"SSH-2.0-OpenSSH\r\n", "status line"),
    (b"HTTP/2 200\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    ("HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"), "Content-Length"),  # isdigit()
    (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX: y\r\n" + b" folded\r\n" * 200 + b"\r\n", "more than 100 header lines"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "in the middle"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "in the middle"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 header lines"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "longer than 64 KiB"),
    (b"HTTP/1.1 103 Early Hints\r\n\r\n" * 9, "no final answer"),
])
def test_an_answer_that_cannot_be_read_says_why(raw, words):
    with pytest.raises((http1.AnswerError, http1.ClosedBeforeAnswer), match=words):
        read(raw)


def test_the_head_is_one_block_and_refuses_what_would_end_it_early():
    connection = http1.Connection("::1", 8080, timeout=1)
    head = connection.head("/hook?a=1", b"{}", {"User-Agent": "afs", "Content-Type": "application/json"})
    assert head == (b"POST /hook?a=1 HTTP/1.1\r\nHost: [::1]:8080\r\nAccept-Encoding: identity\r\n"
                    b"User-Agent: afs\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")
    assert http1.Connection("hooks.example", 443, timeout=1, context=object()).head(  # type: ignore[arg-type]
        "/", b"", {}).startswith(b"POST / HTTP/1.1\r\nHost: hooks.example\r\n")
    for name, value in [("X-Token", "a\r\nInjected: yes"), ("X-Token", "a\nb"), ("Bad Name", "v"), ("X:Y", "v"),
                        ("X-Nul", "a\x00b"), ("X-A\n", "v"), ("X-A", "v\x0b"), ("X-A", "v\x7f"), ("X-A", "\u20ac"),
                        ("X-A", 5), (b"X-A", "v")]:
        with pytest.raises(http1.RequestError, match="cannot be sent"):
            connection.head("/", b"", {name: value})
    for name in ("Host", "content-length", "Transfer-Encoding", "Connection"):  # the framing is this client's
        with pytest.raises(http1.RequestError, match="this client's to write"):
            connection.head("/", b"", {name: "x"})
    with pytest.raises(http1.RequestError, match="request target"):
        connection.head("/a b", b"", {})
