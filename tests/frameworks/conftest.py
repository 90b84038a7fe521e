"""Framework integration tests: real tiny trainings on the CPU (torch, transformers,
lightning, keras on the torch backend). They run in their own tox environment."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported

import pytest

from afs_core import Channel, NotificationManager
from afs_core.delivery.policy import ChannelPolicy


class EventLog(Channel):
    """Keeps the events themselves, in order, so a test can read the exact sequence."""

    def __init__(self):
        self.events = []

    def format(self, event):
        return event

    def deliver(self, message):
        self.events.append(message)

    @property
    def types(self):
        return [event.event_type.value for event in self.events]


@pytest.fixture
def events(afs_plugins):
    log = EventLog()
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("log", log, policy=ChannelPolicy(throttle_window=0))
    log.manager = manager
    return log
