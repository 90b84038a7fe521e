"""A burst to one URL goes out back to back on the kept-alive connection (HTTP/1.1
pipelining), against a receiver on 127.0.0.1 that reads the bytes as they come: what
it got, on which connection, and how many requests it held unanswered at once."""

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from standardwebhooks import Webhook

from afs_core import EventType, NotificationManager
from afs_core.channels import HOLDS
from afs_core.delivery.direct import send_many_now
from afs_core.delivery.policy import ChannelPolicy
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.results import DeliveryStatus
from afs_webhook import WebhookNotifier

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"


class Receiver:
    """An HTTP/1.1 receiver written on sockets, so that a test decides what each
    request meets. ``answer(connection, index)`` (``index``: the request's place on
    its connection, from 0) returns the bytes to answer, ``"cut"`` to close the
    connection without answering, or a number of seconds to wait before answering OK.
    Answers are written once no more requests arrive within ``GATHER`` seconds, or
    ``hold`` are waiting: so ``groups`` shows how many requests came before their
    answers were asked for (one at a time: every group is 1)."""

    GATHER = 0.1

    def __init__(self, answer=None, hold=64):
        self.answer = answer or (lambda connection, index: OK)
        self.hold = hold
        self.received = []  # (connection, index, headers, body)
        self.groups = []  # (connection, how many requests answered together)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hooks/afs"

    def stop(self):
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self):
        number = 0
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(sock, number), daemon=True)
            self._threads.append(thread)
            thread.start()
            number += 1

    def _serve(self, sock, connection):
        buffer = b""
        index = 0
        waiting = []
        try:
            for _ in range(10_000):  # bounded: far more turns than any test's requests
                request, buffer = self._parse(buffer)
                if request is not None:
                    self.received.append((connection, index, *request))
                    waiting.append(index)
                    index += 1
                    if len(waiting) < self.hold:
                        continue
                else:
                    # The first request of a group is waited for (bounded); the rest are gathered.
                    ready, _, _ = select.select([sock], [], [], self.GATHER if waiting else 5.0)
                    data = sock.recv(65536) if ready else b""
                    if data:
                        buffer += data
                        continue
                if not waiting or self._stopping.is_set():
                    return  # closed by the client, or idle too long
                self.groups.append((connection, len(waiting)))
                for place in waiting:
                    reply = self.answer(connection, place)
                    if reply == "cut":
                        return
                    if isinstance(reply, (int, float)):
                        self._stopping.wait(reply)
                        reply = OK
                    sock.sendall(reply)
                    if b"Connection: close" in reply:
                        return
                waiting = []
        except OSError:
            pass
        finally:
            sock.close()

    @staticmethod
    def _parse(buffer):
        """The first whole request in ``buffer`` as (headers, body), and what follows it."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None, buffer
        headers = {}
        for field in buffer[:end].split(b"\r\n")[1:]:
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(buffer) < end + 4 + length:
            return None, buffer
        return (headers, buffer[end + 4:end + 4 + length]), buffer[end + 4 + length:]


@pytest.fixture
def receiver():
    made = []

    def make(answer=None, hold=64):
        made.append(Receiver(answer, hold))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def _events(make_event, count):
    return [make_event(event_type=EventType.CHECKPOINT_SAVED, title=f"step {n}", message=f"saved {n}")
            for n in range(count)]


def _ids(receiver):
    return [headers["webhook-id"] for _, _, headers, _ in receiver.received]


def _sent_now(server, events, afs_plugins, kit, *, timeout=5, clock=None):
    """``events`` sent now, as one batch (``send_many_now``): their outcomes."""
    notifier = WebhookNotifier(server.url, kit.SECRET, timeout=timeout)
    if clock is not None:
        notifier.clock = clock
    try:
        return send_many_now(notifier, events, plugins=afs_plugins)
    finally:
        notifier.close()


def test_a_burst_goes_out_back_to_back_on_one_connection_each_request_signed_in_order(
        receiver, make_event, afs_plugins, kit):
    server = receiver()
    events = _events(make_event, 33)
    outcomes = _sent_now(server, events, afs_plugins, kit)
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED] * 33
    assert _ids(server) == [event.event_id for event in events]
    # One connection: its first request alone (it proves the connection stays open),
    # then the rest sixteen at a time before any of their answers was read.
    assert server.groups == [(0, 1), (0, 16), (0, 16)]
    verifier = Webhook(kit.SECRET)
    for (_, _, headers, body), event in zip(server.received, events, strict=True):
        assert verifier.verify(body, headers)["id"] == event.event_id


def test_an_answer_that_closes_the_connection_leaves_the_rest_one_at_a_time(receiver, make_event, afs_plugins, kit):
    # The first connection closes after its third answer, as a server at its limit of
    # requests per connection does; every later one answers once and closes.
    server = receiver(lambda connection, index: CLOSE if connection > 0 or index == 2 else OK)
    events = _events(make_event, 8)
    outcomes = _sent_now(server, events, afs_plugins, kit)
    assert [o.status for o in outcomes] == [DeliveryStatus.DELIVERED] * 8
    answered = [headers["webhook-id"] for connection, index, headers, _ in server.received
                if connection > 0 or index <= 2]
    assert answered == [event.event_id for event in events]  # each once, in order
    later = [(connection, index) for connection, index, *_ in server.received if connection > 0]
    assert later == [(n, 0) for n in range(1, 6)]  # never pipelined to a receiver that closes


def test_a_refusal_inside_a_pipeline_is_that_event_s_alone(receiver, make_event, afs_plugins, kit):
    server = receiver(lambda connection, index: FAIL if index == 4 else OK)
    events = _events(make_event, 10)
    outcomes = _sent_now(server, events, afs_plugins, kit)
    statuses = [o.status for o in outcomes]
    assert statuses == [DeliveryStatus.DELIVERED] * 4 + [DeliveryStatus.FAILED] + [DeliveryStatus.DELIVERED] * 5
    assert "HTTP 500" in outcomes[4].error and not outcomes[4].permanent
    assert _ids(server) == [event.event_id for event in events]  # none sent twice
    assert server.groups == [(0, 1), (0, 9)]


def test_a_connection_cut_inside_a_pipeline_fails_the_unanswered_event_and_sends_the_rest_alone(
        receiver, make_event, afs_plugins, kit):
    server = receiver(lambda connection, index: "cut" if connection == 0 and index == 3 else OK)
    events = _events(make_event, 7)
    outcomes = _sent_now(server, events, afs_plugins, kit)
    statuses = [o.status for o in outcomes]
    assert statuses == [DeliveryStatus.DELIVERED] * 3 + [DeliveryStatus.FAILED] + [DeliveryStatus.DELIVERED] * 3
    assert "connection" in outcomes[3].error and not outcomes[3].permanent  # the engine retries it
    # What the cut connection got but never answered is sent again, each on its own.
    assert [headers["webhook-id"] for connection, _, headers, _ in server.received if connection > 0] == \
        [event.event_id for event in events[4:]]
    assert all(size == 1 for connection, size in server.groups if connection > 0)


def test_an_answer_past_the_deadline_inside_a_pipeline(receiver, make_event, afs_plugins, kit):
    server = receiver(lambda connection, index: 3.0 if connection == 0 and index == 2 else OK)
    events = _events(make_event, 5)
    began = time.monotonic()
    outcomes = _sent_now(server, events, afs_plugins, kit, timeout=0.5)
    assert time.monotonic() - began < 2.5  # the deadline cut it, not the receiver's wait
    statuses = [o.status for o in outcomes]
    assert statuses == [DeliveryStatus.DELIVERED] * 2 + [DeliveryStatus.FAILED] + [DeliveryStatus.DELIVERED] * 2
    assert "deadline" in outcomes[2].error and not outcomes[2].permanent


def _through_the_engine(server, events, afs_plugins, tmp_path, kit, *, timeout, max_attempts=3, flush=30):
    """``events`` sent to ``server`` as a training run sends them: a manager with the
    engine and a store; whether its flush delivered all within ``flush`` seconds."""
    notifier = WebhookNotifier(server.url, kit.SECRET, timeout=timeout)
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"), settings={},
                                  retry=RetryPolicy(max_attempts=max_attempts, base=0.05, cap=0.1))
    manager.register_handler("webhook", notifier, policy=ChannelPolicy(throttle_window=0))  # every checkpoint
    try:
        for event in events:
            manager.send_event(event)
        return manager.flush(timeout=flush)
    finally:
        manager.close()


def test_the_engine_delivers_a_burst_through_pipelines_each_event_once_in_order(
        receiver, make_event, afs_plugins, tmp_path, kit):
    server = receiver()
    events = _events(make_event, 200)
    assert _through_the_engine(server, events, afs_plugins, tmp_path, kit, timeout=5)
    assert _ids(server) == [event.event_id for event in events]
    assert {connection for connection, *_ in server.received} == {0}
    assert max(size for _, size in server.groups) > 1  # pipelined, not one at a time
    assert Store(tmp_path / "afs.db").pending(["webhook"]).total == 0


SEND_THEN_LIVE_ON = """
import time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
print(getattr(getattr(manager._engine, "process", None), "pid", 0), flush=True)  # its courier, if one delivers
for i in range({count}):
    print(manager.notify_training_completed("m", f"run-{{i}}", 1.0).event.event_id, flush=True)
