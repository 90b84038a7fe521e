"""What the core gives channels that do more than post one message: a memory kept in
the store, one event to several recipients, their own least level, nothing to send,
and requests with any body and headers."""

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from afs_core import (
    Channel,
    EventType,
    NothingToSend,
    NotificationLevel,
    NotificationManager,
    PermanentDeliveryError,
    TransientDeliveryError,
    WebhookChannel,
    send_now,
)
from afs_core.channels import LocalMemory, deliver_to_each
from afs_core.delivery.memory import StoredMemory
from afs_core.delivery.policy import ChannelPolicy
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus


class Paging(Channel):
    """Pages on errors; a completed run ends the page it opened, if any."""

    default_min_level = NotificationLevel.ERROR
    wanted_below_level = frozenset({EventType.TRAINING_COMPLETED})

    def __init__(self):
        self.sent = []

    def format(self, event):
        return {"type": event.event_type.value, "run": event.run_id}

    def deliver(self, message):
        key = f"open:{message['run']}"
        if message["type"] == "training_completed":
            if self.memory.get(key) is None:
                raise NothingToSend(f"no open page for run {message['run']}")
            self.memory.set(key, None)
            self.sent.append(("resolve", message["run"]))
            return "resolved"
        self.memory.set(key, "1")
        self.sent.append(("trigger", message["run"]))
        return "triggered"


def _manager(afs_plugins, path, env=None):
    return NotificationManager(plugins=afs_plugins, store=Store(path), settings=env or {},
                               retry=RetryPolicy(max_attempts=3, base=0.05, cap=0.1))


def test_a_channels_own_least_level_is_kept_and_only_raised_by_afs_min_level():
    def level(env, default=NotificationLevel.ERROR):
        return ChannelPolicy.from_env(env, "pager", default_level=default).min_level

    assert level({}) is NotificationLevel.ERROR
    assert level({"AFS_MIN_LEVEL": "warning"}) is NotificationLevel.ERROR  # a global setting never lowers it
    assert level({"AFS_MIN_LEVEL": "critical"}) is NotificationLevel.CRITICAL
    assert level({"AFS_PAGER_MIN_LEVEL": "info"}) is NotificationLevel.INFO  # the channel's own setting wins
    assert level({"AFS_MIN_LEVEL": "warning"}, default=None) is NotificationLevel.WARNING


def test_events_a_channel_wants_below_its_level_still_reach_it(afs_plugins, tmp_path):
    pager = Paging()
    manager = _manager(afs_plugins, tmp_path / "afs.db")
    manager.register_channel("pager", pager)
    manager.notify_training_started("m", "r1")  # INFO: below ERROR, not wanted
    manager.notify_training_failed("m", "r1", RuntimeError("boom"))
    assert manager.flush(timeout=10)
    manager.notify_training_completed("m", "r1", 60.0)  # SUCCESS: below ERROR, but wanted
    assert manager.flush(timeout=10)
    manager.close(timeout=5)
    assert pager.sent == [("trigger", "r1"), ("resolve", "r1")]


def test_a_channel_with_nothing_to_send_records_filtered_with_its_reason_and_never_retries(afs_plugins, tmp_path):
    pager = Paging()
    manager = _manager(afs_plugins, tmp_path / "afs.db")
    manager.register_channel("pager", pager)
    result = manager.notify_training_completed("m", "never-failed", 60.0)
    assert manager.flush(timeout=10) and result.wait(5)
    manager.close(timeout=5)
    assert pager.sent == []
    assert result.outcomes["pager"].status is DeliveryStatus.FILTERED
    (row,) = Store(tmp_path / "afs.db").history(limit=1)[0].deliveries
    assert row.status is DeliveryStatus.FILTERED and row.attempts <= 1
    assert row.last_error == "no open page for run never-failed"
    # The same when sent now, without the engine.
    outcome = send_now(Paging(), result.event)
    assert outcome.status is DeliveryStatus.FILTERED and outcome.error == "no open page for run never-failed"


MEMORY_CHILD = """
import sys
from afs_core import NotificationManager
from afs_core.delivery.store import Store
sys.path.insert(0, sys.argv[2])
from pager_channel import Paging
manager = NotificationManager(store=Store(sys.argv[1]), settings={})
pager = Paging()
manager.register_channel("pager", pager)
getattr(manager, sys.argv[3])("m", "r7", *([RuntimeError("x")] if sys.argv[3].endswith("failed") else [60.0]))
manager.flush(timeout=10)
manager.close(timeout=5)
print(pager.sent)
"""


