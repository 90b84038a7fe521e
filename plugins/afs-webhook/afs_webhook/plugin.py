"""Entry point of afs-webhook: offers the ``webhook`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_webhook.notifier import WebhookNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("webhook", WebhookNotifier)
