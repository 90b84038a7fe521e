"""The WebhookChannel base and declared settings, through a channel written as a
plugin author would: its settings, its hosts, its payload; nothing else."""

import json
import time

import pytest

from afs_core import (
    ConfigurationError,
    NotificationManager,
    PermanentDeliveryError,
    Setting,
    TransientDeliveryError,
    WebhookChannel,
    send_now,
)
from afs_core.channels import HOLDS, json_object, seconds
from afs_core.channels.webhook import parse_http_url

TOKEN = "s3cret-T0KEN"


class Acme(WebhookChannel):
    name = "acme"
    settings = (
        Setting("ACME_WEBHOOK_URL", "webhook_url", required=True, secret=True),
        Setting("ACME_TIMEOUT", "timeout", parse=seconds),
    )
    hosts = ("hooks.acme.example",)
    user_agent = "acme-afs"

    def format(self, event):
        return {"title": event.title, "text": event.message, "level": event.level.value}


@pytest.fixture
def acme(webhook_server):
    channel = Acme.from_env({"ACME_WEBHOOK_URL": f"{webhook_server.url}/hook/{TOKEN}", "ACME_TIMEOUT": "2"})
    yield channel
    channel.close()


def test_settings_are_read_from_the_declaration():
    assert Acme.from_env({}) is None  # not configured: not an error
    assert Acme.required_settings == ("ACME_WEBHOOK_URL",)
    channel = Acme.from_env({"ACME_WEBHOOK_URL": "https://hooks.acme.example/T/x", "ACME_TIMEOUT": "3"})
    assert channel.timeout == 3.0 and channel.webhook_url == "https://hooks.acme.example/T/x"


@pytest.mark.parametrize(("env", "message"), [
    ({"ACME_WEBHOOK_URL": "https://evil.example/T/x"}, "must point at hooks.acme.example"),
    ({"ACME_WEBHOOK_URL": "http://hooks.acme.example/T/x"}, "must use https://"),
    ({"ACME_WEBHOOK_URL": "https://hooks.acme.example/T/x", "ACME_TIMEOUT": "soon"},
     "ACME_TIMEOUT must be a number of seconds, got 'soon'"),
    ({"ACME_TIMEOUT": "3"}, None),
])
def test_wrong_settings_are_clear_errors_that_never_show_the_url(env, message):
    if message is None:
        assert Acme.from_env(env) is None  # a timeout alone does not configure the channel
        return
    with pytest.raises(ConfigurationError, match=message) as info:
        Acme.from_env(env)
    assert "/T/x" not in str(info.value)


def test_the_payload_is_posted_as_json_and_the_answer_is_the_receipt(acme, webhook_server, make_event, afs_plugins):
    webhook_server.respond(status=200, body="accepted")
    outcome = send_now(acme, make_event())
    assert outcome.delivered and outcome.receipt == "accepted"
    request = webhook_server.received[0]
    assert request.path == f"/hook/{TOKEN}" and request.headers["User-Agent"] == "acme-afs"
    assert request.json == {"title": "Training completed: tiny-model", "text": "Run run-1 finished.",
                            "level": "success"}


@pytest.mark.parametrize(("status", "kind"), [(500, TransientDeliveryError), (408, TransientDeliveryError),
                                              (400, PermanentDeliveryError), (404, PermanentDeliveryError)])
def test_statuses_are_transient_or_permanent_with_the_services_words(acme, webhook_server, make_event, status, kind):
    webhook_server.respond(status=status, body="no such hook\x1b[2J")
    with pytest.raises(kind, match=f"HTTP {status}: no such hook\\[2J$"):
        acme.deliver(acme.format(make_event()))


def test_a_429_holds_every_channel_posting_to_that_webhook(acme, webhook_server, make_event, afs_plugins):
    webhook_server.respond(status=429, body="slow down", headers={"Retry-After": "0.5"})
    twin = Acme(f"{webhook_server.url}/hook/{TOKEN}", timeout=2)
    first = send_now(acme, make_event())
    assert not first.delivered and not first.permanent and first.retry_after == 0.5
    assert send_now(twin, make_event()).delivered  # waited out within its deadline, not hammered
    assert webhook_server.received[1].at - webhook_server.received[0].at >= 0.5


