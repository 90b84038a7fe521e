"""Shared settings for the afs-webhook tests: secrets that are easy to grep for.

Tests import nothing from here (pytest runs them with ``--import-mode=importlib``):
the ``kit`` fixture carries the constants and helpers.
"""

import base64
import os
import subprocess
import sys
import time

import pytest

from afs_core.testing import Scripted
from afs_webhook import WebhookNotifier

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
PATH_TOKEN = "pathT0KENxyz"
QUERY_TOKEN = "qT0KENabc"
AUTH_TOKEN = "authT0KENdef"
#: Every secret a test may look for in an output.
SECRETS = (SECRET, SECRET[len("whsec_"):], PATH_TOKEN, QUERY_TOKEN, AUTH_TOKEN)


def url_of(server, name="hook"):
    return f"{server.url}/{name}/{PATH_TOKEN}?key={QUERY_TOKEN}"


def assert_no_secret(*texts):
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text), f"a secret ({secret[:4]}…) leaked into: {str(text)[:300]!r}"


def wait_until(condition, timeout=10.0):
    """Polls ``condition`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def kit():
    import types

    return types.SimpleNamespace(KEY=KEY, SECRET=SECRET, PATH_TOKEN=PATH_TOKEN, QUERY_TOKEN=QUERY_TOKEN,
                                 AUTH_TOKEN=AUTH_TOKEN, SECRETS=SECRETS, url_of=url_of,
                                 assert_no_secret=assert_no_secret, wait_until=wait_until)


@pytest.fixture(autouse=True)
def _no_webhook_settings(monkeypatch):
    for name in list(os.environ):
        if name.startswith("WEBHOOK_"):
            monkeypatch.delenv(name)


@pytest.fixture
def hook(webhook_server, afs_plugins):
    webhook_server.default = Scripted(status=200, body="ok")
    notifier = WebhookNotifier(url_of(webhook_server), SECRET, headers={"Authorization": f"Bearer {AUTH_TOKEN}"},
                               timeout=3)
    yield notifier
    notifier.close()


@pytest.fixture
def afs_cli():
    """Runs ``afs`` as a user does, in a separate process with the given settings."""

    def run(*args, env=None, timeout=60):
        full = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, "-m", "afs_core", *args], env=full, capture_output=True, text=True,
                              timeout=timeout)

    return run
