"""Entry point of afs-twilio: offers the ``twilio`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_twilio.notifier import TwilioNotifier


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("twilio", TwilioNotifier)