def test_a_wait_longer_than_the_deadline_is_reported_to_the_engine_not_slept(acme, webhook_server, make_event):
    HOLDS.hold(acme.webhook_url, 60)
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as info:
        acme.deliver(acme.format(make_event()))
    assert time.monotonic() - started < 1 and 59 <= info.value.retry_after <= 60
    assert webhook_server.received == []


def test_secrets_come_from_the_declaration_and_never_show(acme, webhook_server, make_event, afs_plugins, caplog):
    assert TOKEN in list(acme.secrets())
    assert TOKEN not in acme.describe() and TOKEN not in repr(acme)
    webhook_server.respond(status=401, body=json.dumps({"error": f"bad token {TOKEN}"}))
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("acme", acme)
    result = manager.notify("t", "m")
    assert TOKEN not in result.failed["acme"] and TOKEN not in caplog.text


def test_a_message_that_is_not_a_json_object_fails_for_good(acme):
    with pytest.raises(PermanentDeliveryError, match="must be a JSON object"):
        acme.deliver("plain text from a formatter plugin")


def test_a_secret_kept_under_another_name_is_still_known_and_never_quoted_back():
    from afs_core import Channel, ConfigurationError

    class Pager(Channel):
        settings = (Setting("PAGER_TOKEN", "token", required=True, secret=True),
                    Setting("PAGER_PIN", "pin", parse=int, secret=True))

        def __init__(self, token, pin=None):
            self._token = token  # not self.token

        def deliver(self, message):
            raise PermanentDeliveryError(f"bad token {self._token}")

    assert list(Pager.from_env({"PAGER_TOKEN": TOKEN}).secrets()) == [TOKEN]
    with pytest.raises(ConfigurationError) as raised:
        Pager.from_env({"PAGER_TOKEN": TOKEN, "PAGER_PIN": "hunter2"})
    assert "hunter2" not in str(raised.value) and "PAGER_PIN" in str(raised.value)


def test_a_secret_the_service_echoes_is_masked_before_its_answer_is_cut(acme, webhook_server, make_event):
    webhook_server.respond(status=400, body="x" * 190 + f" token {TOKEN} is not valid")
    outcome = send_now(acme, make_event())
    assert outcome.permanent and TOKEN[:4] not in outcome.error, outcome.error
    assert outcome.error.startswith("HTTP 400: xxx")


def test_a_setting_with_bytes_that_are_not_utf8_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="ACME_WEBHOOK_URL holds bytes that are not UTF-8") as caught:
        Acme.from_env({"ACME_WEBHOOK_URL": f"https://hooks.acme.example/T/{TOKEN}\udcff"})
    assert TOKEN not in str(caught.value)


