"""Backends that run a program: macOS ``osascript``, Windows PowerShell, ``notify-send``.

User text is only ever an argument or an environment variable, never part of a
script or a command line that is parsed: a title like ``$(id)``, ``--help`` or
``'; Remove-Item -Recurse C:\\ #`` is shown literally.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

import attrs

from afs_core import PermanentDeliveryError, TransientDeliveryError
from afs_desktop.message import DesktopMessage

RUN_TIMEOUT = 5.0

# A fixed AppleScript: the text arrives as argv items, never as script source.
APPLESCRIPT_WITH_SOUND = "display notification (item 2 of argv) with title (item 1 of argv) sound name (item 3 of argv)"
APPLESCRIPT_SILENT = "display notification (item 2 of argv) with title (item 1 of argv)"
MACOS_SOUND = "Glass"

# A fixed PowerShell script: the text arrives in environment variables and goes
# into the toast XML as DOM text nodes, so it can be neither code nor markup.
POWERSHELL_TOAST = r"""
$ErrorActionPreference = 'Stop'
[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime] > $null
$template = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent([Windows.UI.Notifications.ToastTemplateType]::ToastText02)
$texts = $template.GetElementsByTagName('text')
$texts.Item(0).AppendChild($template.CreateTextNode($env:AFS_TOAST_TITLE)) > $null
$texts.Item(1).AppendChild($template.CreateTextNode($env:AFS_TOAST_BODY)) > $null
if ($env:AFS_TOAST_SILENT -eq '1') {
  $audio = $template.CreateElement('audio'); $audio.SetAttribute('silent', 'true')
  $template.DocumentElement.AppendChild($audio) > $null
}
$toast = [Windows.UI.Notifications.ToastNotification]::new($template)
# An unpackaged script has no app id of its own, and Windows drops toasts from unknown
# ids silently: show it as PowerShell's, which every Windows has registered.
$appId = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\WindowsPowerShell\v1.0\powershell.exe'
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($appId).Show($toast)
""".strip()


@attrs.frozen
class Invocation:
    """A program to run: its arguments and the environment variables it adds."""

    argv: Sequence[str]
    env: Mapping[str, str] = attrs.field(factory=dict)


def osascript_invocation(message: DesktopMessage) -> Invocation:
    script = APPLESCRIPT_WITH_SOUND if message.sound else APPLESCRIPT_SILENT
    argv = ["osascript", "-e", "on run argv", "-e", script, "-e", "end run", "--", message.title, message.body]
    if message.sound:
        argv.append(MACOS_SOUND)
    return Invocation(argv)


def powershell_invocation(message: DesktopMessage) -> Invocation:
    argv = ["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
            "-Command", POWERSHELL_TOAST]
    env = {"AFS_TOAST_TITLE": message.title, "AFS_TOAST_BODY": message.body,
           "AFS_TOAST_SILENT": "0" if message.sound else "1"}
    return Invocation(argv, env)


def notify_send_invocation(message: DesktopMessage) -> Invocation:
    from xml.sax.saxutils import escape

    from afs_desktop.backends.freedesktop import EXPIRE_NEVER, URGENCY

    level = URGENCY[message.level]
    urgency = {0: "low", 1: "normal", 2: "critical"}[level]
    argv = ["notify-send", "-u", urgency, "-a", message.app_name]
    if level == 2:
        argv += ["-t", str(EXPIRE_NEVER)]  # as on D-Bus: critical stays until dismissed
    return Invocation([*argv, "--", message.title, escape(message.body)])


def run(invocation: Invocation) -> None:
    """Run without a shell, bounded in time; a failure becomes a DeliveryError."""
    try:
        done = subprocess.run(
            list(invocation.argv), env={**os.environ, **invocation.env}, capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise PermanentDeliveryError(f"{invocation.argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise TransientDeliveryError(f"{invocation.argv[0]} did not finish within {RUN_TIMEOUT:g} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        last = said[-1] if said else "no output"
        raise PermanentDeliveryError(f"{invocation.argv[0]} failed ({done.returncode}): {last}")


class CommandBackend:
    """A backend that runs one program per notification."""

    def __init__(self, name: str, program: str, build, platform: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.name, self.program, self.build, self.platform = name, program, build, platform

    def unavailable_reason(self) -> str | None:
        if self.platform and not sys.platform.startswith(self.platform):
            return f"{self.name} needs {self.platform}"
        if shutil.which(self.program) is None:
            return f"{self.program} is not on PATH"
        return None

    def show(self, message: DesktopMessage) -> None:
        run(self.build(message))


def macos_backend() -> CommandBackend:
    return CommandBackend("macos-osascript", "osascript", osascript_invocation, platform="darwin")


def windows_backend() -> CommandBackend:
    return CommandBackend("windows-toast", "powershell.exe", powershell_invocation, platform="win32")


def notify_send_backend() -> CommandBackend:
    return CommandBackend("notify-send", "notify-send", notify_send_invocation, platform="linux")