def test_what_a_channel_remembers_is_known_to_the_next_process_on_the_store(tmp_path):
    """The page one process opened is ended by another: the memory is in the store."""
    import inspect

    source = "from afs_core import Channel, EventType, NotificationLevel, NothingToSend\n" + inspect.getsource(Paging)
    (tmp_path / "pager_channel.py").write_text(source)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(MEMORY_CHILD))

    def run(method):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "afs.db"), str(tmp_path), method],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("notify_training_failed") == "[('trigger', 'r7')]"
    assert run("notify_training_completed") == "[('resolve', 'r7')]"
    assert run("notify_training_completed") == "[]"  # ended once: nothing left to end


def test_stored_memory_keeps_this_processs_copy_when_the_store_fails(tmp_path):
    store = Store(tmp_path / "afs.db")
    troubles = []
    memory = StoredMemory(store, "pager", troubles.append)
    memory.set("k", "v")
    assert StoredMemory(Store(tmp_path / "afs.db"), "pager", troubles.append).get("k") == "v"
    assert StoredMemory(Store(tmp_path / "afs.db"), "other", troubles.append).get("k") is None  # per channel

    def broken(*args):
        raise sqlite3.OperationalError("disk I/O error")

    store.get_state = store.set_state = store.forget_state = broken
    memory.set("k2", "v2")
    assert memory.get("k2") == "v2" and memory.get("k") == "v"
    assert troubles and all(isinstance(t, sqlite3.OperationalError) for t in troubles)
    memory.set("k", None)
    assert memory.get("k") is None


class Recipients(Channel):
    """Sends to each recipient; scripted failures per recipient."""

    def __init__(self, failures):
        self.failures = {target: list(errors) for target, errors in failures.items()}
        self.sent = []

    def deliver(self, message):
        def send(target):
            errors = self.failures.get(target)
            if errors:
                raise errors.pop(0)
            self.sent.append(target)
            return f"ok {target}"

        return deliver_to_each(self, message["id"], ["a", "b", "c"], send, label=str.upper)

    def format(self, event):
        return {"id": event.event_id}


def test_one_recipients_transient_failure_is_retried_for_it_alone():
    channel = Recipients({"b": [TransientDeliveryError("busy", retry_after=3)]})
    with pytest.raises(TransientDeliveryError) as caught:
        channel.deliver({"id": "e1"})
    assert str(caught.value) == "B: busy (sent to 2 of 3)" and caught.value.retry_after == 3
    assert channel.deliver({"id": "e1"}) == {"b": "ok b"}
    assert channel.sent == ["a", "c", "b"]
    assert channel.memory.get("fanout:e1") is None  # all done: nothing kept


def test_a_recipient_that_refuses_for_good_is_named_and_not_asked_again():
    channel = Recipients({"a": [PermanentDeliveryError("invalid number")],
                          "c": [TransientDeliveryError("busy")]})
    with pytest.raises(TransientDeliveryError, match="A: invalid number; C: busy"):
        channel.deliver({"id": "e2"})
    with pytest.raises(PermanentDeliveryError) as caught:
        channel.deliver({"id": "e2"})
    assert str(caught.value) == "A: invalid number (sent to 2 of 3)"
    assert channel.sent == ["b", "c"]


def test_a_single_recipient_fails_as_it_would_alone():
    class One(Channel):
        def deliver(self, message):
            def refuse(target):
                raise PermanentDeliveryError("HTTP 400: bad")

            return deliver_to_each(self, "e", ["only"], refuse)

    with pytest.raises(PermanentDeliveryError, match=r"^HTTP 400: bad$"):
        One().deliver({})


def test_recipients_done_before_a_crash_are_not_sent_again_by_the_next_process(tmp_path):
    first = Recipients({"c": [RuntimeError("killed mid-send")]})
    first.memory = StoredMemory(Store(tmp_path / "afs.db"), "sms", lambda exc: None)
    with pytest.raises(RuntimeError):
        first.deliver({"id": "e3"})
    again = Recipients({})
    again.memory = StoredMemory(Store(tmp_path / "afs.db"), "sms", lambda exc: None)
    assert again.deliver({"id": "e3"}) == {"c": "ok c"}
    assert first.sent == ["a", "b"] and again.sent == ["c"]


def test_local_memory_forgets_with_none():
    memory = LocalMemory()
    memory.set("a", "1")
    memory.set("a", None)
    memory.set("b", None)
    assert memory.get("a") is None and memory.get("b") is None


class Form(WebhookChannel):
    name = "form"
    hosts = ("api.form.example",)

    def deliver(self, message):
        answer = self.post(self.webhook_url, body=b"To=%2B15551234567&Body=hi+there",
                           headers={"Content-Type": "application/x-www-form-urlencoded", "X-Extra": "1"})
        return self.read_answer(answer)


