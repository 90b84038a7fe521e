"""Linux: the freedesktop notification service on the session D-Bus, through jeepney.

Talking D-Bus directly (no ``notify-send`` process) gives the urgency, app name
and expiry exactly and fails in well under a second when there is no bus or no
notification server. The body is XML-escaped: servers may render markup in it.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from xml.sax.saxutils import escape

from afs_core import PermanentDeliveryError, TransientDeliveryError
from afs_core.events import NotificationLevel
from afs_desktop.message import DesktopMessage

BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
NOTIFY_SIGNATURE = "susssasa{sv}i"
CALL_TIMEOUT = 0.45  # seconds per call: a probe and a send together stay under one

URGENCY = {  # freedesktop urgency byte: 0 low, 1 normal, 2 critical
    NotificationLevel.INFO: 1,
    NotificationLevel.SUCCESS: 1,
    NotificationLevel.WARNING: 1,
    NotificationLevel.ERROR: 2,
    NotificationLevel.CRITICAL: 2,
}
EXPIRE_SERVER_DEFAULT = -1
EXPIRE_NEVER = 0


def notify_arguments(message: DesktopMessage) -> tuple[Any, ...]:
    """The exact ``Notify`` arguments: (app_name, replaces_id, app_icon, summary, body,
    actions, hints, expire_timeout)."""
    urgency = URGENCY[message.level]
    hints: dict[str, tuple[str, Any]] = {"urgency": ("y", urgency)}
    if message.sound:
        hints["sound-name"] = ("s", "message-new-instant")
    else:
        hints["suppress-sound"] = ("b", True)
    expire = EXPIRE_NEVER if urgency == 2 else EXPIRE_SERVER_DEFAULT  # critical stays until dismissed
    return (message.app_name, 0, "", message.title, escape(message.body), [], hints, expire)


class FreedesktopBackend:
    name = "freedesktop-dbus"

    def __init__(self, address: str | None = None) -> None:
        self.address = address  # None: DBUS_SESSION_BUS_ADDRESS at call time

    def _bus(self) -> str:
        address = self.address or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise PermanentDeliveryError("desktop notifications unavailable: no D-Bus session bus "
                                         "(DBUS_SESSION_BUS_ADDRESS is not set; a headless server?)")
        return address

    def _call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
        """One method call on its own thread, abandoned after CALL_TIMEOUT: jeepney's
        connection set-up sends Hello with no timeout, so a bus that stalls after
        authentication would otherwise hold the caller for ever."""
        outcome: list[Any] = []

        def attempt() -> None:
            try:
                outcome.append(("ok", self._call_blocking(method, signature, body)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(("error", exc))

        worker = threading.Thread(target=attempt, name="afs-dbus-call", daemon=True)
        worker.start()
        worker.join(CALL_TIMEOUT + 0.1)
        if not outcome:
            raise TransientDeliveryError("the session bus did not answer within half a second")
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value

    def _call_blocking(self, method: str, signature: str | None, body: tuple[Any, ...]) -> Any:
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        target = DBusAddress(OBJECT_PATH, bus_name=BUS_NAME, interface=BUS_NAME)
        try:
            connection = open_dbus_connection(bus=self._bus(), auth_timeout=CALL_TIMEOUT)
        except (OSError, ValueError, KeyError) as exc:
            raise PermanentDeliveryError(
                f"desktop notifications unavailable: cannot reach the session bus ({exc})") from None
        try:
            call = new_method_call(target, method, signature, body) if signature else new_method_call(target, method)
            reply = connection.send_and_get_reply(call, timeout=CALL_TIMEOUT)
        except TimeoutError:
            raise TransientDeliveryError("the notification server did not answer within a second") from None
        except OSError as exc:
            raise TransientDeliveryError(f"D-Bus connection failed: {exc}") from None
        finally:
            connection.close()
        if reply.header.message_type == MessageType.error:
            detail = reply.body[0] if reply.body else reply.header.fields
            raise PermanentDeliveryError(
                f"desktop notifications unavailable: no notification server on the bus ({detail})")
        return reply.body

    def unavailable_reason(self) -> str | None:
        try:
            import jeepney  # noqa: F401
        except ImportError:
            return "jeepney is not installed"
        try:
            self._call("GetServerInformation")
        except (PermanentDeliveryError, TransientDeliveryError) as exc:
            return str(exc)
        return None

    def show(self, message: DesktopMessage) -> int:
        (notification_id,) = self._call("Notify", NOTIFY_SIGNATURE, notify_arguments(message))
        return int(notification_id)
