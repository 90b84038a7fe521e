"""Entry point of afs-email: offers the ``email`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_email.notifier import EmailNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("email", EmailNotifier)
