"""Real SMTP servers on 127.0.0.1 for the email channel's tests (aiosmtpd, trustme)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "trainer@example.com", "app-pa55word"


def free_port() -> int:
    # aiosmtpd cannot bind port 0 itself; ask the OS for a free one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Recorder:
    """Handler that records messages, envelopes, logins and connections."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[str] = []
        self.peers: set[tuple[str, int]] = set()
        self.refuse: set[str] = set()
        self.refuse_code = "550 5.1.1 No such user here"
        self.auth_attempts = 0
        self.drop_after: int | None = None  # drop a connection that starts one more message

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.peers.add(session.peer)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        sent_here = getattr(session, "afs_sent", 0)
        if self.drop_after is not None and sent_here >= self.drop_after:
            server.transport.close()  # as a server that restarts or times the client out
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse_code
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        session.afs_sent = getattr(session, "afs_sent", 0) + 1
        return "250 Message accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.auth_attempts += 1
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD
        if ok:
            self.logins.append(auth_data.login.decode())
        # handled=False lets aiosmtpd answer 535 itself; otherwise a failed login hangs the client.
        return AuthResult(success=ok, handled=False)

    def parsed(self, index: int = -1):
        return message_from_bytes(self.messages[index][2], policy=policy.default)


class Server:
    def __init__(self, controller: Controller, recorder: Recorder, port: int) -> None:
        self.controller, self.recorder, self.port = controller, recorder, port


@pytest.fixture(name="free_port")
def free_port_fixture():
    return free_port


@pytest.fixture(scope="session")
def credentials() -> tuple[str, str]:
    return USER, PASSWORD


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> dict:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"server": server_context, "ca_file": str(ca_file)}


def _serve(**options) -> Iterator[Server]:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, authenticator=recorder.authenticate,
                            ready_timeout=10, **options)
    controller.start()
    try:
        yield Server(controller, recorder, port)
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(certificates) -> Iterator[Server]:
    """Port-587 style: STARTTLS and AUTH both required."""
    yield from _serve(tls_context=certificates["server"], require_starttls=True, auth_required=True)


@pytest.fixture
def implicit_tls_server(certificates) -> Iterator[Server]:
    """Port-465 style: TLS from the first byte."""
    yield from _serve(ssl_context=certificates["server"], auth_required=True, auth_require_tls=False)


@pytest.fixture
def plain_server() -> Iterator[Server]:
    """No STARTTLS offered at all, AUTH allowed in clear (a server we must not trust)."""
    yield from _serve(auth_require_tls=False)


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list]]:
    """Accepts TCP connections and then says nothing (or dribbles a byte a second)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    accepted: list = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)
            for byte in b"220 slow.example ESMTP":
                if stop.wait(1.0):
                    break
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


@pytest.fixture
def stalling_starttls_server() -> Iterator[int]:
    """Greets, offers STARTTLS, says "go ahead" and then never does its half of the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.sendall(b"220 stall.example ESMTP\r\n")
                    conn.recv(1024)  # EHLO
                    conn.sendall(b"250-stall.example\r\n250 STARTTLS\r\n")
                    conn.recv(1024)  # STARTTLS
                    conn.sendall(b"220 Ready to start TLS\r\n")
                    stop.wait(30)  # and then nothing: the client's handshake waits on us
                except OSError:
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
