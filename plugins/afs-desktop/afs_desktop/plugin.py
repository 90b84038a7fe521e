"""Entry point of afs-desktop: offers the ``desktop`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_desktop.notifier import DesktopNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("desktop", DesktopNotifier)