def test_a_redirect_to_an_unreadable_location_is_a_permanent_failure(acme, webhook_server, make_event):
    webhook_server.respond(status=307, headers={"Location": "http://[oops/"})
    outcome = send_now(acme, make_event())
    assert outcome.permanent and "not followed" in outcome.error
    assert len(webhook_server.received) == 1


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ('{"ok": true, "result": {"id": 1}}', {"ok": True, "result": {"id": 1}}),
        ("[1, 2]", {}),
        ("null", {}),
        ('"text"', {}),
        ("<html>502 Bad Gateway</html>", {}),
        ("{", {}),
        ("", {}),
        (None, {}),
        ("[" * 200_000 + "]" * 200_000, {}),  # nested deeper than the parser goes
    ],
)
def test_an_answer_body_is_read_as_a_json_object_or_nothing(text, read):
    assert json_object(text) == read


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://relay.example:99999/x", r"X_URL is not a valid URL \(Port out of range"),
        ("http://[::1/x", r"X_URL is not a valid URL \("),
        ("ftp://relay.example/x", "X_URL must start with https:// and name the relay, e.g. https://relay.example$"),
        ("relay.example/x", "X_URL must start with https:// and name the relay, e.g. https://relay.example$"),
        ("https:///x", "X_URL must start with https:// and name the relay"),
    ],
)
def test_a_url_setting_that_is_no_http_url_is_a_clear_error(url, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_http_url(url, setting="X_URL", names="the relay", example="https://relay.example")


def test_an_http_url_is_split_after_its_spaces_go():
    parts = parse_http_url("  HTTPS://Relay.Example:8443/hook?q=1 ", setting="X_URL")
    assert (parts.scheme, parts.hostname, parts.port, parts.path, parts.query) == ("https", "relay.example", 8443,
                                                                                   "/hook", "q=1")
    with pytest.raises(ConfigurationError, match="X_URL must start with https:// and name a host$"):
        parse_http_url("mailto:a@b.example", setting="X_URL")


# -- the connection: kept alive, made anew when the server let it go ---------------------

def test_sends_share_one_kept_alive_connection_until_the_server_says_close(acme, webhook_server, make_event):
    for _ in range(3):
        assert send_now(acme, make_event()).delivered
    ports = [request.client_port for request in webhook_server.received]
    assert len(set(ports)) == 1  # one TCP connection for the three requests
    webhook_server.respond(status=200, body="ok", headers={"Connection": "close"})
    assert send_now(acme, make_event()).delivered
    assert send_now(acme, make_event()).delivered
    assert webhook_server.received[4].client_port != ports[0]  # the closed one was not used again


def _bodies(count):
    return [(json.dumps({"n": n}).encode(), None) for n in range(count)]


def test_several_posts_share_the_kept_connection_and_a_header_that_cannot_be_sent_fails_alone(acme, webhook_server):
    requests = _bodies(6)
    requests[3] = (requests[3][0], {"X-Note": "two\r\nlines"})
    answers = acme.post_many(acme.webhook_url, requests)
    assert isinstance(answers[3], PermanentDeliveryError) and "X-Note" in str(answers[3])
    assert [answer.status for index, answer in enumerate(answers) if index != 3] == [200] * 5
    assert [request.json["n"] for request in webhook_server.received] == [0, 1, 2, 4, 5]  # in order, 3 never sent
    assert len({request.client_port for request in webhook_server.received}) == 1


def test_a_header_that_cannot_be_sent_never_makes_an_untried_connection_look_kept_alive(acme, webhook_server):
    """The connection made for a request whose header cannot be sent has never answered:
    the next requests are not pipelined on it, to a receiver that closes after each."""
    from afs_core.testing.loopback import Scripted

    webhook_server.default = Scripted(headers={"Connection": "close"})
    requests = _bodies(6)
    requests[0] = (requests[0][0], {"X-Note": "two\r\nlines"})
    answers = acme.post_many(acme.webhook_url, requests)
    assert isinstance(answers[0], PermanentDeliveryError)
    assert [answer.status for answer in answers[1:]] == [200] * 5
    assert [request.json["n"] for request in webhook_server.received] == [1, 2, 3, 4, 5]  # each sent once
    assert len({request.client_port for request in webhook_server.received}) == 5  # each alone


def test_a_429_among_several_posts_holds_the_webhook_and_the_answers_already_asked_for_count(
        acme, webhook_server):
    webhook_server.respond(status=200)
    webhook_server.respond(status=200)
    webhook_server.respond(status=429, body="slow", headers={"Retry-After": "30"})
    answers = acme.post_many(acme.webhook_url, _bodies(5))
    assert isinstance(answers[2], TransientDeliveryError) and answers[2].retry_after == 30
    assert [answers[i].status for i in (0, 1, 3, 4)] == [200] * 4  # sent before the 429 came back: answered
    later = acme.post_many(acme.webhook_url, _bodies(2))  # nothing more goes out while the hold lasts
    assert all(isinstance(answer, TransientDeliveryError) and answer.retry_after > 29 for answer in later)
    assert len(webhook_server.received) == 5


def test_a_connection_the_server_dropped_while_idle_is_made_anew_not_a_failure(make_event):
    """A keep-alive server that closes an idle connection (without saying so first):
    the next send must see that before it writes, not fail on the dead socket."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    seen: list[int] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    def serve() -> None:
        for _ in range(2):  # two connections, one request each, each closed after its answer
            connection, (_, peer_port) = listener.accept()
            with connection:
                connection.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += connection.recv(65536)
                connection.sendall(answer)
                seen.append(peer_port)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    channel = Acme.from_env({"ACME_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook/{TOKEN}", "ACME_TIMEOUT": "5"})
    try:
        assert send_now(channel, make_event()).delivered
        deadline = time.monotonic() + 5
        while len(seen) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the server's close has reached this side
        outcome = send_now(channel, make_event())
        assert outcome.delivered, outcome.error
        server.join(timeout=5)
        assert len(seen) == 2 and seen[0] != seen[1]
    finally:
        channel.close()
        listener.close()


def test_sends_from_several_threads_at_once_each_get_their_answer(acme, webhook_server, make_event):
    """The training thread's direct sends and a worker may post at the same moment:
    they never share one connection (their answers would cross)."""
    import threading

    outcomes = []

    def send(count: int) -> None:
        for _ in range(count):
            outcomes.append(send_now(acme, make_event()))

    threads = [threading.Thread(target=send, args=(15,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 60 and all(outcome.delivered for outcome in outcomes)
    assert len(webhook_server.received) == 60


def test_https_checks_the_certificate_and_keeps_the_tls_connection(make_event, monkeypatch):
    """Over https the server's certificate is checked (here signed by a CA the
    system does not know: refused, nothing sent); trusted, two sends share one
    TLS connection."""
    import ssl

    import trustme

    from afs_core.channels import http as afs_http
    from afs_core.testing.loopback import WebhookServer

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = WebhookServer()
    server._server.socket = server_context.wrap_socket(server._server.socket, server_side=True)
    server.start()
    url = server.url.replace("http://", "https://")
    try:
        channel = Acme.from_env({"ACME_WEBHOOK_URL": f"{url}/hook/{TOKEN}", "ACME_TIMEOUT": "5"})
        refused = send_now(channel, make_event())
        channel.close()
        assert not refused.delivered and "TLS handshake failed" in refused.error and TOKEN not in refused.error
        assert server.received == []

        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        monkeypatch.setattr(afs_http, "_tls_context", trusting)
        channel = Acme.from_env({"ACME_WEBHOOK_URL": f"{url}/hook/{TOKEN}", "ACME_TIMEOUT": "5"})
        try:
            assert send_now(channel, make_event()).delivered
            assert send_now(channel, make_event()).delivered
            answers = channel.post_many(channel.webhook_url, _bodies(5))  # back to back, inside TLS
        finally:
            channel.close()
        assert [answer.status for answer in answers] == [200] * 5
        assert len(server.received) == 7 and len({request.client_port for request in server.received}) == 1
    finally:
        server.stop()


def test_a_proxy_from_the_environment_carries_the_request(make_event, monkeypatch):
    """HTTP_PROXY set: the request goes to the proxy (absolute URL, urllib3's proxy
    pools), not to the host; nothing listens there."""
    from afs_core.testing.loopback import WebhookServer

    for name in ("no_proxy", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "ALL_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    proxy = WebhookServer().start()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    channel = Acme.from_env({"ACME_WEBHOOK_URL": f"http://127.0.0.1:9/hook/{TOKEN}", "ACME_TIMEOUT": "5"})
    try:
        assert send_now(channel, make_event()).delivered
        assert [answer.status for answer in channel.post_many(channel.webhook_url, _bodies(3))] == [200] * 3
        assert [request.path for request in proxy.received] == [f"/hook/{TOKEN}"] * 4
    finally:
        channel.close()
        proxy.stop()


def test_a_direct_send_imports_neither_urllib3_nor_requests(webhook_server, tmp_path):
    """The first delivery runs on the training process's GIL: with no proxy set, to an
    http URL, it loads neither urllib3 nor requests, nor ssl (an https URL's)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from afs_core import send_now\n"
        "from afs_core.events import NotificationEvent, EventType\n"
        "import test_webhook_channel as t\n"
        f"channel = t.Acme.from_env({{'ACME_WEBHOOK_URL': '{webhook_server.url}/hook/x', 'ACME_TIMEOUT': '5'}})\n"
        "event = NotificationEvent(EventType.TRAINING_COMPLETED, 'title', 'message')\n"
        "assert send_now(channel, event).delivered\n"
        "print(sorted(name for name in ('urllib3', 'requests', 'ssl') if name in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(webhook_server.received) == 1


class RawServer:
    """A loopback server that answers each request with bytes of the test's choosing
    (``answers``: one callable per request, given the socket), one request per
    connection unless the answer keeps it; records each request's line and port.
    With ``tls`` (a server SSLContext) it speaks TLS."""

    def __init__(self, *answers, tls=None):
        self.tls = tls
        import socket
        import threading

        self.answers = list(answers)
        self.seen: list[tuple[str, int]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import contextlib

        while self.answers:
            try:
                connection, (_, port) = self.listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                connection.settimeout(10)
                if self.tls is not None:
                    connection = self.tls.wrap_socket(connection, server_side=True)
            with connection, contextlib.suppress(OSError):
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = connection.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length")), b"0"))
                    while len(body) < length:
                        body += connection.recv(65536)
                    self.seen.append((head.split(b"\r\n")[0].decode("latin-1"), port))
                    if not self.answers.pop(0)(connection):
                        break  # the answer closed the connection

    def stop(self) -> None:
        self.answers.clear()
        self.listener.close()
        self.thread.join(timeout=5)


def _answer(text: bytes, keep: bool = True):
    def send(connection) -> bool:
        connection.sendall(text)
        return keep
    return send


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_an_interim_103_answer_is_skipped_and_never_read_as_the_next_requests_answer():
    from afs_core.channels.http import WebhookSession

    server = RawServer(_answer(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n" + _ok(b"first")),
                       _answer(_ok(b"second")))
    session = WebhookSession()
    try:
        first = session.post(f"http://127.0.0.1:{server.port}/hook", b"{}", timeout=5)
        second = session.post(f"http://127.0.0.1:{server.port}/hook", b"{}", timeout=5)
        assert (first.status, first.text) == (200, "first")
        assert (second.status, second.text) == (200, "second")
    finally:
        session.close()
        server.stop()


def test_an_endless_answer_is_read_up_to_a_limit_and_its_connection_is_not_kept():
    from afs_core.channels import http as afs_http

    def endless(connection) -> bool:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")  # read until the close
        for _ in range(200):  # at most 13 MB, sent as fast as it is taken
            connection.sendall(b"z" * 65536)
        return False

    server = RawServer(endless, _answer(_ok(b"next")))
    session = afs_http.WebhookSession()
    try:
        started = time.monotonic()
        answer = session.post(f"http://127.0.0.1:{server.port}/hook", b"{}", timeout=30)
        assert answer.status == 200 and len(answer.text) == afs_http.MAX_ANSWER_BYTES
        assert time.monotonic() - started < 10  # not the deadline: the read stopped at the limit
        assert session.post(f"http://127.0.0.1:{server.port}/hook", b"{}", timeout=5).text == "next"
        assert server.seen[0][1] != server.seen[1][1]  # a new connection for the next request
    finally:
        session.close()
        server.stop()


@pytest.mark.parametrize("charset", ["punycode", "idna", "no-such-charset"])
def test_an_answer_in_an_odd_charset_is_read_as_utf8_at_once(charset):
    from afs_core.channels.http import WebhookSession

    body = b"accepted " + b"a" * 200_000  # punycode would take seconds to decode this
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=%s\r\nContent-Length: %d\r\n\r\n" % (
        charset.encode(), len(body))
    server = RawServer(_answer(head + body))
    session = WebhookSession()
    try:
        started = time.monotonic()
        answer = session.post(f"http://127.0.0.1:{server.port}/hook", b"{}", timeout=5)
        assert answer.status == 200 and answer.text.startswith("accepted a")
        assert time.monotonic() - started < 2
    finally:
        session.close()
        server.stop()


def test_a_path_with_a_space_or_a_letter_past_ascii_goes_out_percent_encoded():
    from afs_core.channels.http import WebhookSession

    server = RawServer(_answer(_ok(b"ok")), _answer(_ok(b"ok")))
    session = WebhookSession()
    try:
        for path in ("/hook/t ok", "/hook/t\u00f6k%2F"):
            assert session.post(f"http://127.0.0.1:{server.port}{path}", b"{}", timeout=5).status == 200
        assert [line for line, _ in server.seen] == ["POST /hook/t%20ok HTTP/1.1", "POST /hook/t%C3%B6k%2F HTTP/1.1"]
    finally:
        session.close()
        server.stop()


def test_a_deadline_let_go_never_shuts_the_socket_that_next_gets_its_descriptor_number():
    """An exchange hands its connection on (closed, or kept for the next request) and
    its deadline passes later: the socket now behind that descriptor number must live."""
    import socket

    from afs_core.channels.deadline import Deadline

    class Holder:
        sock: socket.socket | None = None

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        holder = Holder()
        holder.sock = socket.create_connection(listener.getsockname())
        first, _ = listener.accept()
        deadline = Deadline(30)
        deadline.attach(holder)
        number = holder.sock.fileno()
        deadline.detach()  # the exchange is over
        holder.sock.close()
        holder.sock = None
        other = socket.create_connection(listener.getsockname())  # very likely the same number
        peer, _ = listener.accept()
        deadline._expire()  # as the watchdog would, when its time comes
        other.sendall(b"still here")
        assert peer.recv(100) == b"still here"
        assert other.fileno() == number  # the case this is about
        for end in (other, peer, first):
            end.close()
    finally:
        listener.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_bytes_after_an_answer_mean_a_new_connection_for_the_next_request(tls, monkeypatch):
    """A server whose answer runs past its Content-Length (in one write: over TLS the
    rest waits decrypted, where polling the socket cannot see it): the next request
    must not read those bytes as its answer."""
    import ssl

    import trustme

    from afs_core.channels import http as afs_http

    context = None
    if tls:
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        monkeypatch.setattr(afs_http, "_tls_context", trusting)
    poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN"
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
    server = RawServer(_answer(first + b"x" * (8192 - len(first)) + poison), _answer(_ok(b"second")), tls=context)
    session = afs_http.WebhookSession()
    scheme = "https" if tls else "http"
    try:
        assert session.post(f"{scheme}://127.0.0.1:{server.port}/hook", b"{}", timeout=5).text == "ab"
        time.sleep(0.1)  # the surplus has arrived
        assert session.post(f"{scheme}://127.0.0.1:{server.port}/hook", b"{}", timeout=5).text == "second"
    finally:
        session.close()
        server.stop()


def test_an_answer_sent_before_the_body_was_taken_is_still_read():
    """A server that refuses a large body at once (413) and closes: the caller sees the
    413 (a permanent refusal), not a connection reset to retry forever."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def refuse() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(4096)
            connection.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
            connection.shutdown(socket.SHUT_WR)
            time.sleep(0.2)

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    from afs_core.channels.http import WebhookSession

    session = WebhookSession()
    try:
        answer = session.post(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", b"x" * 8_000_000, timeout=5)
        assert (answer.status, answer.text) == (413, "too big!")
    finally:
        session.close()
        thread.join(timeout=5)
        listener.close()


def test_connecting_to_addresses_that_never_answer_ends_at_the_deadline_not_a_timeout_each(monkeypatch):
    """Two addresses whose connect hangs (a listener whose backlog is full drops SYNs):
    the whole attempt ends at the request's deadline, not after the timeout twice."""
    import socket

    from afs_core.channels import http1
    from afs_core.channels.http import WebhookSession

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(4):  # fill the backlog: later connects get no answer
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    time.sleep(0.1)
    real = socket.getaddrinfo
    monkeypatch.setattr(http1.socket, "getaddrinfo", lambda host, port, **kw: real("127.0.0.1", address[1], **kw) * 2)
    session = WebhookSession()
    try:
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError, match="deadline|timed out"):
            session.post(f"http://hooks.example:{address[1]}/hook", b"{}", timeout=1.0)
        assert time.monotonic() - started < 1.6
    finally:
        session.close()
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_token_the_path_percent_encodes_is_masked_in_the_debug_line_too(caplog):
    import logging

    from afs_core.channels.http import WebhookSession

    server = RawServer(_answer(_ok(b"ok")))
    session = WebhookSession(secrets=["abc|def"])
    try:
        with caplog.at_level(logging.DEBUG, logger="afs.http"):
            assert session.post(f"http://127.0.0.1:{server.port}/hook/abc|def", b"{}", timeout=5).status == 200
    finally:
        session.close()
        server.stop()
    assert server.seen[0][0] == "POST /hook/abc%7Cdef HTTP/1.1"
    assert '"POST /hook/*** HTTP/1.1" 200' in caplog.text and "abc" not in caplog.text
