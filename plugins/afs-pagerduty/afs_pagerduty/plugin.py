"""Entry point of afs-pagerduty: offers the ``pagerduty`` channel to afs-core."""

from __future__ import annotations

from afs_core import hookimpl
from afs_core.hookspecs import RegisterChannel
from afs_pagerduty.channel import PagerDutyChannel


@hookimpl
def afs_register_channels(register: RegisterChannel) -> None:
    register("pagerduty", PagerDutyChannel)
