"""Shared fixtures: a routing key, PagerDuty's 202, a channel on the loopback server,
and subprocess runners for scripts and the ``afs`` command."""

import json
import os
import subprocess
import sys

import pytest

from afs_core.testing import Scripted
from afs_pagerduty import PagerDutyChannel

KEY = "R0uT1nGkEy0123456789abcdefSECRET"  # 32 letters and digits, like an Integration Key
ACCEPTED = Scripted(status=202, body=json.dumps({"status": "success", "message": "Event processed"}),
                    headers={"Content-Type": "application/json"})


@pytest.fixture
def routing_key():
    return KEY


@pytest.fixture
def accepted():
    """The answer PagerDuty gives an event it took."""
    return ACCEPTED


@pytest.fixture
def events_url(webhook_server):
    webhook_server.default = ACCEPTED
    return f"{webhook_server.url}/v2/enqueue"


@pytest.fixture
def pagerduty(events_url, afs_plugins):
    channel = PagerDutyChannel(KEY, events_url, timeout=3)
    yield channel
    channel.close()


@pytest.fixture
def pd_env(events_url, afs_isolated_env):
    """Settings for a subprocess: this channel only, on the loopback server, with the
    test's own AFS_HOME (shared by every process of one test)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PAGERDUTY_", "AFS_"))},
        "AFS_HOME": os.environ["AFS_HOME"],
        "AFS_LOAD_PLUGINS": "pagerduty",
        "PAGERDUTY_ROUTING_KEY": KEY,
        "PAGERDUTY_EVENTS_URL": events_url,
        "PAGERDUTY_TIMEOUT": "5",
    }


@pytest.fixture
def run_python(pd_env):
    """Run ``code`` in a fresh interpreter, as a training script runs."""
    def run(code, env=None, timeout=60):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={**pd_env, **(env or {})})
    return run


@pytest.fixture
def afs_cli(pd_env):
    """The ``afs`` command in a subprocess, as a user runs it."""
    def afs(*args, env=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True,
                              timeout=timeout, env={**pd_env, **(env or {})})
    return afs
