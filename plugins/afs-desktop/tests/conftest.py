"""A private D-Bus session bus and a recording notification server, for real Linux tests."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={directory}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"


@pytest.fixture
def session_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh dbus-daemon with no service directories (so nothing is auto-started);
    its address is DBUS_SESSION_BUS_ADDRESS for the test."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.fail("dbus-daemon is missing: .ci/run installs it (apt-get install dbus-daemon)")
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(directory=tmp_path))
    process = subprocess.Popen([daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, text=True)
    try:
        address = process.stdout.readline().strip()  # dbus-daemon prints it once it listens
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=5)


class NotificationServer:
    """Owns org.freedesktop.Notifications and records every Notify call."""

    def __init__(self, address: str) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.calls: list[tuple] = []
        self.connection = open_dbus_connection(bus=address)
        reply = self.connection.send_and_get_reply(message_bus.RequestName(BUS_NAME), timeout=2)
        assert reply.body == (1,), reply.body  # primary owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_error, new_method_return

        answers = {
            "Notify": lambda m: ("u", (len(self.calls),)),
            "GetServerInformation": lambda m: ("ssss", ("afs-test-server", "afs", "1.0", "1.2")),
            "GetCapabilities": lambda m: ("as", (["body", "body-markup"],)),
            "CloseNotification": lambda m: (None, ()),
            "Introspect": lambda m: ("s", ("<node/>",)),
        }
        while not self._stop.is_set():
            try:
                message = self.connection.receive(timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            header = message.header
            if header.message_type != MessageType.method_call:
                continue
            member = header.fields.get(HeaderFields.member)
            if member == "Notify":
                self.calls.append(message.body)
            if member in answers:
                signature, body = answers[member](message)
                self.connection.send(new_method_return(message, signature, body) if signature else new_method_return(message))
            else:
                self.connection.send(new_error(message, "org.freedesktop.DBus.Error.UnknownMethod"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.connection.close()


@pytest.fixture
def notification_server(session_bus: str) -> Iterator[NotificationServer]:
    server = NotificationServer(session_bus)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def no_session_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)


@pytest.fixture
def stalled_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A "bus" that completes the login handshake and then never answers Hello."""
    import socket

    path = tmp_path / "stalled-bus"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        buffer = b""
        try:
            while not stop.is_set():
                chunk = conn.recv(1024)
                if not chunk:
                    return
                buffer += chunk
                if b"AUTH" in buffer and b"OK" not in buffer:
                    conn.sendall(b"OK " + b"0" * 32 + b"\r\n")
                    buffer += b"OK"
                if b"NEGOTIATE_UNIX_FD" in buffer and b"AGREE" not in buffer:
                    conn.sendall(b"AGREE_UNIX_FD\r\n")
                    buffer += b"AGREE"
                if b"BEGIN" in buffer:
                    stop.wait(30)  # logged in: now say nothing, ever
                    return
        except OSError:
            return
        finally:
            conn.close()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    address = f"unix:path={path}"
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
    try:
        yield address
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
