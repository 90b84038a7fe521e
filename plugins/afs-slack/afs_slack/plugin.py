"""Entry point of afs-slack: offers the ``slack`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_slack.notifier import SlackNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("slack", SlackNotifier)
