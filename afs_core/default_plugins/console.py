"""The console channel: always there, so a fresh install shows events with no setup.

Writes to stderr (stdout belongs to the training script), coloured on a terminal,
plain when redirected or when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from afs_core.channels.base import Channel
from afs_core.channels.settings import Setting, boolean, read_settings
from afs_core.errors import TransientDeliveryError
from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import LEVEL_EMOJI, event_fields, loss_summary, source_line, strip_control, trim_traceback
from afs_core.hookspecs import hookimpl

_COLOURS = {
    NotificationLevel.INFO: "\033[36m",
    NotificationLevel.SUCCESS: "\033[32m",
    NotificationLevel.WARNING: "\033[33m",
    NotificationLevel.ERROR: "\033[31m",
    NotificationLevel.CRITICAL: "\033[1;37;41m",
}
_DIM, _RESET = "\033[2m", "\033[0m"


@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleMessage:
    """A rendered console message: the level picks the colour, the lines are plain text."""

    level: NotificationLevel
    headline: str
    details: tuple[str, ...] = ()


class ConsoleChannel(Channel):
    """Readable lines on stderr; the embedded default channel."""

    name = "console"
    settings = (Setting("AFS_CONSOLE", "enabled", parse=boolean, required=True),)
    throttle_seconds = 0.0  # a local terminal shows every epoch; nobody's phone buzzes
    stays_in_process = True  # its lines go to this process's stderr (a notebook's cell): never a courier's

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None) -> None:
        self._stream = stream
        self._colour = colour

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsoleChannel | None:
        """``AFS_CONSOLE=true`` turns the console on beside other channels; unset, it is
        only the fallback when nothing else is configured."""
        values = read_settings(cls.settings, env)
        return cls() if values and values["enabled"] else None

    @property
    def stream(self) -> IO[str]:
        # Looked up at send time: test runners and notebooks swap sys.stderr.
        return self._stream if self._stream is not None else sys.stderr

    def _use_colour(self, stream: IO[str]) -> bool:
        if self._colour is not None:
            return self._colour
        if os.environ.get("NO_COLOR"):
            return False
        isatty = getattr(stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except (OSError, ValueError):
            return False

    def format(self, event: NotificationEvent) -> ConsoleMessage:
        head = f"{LEVEL_EMOJI[event.level]} {event.level.name} {strip_control(event.title, keep='')}"
        details: list[str] = []
        if event.message:
            details.extend(strip_control(event.message).splitlines())
        if event.error_details and event.error_details not in event.message:
            details.extend(strip_control(event.error_details).splitlines())
        summary = loss_summary(event)
        if summary:
            details.append(summary)
        fields = event_fields(event)
        if fields:
            details.append(strip_control(" · ".join(f"{k}: {v}" for k, v in fields), keep=""))
        traceback = event.context.get("traceback")
        if isinstance(traceback, str) and traceback:
            details.extend(strip_control(trim_traceback(traceback)).splitlines())
        details.append(strip_control(source_line(event), keep=""))
        return ConsoleMessage(event.level, head, tuple(details))

    def deliver(self, message: Any) -> None:
        stream = self.stream
        if isinstance(message, ConsoleMessage):
            colour = self._use_colour(stream)
            head = message.headline
            if colour:
                head = f"{_COLOURS[message.level]}{head}{_RESET}"
            lines = [f"[afs] {head}"]
            for line in message.details:
                lines.append(f"{_DIM}      {line}{_RESET}" if colour else f"      {line}")
            text = "\n".join(lines) + "\n"
        else:
            text = strip_control(str(message)).rstrip("\n") + "\n"
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # closed or broken stream
            raise TransientDeliveryError(f"console stream unavailable: {exc}") from exc

    def describe(self) -> str:
        return "console (stderr)" if self._stream is None else f"console ({getattr(self._stream, 'name', 'stream')})"


@hookimpl
def afs_register_channels(register: Any) -> None:
    register("console", ConsoleChannel)
