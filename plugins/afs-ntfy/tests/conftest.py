"""Shared pieces of the afs-ntfy tests, as fixtures (test modules are imported by path,
so they cannot import this one): the loopback server answering as ntfy does, a channel
on it, the secrets no output may ever show, and the ``afs`` command."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from afs_core.testing import Scripted
from afs_ntfy import NtfyChannel

TOPIC = "afs_TopicSecret-7q"
TOKEN = "tk_T0kenSecretValue0123456789ab"
USER, PASSWORD = "alice", "pässw0rd-Secret"
BASIC = "Basic YWxpY2U6cMOkc3N3MHJkLVNlY3JldA=="  # alice:pässw0rd-Secret, UTF-8
SECRETS = (TOPIC, TOKEN, PASSWORD, BASIC.split()[1])
PUBLISHED = f'{{"id":"hV9lXXdUA3Ex","time":1800000000,"expires":1800043200,"event":"message","topic":"{TOPIC}"}}'


@pytest.fixture(autouse=True)
def no_ntfy_settings(monkeypatch):
    """Settings from the developer's shell never reach a test (the core's isolation
    may not know this distribution's prefix)."""
    for name in list(os.environ):
        if name.startswith("NTFY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server(webhook_server):
    """The loopback server, answering as ntfy does to a published message."""
    webhook_server.default = Scripted(status=200, body=PUBLISHED, headers={"Content-Type": "application/json"})
    return webhook_server


@pytest.fixture
def ntfy(server, afs_plugins):
    channel = NtfyChannel(TOPIC, server.url, token=TOKEN, timeout=3)
    yield channel
    channel.close()


@pytest.fixture
def creds():
    return SimpleNamespace(TOPIC=TOPIC, TOKEN=TOKEN, USER=USER, PASSWORD=PASSWORD, BASIC=BASIC, SECRETS=SECRETS)


@pytest.fixture
def no_secret():
    return assert_no_secret


@pytest.fixture
def afs_cli():
    return afs


def afs(*args, env, timeout=60):
    """The ``afs`` command, run as a user runs it, with only this channel loaded."""
    full = {**os.environ, "AFS_LOAD_PLUGINS": "ntfy", "AFS_CONSOLE": "false", **env}
    return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def assert_no_secret(*texts):
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text), f"a secret shows in: {str(text)[:300]}"
