"""Shared pieces of the afs-telegram tests, as fixtures (test modules are imported by
path, so they cannot import this one): the loopback server answering as the Bot API
does, a channel on it, the secrets no output may show, and the ``afs`` command."""

import html.parser
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from afs_core.testing import Scripted
from afs_telegram import TelegramChannel

BOT_ID, KEY = "7012345678", "AAHfq3-Secret_Part0123456789abcdefX"
TOKEN = f"{BOT_ID}:{KEY}"
SENT = json.dumps({"ok": True, "result": {"message_id": 42, "chat": {"id": 1}, "date": 1800000000}})


@pytest.fixture(autouse=True)
def no_telegram_settings(monkeypatch):
    """Settings from the developer's shell never reach a test (the core's isolation
    may not know this distribution's prefix)."""
    for name in list(os.environ):
        if name.startswith("TELEGRAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server(webhook_server):
    """The loopback server, answering as the Bot API does to a sent message."""
    webhook_server.default = Scripted(status=200, body=SENT, headers={"Content-Type": "application/json"})
    return webhook_server


@pytest.fixture
def telegram(server, afs_plugins):
    channel = TelegramChannel(TOKEN, ["42"], api_url=server.url, timeout=3)
    yield channel
    channel.close()


@pytest.fixture
def creds():
    return SimpleNamespace(TOKEN=TOKEN, BOT_ID=BOT_ID, KEY=KEY, PATH=f"/bot{TOKEN}/sendMessage")


def assert_no_secret(*texts):
    for text in texts:
        assert KEY not in str(text), f"the token shows in: {str(text)[:300]}"


@pytest.fixture
def no_secret():
    return assert_no_secret


def answer(status, description, **parameters):
    """A Bot API error answer."""
    body = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Scripted(status=status, body=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.fixture
def bot_answer():
    return answer


def afs(*args, env, timeout=60):
    """The ``afs`` command, run as a user runs it, with only this channel loaded."""
    full = {**os.environ, "AFS_LOAD_PLUGINS": "telegram", "AFS_CONSOLE": "false", **env}
    return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


@pytest.fixture
def afs_cli():
    return afs


class _Markup(html.parser.HTMLParser):
    """Reads Telegram HTML as Telegram does: which tags, whether each is closed, what shows."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.tags, self.shown, self.problems = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"</{tag}> closes nothing open")

    def handle_data(self, data):
        self.shown.append(data)


def read_markup(text):
    """(tags used, the text shown) of a Telegram HTML text; fails on an unclosed tag or a
    bare ``<``/``&`` (which Telegram refuses: "can't parse entities")."""
    for found in re.finditer("<", text):
        assert re.match(r'</?(b|i|pre|a)>|<a href="[^"<>]*">', text[found.start():]), text[found.start():][:40]
    for found in re.finditer("&", text):
        assert re.match("&(amp|lt|gt|quot);", text[found.start():]), text[found.start():][:10]
    parser = _Markup()
    parser.feed(text)
    parser.close()
    assert not parser.problems and not parser.open, (parser.problems, parser.open)
    return parser.tags, "".join(parser.shown)


@pytest.fixture
def markup():
    return read_markup