def test_a_webhook_channel_posts_any_body_with_its_headers(webhook_server, make_event):
    channel = Form(f"{webhook_server.url}/msg")
    try:
        assert send_now(channel, make_event()).delivered
    finally:
        channel.close()
    request = webhook_server.received[0]
    assert request.body == b"To=%2B15551234567&Body=hi+there"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["X-Extra"] == "1" and request.headers["User-Agent"] == "afs-notifications"


def test_json_posts_take_extra_headers_too(webhook_server, make_event):
    class Signed(Form):
        def deliver(self, message):
            return self.read_answer(self.post(self.webhook_url, {"n": 1}, headers={"X-Sig": "v1,abc"}))

    channel = Signed(f"{webhook_server.url}/msg")
    try:
        assert send_now(channel, make_event()).delivered
    finally:
        channel.close()
    request = webhook_server.received[0]
    assert json.loads(request.body) == {"n": 1} and request.headers["X-Sig"] == "v1,abc"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"


def test_what_a_recipient_was_told_is_kept_and_raised_with_the_channels_secrets_masked():
    class Echoing(Recipients):
        def secrets(self):
            return ["tok-SECRET-123"]

    channel = Echoing({"a": [PermanentDeliveryError("bad request, token was tok-SECRET-123")],
                       "b": [TransientDeliveryError("busy tok-SECRET-123")]})
    with pytest.raises(TransientDeliveryError) as caught:
        channel.deliver({"id": "e4"})
    assert "tok-SECRET-123" not in str(caught.value) and "token was ***" in str(caught.value)
    assert "tok-SECRET-123" not in channel.memory.get("fanout:e4")


FANOUT_CHANNEL = """
from afs_core import WebhookChannel
from afs_core.channels import deliver_to_each


class ToEach(WebhookChannel):
    \"\"\"Posts each event to three paths of one server, each once.\"\"\"

    name = "to-each"
    hosts = ("relay.example",)
    timeout = 60.0

    def format(self, event):
        return {"id": event.event_id, "title": event.title}

    def deliver(self, message):
        def send(path):
            return self.read_answer(self.post(f"{self.webhook_url}/{path}", message))

        return deliver_to_each(self, message["id"], ["a", "b", "c"], send)
"""

FANOUT_CHILD = """
import sys
sys.path.insert(0, sys.argv[3])
from afs_core import NotificationManager
from afs_core.delivery.store import Store
from to_each import ToEach
manager = NotificationManager(store=Store(sys.argv[1]), settings={})
channel = ToEach(sys.argv[2], timeout=60)
manager.register_channel("to-each", channel)
manager.notify_training_failed("m", "r-kill", RuntimeError("boom"))
manager.flush(timeout=60)  # killed while the third recipient is being sent to
"""


def test_recipients_that_have_an_event_are_not_sent_it_again_after_a_kill(tmp_path, webhook_server):
    """A real process is killed with SIGKILL mid fan-out; the next process on the store
    sends only to the recipient left, and the outbox is empty afterwards."""
    import os
    import signal
    import time

    from afs_core.testing import Scripted

    (tmp_path / "to_each.py").write_text(textwrap.dedent(FANOUT_CHANNEL))
    (tmp_path / "child.py").write_text(textwrap.dedent(FANOUT_CHILD))
    webhook_server.respond(Scripted(), Scripted(), Scripted(delay=30))  # the third stalls: the kill lands there
    store = tmp_path / "afs.db"
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(store), webhook_server.url,
                              str(tmp_path)])
    deadline = time.monotonic() + 30
    while len(webhook_server.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.path for r in webhook_server.received] == ["/a", "/b", "/c"]
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL

    sys.path.insert(0, str(tmp_path))
    try:
        from to_each import ToEach
    finally:
        sys.path.remove(str(tmp_path))
    manager = NotificationManager(store=Store(store), settings={})
    manager.register_channel("to-each", ToEach(webhook_server.url, timeout=10))
    deadline = time.monotonic() + 60  # the dead process's lease must run out first
    while len(webhook_server.received) < 4 and time.monotonic() < deadline:
        manager.flush(timeout=1)
    manager.close(timeout=5)
    # /c was in flight when the process died: it is the one recipient sent to again.
    assert sorted(r.path for r in webhook_server.received) == ["/a", "/b", "/c", "/c"]
    shown = subprocess.run([sys.executable, "-m", "afs_core", "outbox"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "AFS_HOME": str(tmp_path), "AFS_LOAD_PLUGINS": ""})
    assert shown.stdout.strip() == "the outbox is empty", shown.stdout + shown.stderr
