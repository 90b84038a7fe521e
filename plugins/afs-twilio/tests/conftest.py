"""Fixtures for the afs-twilio tests; the helpers they share live in ``twilio_api``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib puts no test folder on the path

from twilio_api import ALICE, SENDER, SID, TOKEN, created  # noqa: E402

from afs_twilio import TwilioNotifier  # noqa: E402


@pytest.fixture
def make_twilio(webhook_server, afs_plugins):
    """Builds channels posting to the loopback server; closes them after the test."""
    made = []
    webhook_server.default = created()

    def make(**overrides):
        fields = dict(to=[ALICE], account_sid=SID, auth_token=TOKEN, from_number=SENDER,
                      api_url=webhook_server.url, timeout=5)
        fields.update(overrides)
        channel = TwilioNotifier(**fields)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


@pytest.fixture
def twilio(make_twilio):
    return make_twilio()
