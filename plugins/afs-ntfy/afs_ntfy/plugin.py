"""Entry point of afs-ntfy: offers the ``ntfy`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_ntfy.channel import NtfyChannel


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("ntfy", NtfyChannel)