time.sleep(60)  # alive, its deliveries in hand, until the test kills it (within seconds)
"""


@pytest.mark.parametrize(("count", "answer_after", "timeout", "killed_after"), [
    (200, 0, "10", 40),  # answered a group at a time: killed with a pipeline sent, unanswered
    (30, 0.15, "0.6", 6),  # answered slowly: killed holding what its batches did not get to (NotSent)
], ids=["pipelines-in-flight", "batches-held-unsent"])
def test_a_run_killed_mid_burst_loses_nothing_and_repeats_little(
        receiver, tmp_path, kit, afs_cli, count, answer_after, timeout, killed_after):
    """Killed with requests sent and unanswered, or with deliveries its batches had not
    got to: the next process sends what the store does not show as delivered; an event
    goes twice only where its pipeline or its group of outcomes was cut."""
    delay = [answer_after]
    server = receiver(lambda connection, index: delay[0])  # seconds, then OK; a group once no more come
    env = {**os.environ, "AFS_HOME": str(tmp_path / "afs"), "WEBHOOK_URL": server.url, "WEBHOOK_SECRET": kit.SECRET,
           "WEBHOOK_TIMEOUT": timeout, "AFS_LOAD_PLUGINS": "webhook", "AFS_THROTTLE_SECONDS": "0"}
    sender = subprocess.Popen([sys.executable, "-c", SEND_THEN_LIVE_ON.format(count=count)], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        courier = int(sender.stdout.readline())
        accepted = [sender.stdout.readline().strip() for _ in range(count)]
        deadline = time.monotonic() + 30
        while len(server.received) < killed_after and time.monotonic() < deadline:
            time.sleep(0.002)
        if courier:  # the machine dies: the process sending the pipelines goes first, then the run
            os.kill(courier, signal.SIGKILL)
        sender.kill()
        sender.wait(timeout=10)
    finally:
        sender.stdout.close()
    assert killed_after <= len(server.received) < count  # killed mid-burst
    delay[0] = 0  # the next process finds a quick receiver
    flushed = subprocess.run([sys.executable, "-c", "from afs_core import NotificationManager\n"
                              "print(NotificationManager.from_env().flush(60))"],
                             env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert flushed.stdout.split() == ["True"], flushed.stderr
    sent = _ids(server)
    assert sorted(set(sent)) == sorted(accepted)
    assert len(sent) - len(set(sent)) <= 2 * WebhookNotifier.batch_size
    assert afs_cli("outbox", env=env).stdout.strip() == "the outbox is empty"


def test_a_429_stops_the_rest_of_a_burst_until_its_hold_is_kept(receiver, make_event, afs_plugins, kit):
    limited = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 4\r\n\r\nslow"
    server = receiver(lambda connection, index: limited)
    try:
        outcomes = _sent_now(server, _events(make_event, 6), afs_plugins, kit)
    finally:
        HOLDS.clear()
    assert len(server.received) == 1  # the rest were never sent into the 429
    assert all(o.status is DeliveryStatus.FAILED and not o.permanent and o.retry_after >= 29 for o in outcomes)


def test_a_request_sent_alone_after_a_trouble_is_signed_as_it_goes_not_with_its_pipeline(
        receiver, make_event, afs_plugins, kit):
    now = [1_800_000_000.0]

    def answer(connection, index):
        if connection == 0 and index == 2:
            now[0] += 100  # the cut comes 100 s on: what is sent after it is signed then
            return "cut"
        return OK

    server = receiver(answer)
    outcomes = _sent_now(server, _events(make_event, 6), afs_plugins, kit, clock=lambda: now[0])
    assert [o.delivered for o in outcomes] == [True, True, False, True, True, True]
    alone = [int(headers["webhook-timestamp"]) for connection, _, headers, _ in server.received if connection > 0]
    assert alone == [1_800_000_100] * 3


def test_a_batch_to_a_slow_receiver_stops_within_one_timeout_and_sends_nothing_it_cannot_wait_for(
        receiver, make_event, kit):
    from afs_core.errors import NotSent

    server = receiver(lambda connection, index: 0.25)  # each answer after a quarter of a second
    notifier = WebhookNotifier(server.url, kit.SECRET, timeout=1.0)
    events = _events(make_event, 8)
    began = time.monotonic()
    try:
        results = notifier.deliver_batch([notifier.format(event) for event in events])
    finally:
        notifier.close()
    assert time.monotonic() - began < 1.5  # the lease is made for one timeout a batch
    sent = [result for result in results if isinstance(result, str)]
    assert sent and sent == ["HTTP 200: ok"] * len(sent) and len(sent) < 8
    assert all(isinstance(result, NotSent) for result in results[len(sent):])
    assert _ids(server) == [event.event_id for event in events[:len(sent)]]  # what was not sent was not sent


def test_the_engine_sends_a_burst_to_a_slow_receiver_each_event_once(receiver, make_event, afs_plugins, tmp_path,
                                                                      kit, caplog):
    server = receiver(lambda connection, index: 0.1)
    events = _events(make_event, 10)
    assert _through_the_engine(server, events, afs_plugins, tmp_path, kit, timeout=0.6, max_attempts=2, flush=60)
    assert _ids(server) == [event.event_id for event in events]  # each once, in order, none given up
    assert "retrying" not in caplog.text and "failed" not in caplog.text


def test_one_answer_late_past_the_timeout_inside_a_pipeline_holds_back_nothing_after_it(
        receiver, make_event, afs_plugins, tmp_path, kit):
    """A receiver that is quick but once holds a pipelined request past the timeout (a
    pause, a slow write): the cut costs that send, and the rest goes on at once."""
    # The first request of the second batch: on a kept connection, it opens a pipeline.
    server = receiver(lambda connection, index: 3.0 if connection == 0 and index == 16 else OK)
    events = _events(make_event, 40)
    assert _through_the_engine(server, events, afs_plugins, tmp_path, kit, timeout=1.0, flush=20)
    assert set(_ids(server)) == {event.event_id for event in events}


def test_with_several_urls_an_event_is_a_batch_and_its_lease_a_timeout_per_url(receiver, afs_plugins, tmp_path, kit):
    first, second = receiver(), receiver()
    notifier = WebhookNotifier([first.url, second.url], kit.SECRET, timeout=30)
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"), settings={})
    manager.register_channel("webhook", notifier)
    try:
        manager.notify_training_started("m", "r")
        assert manager.flush(timeout=10)
        worker = manager._get_engine()._workers["webhook"]
        assert (worker.batch, worker.lease) == (1, 3 * 30.0 * 2)  # each event to each URL, a timeout each
    finally:
        manager.close()
    assert len(first.received) == len(second.received) == 1
    assert WebhookNotifier(first.url, kit.SECRET).batch_size == 16  # one URL: bursts as batches
