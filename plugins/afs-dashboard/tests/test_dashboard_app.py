"""The dashboard application in-process (Starlette's TestClient): the token, the Host
check, the headers, secrets kept off the pages, the curves, and the command's checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from afs_core import Channel, Setting, hookimpl
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_core.testing import make_event
from afs_dashboard.app import Settings, create_app
from afs_dashboard.svg import line_chart

SECRET = "sk-live-0123456789abcdef"


class Keyed(Channel):
    settings = (Setting("KEYED_TOKEN", "token", required=True, secret=True),)

    def __init__(self, token):
        self.token = token

    def deliver(self, message):
        return "ok"


class KeyedPlugin:
    @hookimpl
    def afs_register_channels(self, register):
        register("keyed", Keyed)


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "afs.db")


def client(store, **settings):
    return TestClient(create_app(store, Settings(**settings)), base_url="http://127.0.0.1:8765")


def a_dead_delivery(store, error):
    store.enqueue(make_event(title="Training failed: m", run_id="run-1"), ["keyed"])
    [claimed] = store.claim("keyed", "me")
    store.finish_many([(claimed.delivery_id, DeliveryStatus.FAILED, error, None)], "me")
    return claimed.delivery_id


def test_every_page_forbids_inline_scripts_and_framing(store):
    store.enqueue(make_event(), ["recording"])
    with client(store) as web:
        for path in ("/runs", "/runs/run-1", "/outbox", "/channels", "/runs.json", "/static/dashboard.js"):
            answer = web.get(path)
            assert answer.status_code == 200, path
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert "<script src=\"/static/dashboard.js\"" in web.get("/runs").text
        assert not re.search(r"<script(?![^>]*\bsrc=)", web.get("/runs/run-1").text)


def test_with_a_token_every_request_needs_it(store):
    with client(store, token="T0k") as web:
        assert web.get("/runs").status_code == 401
        assert web.get("/runs?token=wrong").status_code == 403
        assert web.get("/runs", headers={"Authorization": "Bearer T0k"}).status_code == 200
        once = web.get("/runs?token=T0k&x=1", follow_redirects=False)
        assert once.status_code == 303 and once.headers["location"] == "/runs?x=1"
        assert "httponly" in once.headers["set-cookie"].lower() and "samesite=strict" in once.headers["set-cookie"].lower()
        assert web.get("/runs").status_code == 200  # the cookie now


def test_a_page_asked_for_under_another_name_is_refused(store):
    # A DNS-rebinding page (evil.example resolving to 127.0.0.1) cannot read the history.
    with client(store) as web:
        assert web.get("/runs", headers={"host": "evil.example:8765"}).status_code == 421
        assert web.get("/runs", headers={"host": "localhost:8765"}).status_code == 200


def test_posts_need_the_pages_csrf_token(store):
    delivery = a_dead_delivery(store, "HTTP 500")
    with client(store) as web:
        assert web.post(f"/outbox/{delivery}/retry", data={"csrf": "guess"}).status_code == 403
        assert web.post("/outbox/flush").status_code == 403
        assert web.get(f"/outbox/{delivery}/retry").status_code == 405
        csrf = re.search(r'name="csrf" value="([^"]+)"', web.get("/outbox").text).group(1)
        assert web.post("/outbox/flush", data={"csrf": csrf},
                        headers={"origin": "http://evil.example"}).status_code == 403
        retried = web.post(f"/outbox/{delivery}/retry", data={"csrf": csrf})
        assert retried.status_code == 200 and "pending again" in retried.text


def test_a_channels_secret_is_never_shown(store, afs_plugins, monkeypatch):
    afs_plugins.register(KeyedPlugin(), name="keyed-plugin")
    a_dead_delivery(store, f"HTTP 401: token {SECRET} revoked")
    with client(store, env={"KEYED_TOKEN": SECRET}) as web:
        for path in ("/outbox", "/channels", "/runs/run-1", "/outbox.json", "/channels.json", "/runs/run-1.json"):
            text = web.get(path).text
            assert SECRET not in text, path
        assert "token *** revoked" in web.get("/outbox").text


def test_a_run_that_told_nothing_for_a_while_is_quiet(store):
    store.enqueue(make_event("training_started", title="Training started", run_id="slow"), [])
    with client(store, quiet_after=0.0) as web:
        [run] = web.get("/runs.json").json()["runs"]
    assert run["state"] == "quiet" and run["state_detail"].startswith("nothing told for")


def test_an_unknown_run_is_a_404_that_says_so(store):
    with client(store) as web:
        answer = web.get("/runs/%3Cb%3Enope")
    assert answer.status_code == 404 and "&lt;b&gt;nope" in answer.text


def test_a_curve_draws_every_point_and_escapes_its_name():
    drawn = line_chart([(step, 1.0 / (step + 1)) for step in range(40)], label="<loss>")
    assert 'data-points="40"' in drawn and len(re.search(r' points="([^"]+)"', drawn).group(1).split()) == 40
    assert "&lt;loss&gt;" in drawn and "<loss>" not in drawn
    assert 'data-points="0"' in line_chart([], label="x") and "<circle" in line_chart([(1, 2)], label="x")


def test_the_command_is_in_afs_help_and_loading_it_stays_cheap():
    env = {**os.environ, "AFS_LOAD_PLUGINS": "dashboard"}
    helped = subprocess.run([sys.executable, "-m", "afs_core", "--help"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert "dashboard" in helped.stdout and "afs-dashboard" in helped.stdout
    probe = "import sys, afs_dashboard.plugin; print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_a_channel_not_configured_names_the_setting_it_misses(store, afs_plugins):
    afs_plugins.register(KeyedPlugin(), name="keyed-plugin")
    with client(store, env={}) as web:
        keyed = next(c for c in web.get("/channels.json").json()["channels"] if c["name"] == "keyed")
        assert keyed["state"] == "not configured" and keyed["missing"] == ["KEYED_TOKEN"]
        assert "missing: KEYED_TOKEN" in web.get("/channels").text


def test_a_store_that_cannot_be_reached_is_a_503_that_says_so(store, monkeypatch):
    """A shared database restarting: the page says the store is away and the script tries
    again, rather than an error page."""
    from afs_core.delivery.store import StoreUnavailable

    def away(*args, **kwargs):
        raise StoreUnavailable("the database postgresql://afs@db/team cannot be reached")

    monkeypatch.setattr(store, "runs", away)
    for path in ("/runs", "/runs.json"):
        answer = client(store).get(path)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "cannot be reached" in answer.text
