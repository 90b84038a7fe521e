"""Entry point of afs-discord: offers the ``discord`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_discord.notifier import DiscordNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("discord", DiscordNotifier)
