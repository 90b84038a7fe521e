"""Entry point of afs-telegram: offers the ``telegram`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_telegram.channel import TelegramChannel


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("telegram", TelegramChannel)
