"""NtfyChannel against a real HTTP server on 127.0.0.1 playing ntfy: the exact requests,
its answers, through send_now, through the engine and through ``afs test ntfy``."""

import json
import logging
import time

import pytest

from afs_core import EventType, NotificationManager, send_now
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.testing import Scripted
from afs_ntfy import NtfyChannel

FAMILY = "👨‍👩‍👧"


def test_one_json_request_to_the_server_root_with_the_bearer_token(ntfy, server, creds, make_event):
    outcome = send_now(ntfy, make_event(EventType.TRAINING_FAILED, "Training failed: m", "boom",
                                        context={"run_url": "https://wandb.ai/t/r/1"}))
    assert outcome.delivered and outcome.receipt == "message hV9lXXdUA3Ex"
    [request] = server.received
    assert (request.method, request.path, request.query) == ("POST", "/", {})
    assert request.headers["Authorization"] == f"Bearer {creds.TOKEN}"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["User-Agent"] == "afs-ntfy"
    payload = request.json
    assert payload == {
        "topic": creds.TOPIC,
        "title": "Training failed: m",
        "message": payload["message"],
        "priority": 4,
        "tags": ["x"],
        "markdown": True,
        "click": "https://wandb.ai/t/r/1",
    }
    assert payload["message"].startswith("boom\n\n- **Model:** tiny-model\n- **Run:** run-1\n- **Run url:** https://wandb.ai/t/r/1")


def test_basic_login_is_sent_as_ntfy_reads_it(server, creds, afs_plugins, make_event):
    channel = NtfyChannel(creds.TOPIC, server.url, user=creds.USER, password=creds.PASSWORD)
    assert send_now(channel, make_event()).delivered
    assert server.received[0].headers["Authorization"] == creds.BASIC


def test_without_a_login_no_authorization_header_is_sent(server, creds, afs_plugins, make_event):
    assert send_now(NtfyChannel(creds.TOPIC, server.url), make_event()).delivered
    assert "Authorization" not in server.received[0].headers


def test_any_script_travels_as_utf8_json_not_escapes_or_headers(ntfy, server, make_event):
    title = f"🚀 训练完成 {FAMILY} اكتمل التدريب"
    send_now(ntfy, make_event(title=title, message="Модель é\u0301 האימון"))
    request = server.received[0]
    raw = request.body.decode("utf-8")
    assert title in raw and "Модель é\u0301 האימון" in raw and "\\u" not in raw
    assert not any(name.lower() in ("title", "x-title", "tags", "priority") for name in request.headers)
    assert request.json["title"] == title


def test_hostile_text_arrives_escaped(ntfy, server, make_event):
    send_now(ntfy, make_event(title="<b>@everyone</b>\r\nX-Injected: 1",
                              message="</pre> &amp; [click](https://evil.example) @everyone\x1b[31m\x00"))
    payload = server.received[0].json
    assert payload["title"] == "<b>@everyone</b>X-Injected: 1"  # a title is plain text: one line, no control
    assert payload["message"].startswith(r"\</pre\> \&amp; \[click\](https://evil.example) @everyone\[31m" + "\n\n")
    assert "X-Injected" not in server.received[0].headers


@pytest.mark.parametrize("unit", ["中", "🚀", FAMILY])
def test_the_message_arriving_is_never_over_4096_bytes(ntfy, server, make_event, unit):
    send_now(ntfy, make_event(message=unit * 3000))
    message = server.received[0].json["message"]
    assert len(message.encode("utf-8")) <= 4096 and (unit + "…") in message


def test_a_plugins_plain_text_or_oversized_message_is_still_fitted(ntfy, server, afs_plugins, make_event):
    from afs_core import hookimpl

    class Plain:
        @hookimpl
        def afs_format_event(self, event, channel):
            return "é" * 5000 if event.title == "plain" else {"message": "x", "topic": "elsewhere", "priority": 12}

    afs_plugins.register(Plain(), name="plain")
    assert send_now(ntfy, make_event(title="plain")).delivered and send_now(ntfy, make_event()).delivered
    first, second = (r.json for r in server.received)
    assert len(first["message"].encode()) <= 4096 and first["topic"] == ntfy.topic.reveal()
    assert second == {"message": "x", "topic": ntfy.topic.reveal(), "priority": 5}  # always the configured topic


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (401, '{"code":40101,"http":401,"error":"unauthorized"}', "HTTP 401: unauthorized (code 40101): NTFY_TOKEN was refused"),
        (403, '{"code":40301,"http":403,"error":"forbidden"}', "HTTP 403: forbidden (code 40301): NTFY_TOKEN was refused"),
        (400, '{"code":40010,"http":400,"error":"invalid request: topic invalid"}', "HTTP 400: invalid request: topic invalid"),
        (413, "request entity too large", "HTTP 413: request entity too large"),
        (404, '{"code":40401,"http":404,"error":"page not found"}', "HTTP 404: page not found (code 40401): is NTFY_URL the ntfy server's address?"),
    ],
)
def test_permanent_answers_are_asked_once_and_say_why(ntfy, server, make_event, no_secret, status, body, says):
    server.respond(status=status, body=body)
    outcome = send_now(ntfy, make_event())
    assert outcome.permanent and outcome.error.startswith(says)
    assert len(server.received) == 1
    no_secret(outcome.error)


def test_a_refusal_says_which_login_was_wrong(server, creds, afs_plugins, make_event):
    server.default = Scripted(status=403, body='{"code":40301,"http":403,"error":"forbidden"}')
    basic = send_now(NtfyChannel(creds.TOPIC, server.url, user=creds.USER, password=creds.PASSWORD), make_event())
    anonymous = send_now(NtfyChannel(creds.TOPIC, server.url), make_event())
    assert "NTFY_USER 'alice' was refused: the password is wrong, or the user may not publish" in basic.error
    assert "this topic needs a login: set NTFY_TOKEN (or NTFY_USER and NTFY_PASSWORD)" in anonymous.error


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 408])
def test_server_errors_are_transient(ntfy, server, make_event, status):
    server.respond(status=status, body='{"code":50001,"http":500,"error":"internal server error"}')
    outcome = send_now(ntfy, make_event())
    assert not outcome.delivered and not outcome.permanent and outcome.error.startswith(f"HTTP {status}")


def test_429_is_transient_with_the_servers_retry_after_and_holds_the_next_send(ntfy, server, make_event):
    server.respond(status=429, body='{"code":42901,"http":429,"error":"limit reached: too many requests"}',
                   headers={"Retry-After": "0.4"})
    outcome = send_now(ntfy, make_event())
    assert not outcome.permanent and outcome.retry_after == 0.4 and "429" in outcome.error
    assert send_now(ntfy, make_event()).delivered
    first, second = server.received
    assert second.at - first.at >= 0.4


def test_429_without_retry_after_is_left_to_the_engines_backoff(ntfy, server, make_event):
    server.respond(status=429, body='{"code":42901,"http":429,"error":"limit reached: too many requests"}')
    outcome = send_now(ntfy, make_event())
    assert not outcome.permanent and outcome.retry_after is None


def test_a_long_wait_is_reported_not_slept(ntfy, server, make_event):
    server.respond(status=429, body="{}", headers={"Retry-After": "120"})
    send_now(ntfy, make_event())
    started = time.monotonic()
    outcome = send_now(ntfy, make_event())
    assert time.monotonic() - started < 1 and 119 <= outcome.retry_after <= 120
    assert len(server.received) == 1


def test_a_stalled_server_cannot_hold_a_send_past_the_deadline(server, creds, afs_plugins, make_event):
    channel = NtfyChannel(creds.TOPIC, server.url, timeout=1)
    server.respond(Scripted(delay=10))
    started = time.monotonic()
    outcome = send_now(channel, make_event())
    assert "deadline" in outcome.error and time.monotonic() - started < 2.5


# -- through the engine -----------------------------------------------------------------


def _manager(afs_plugins, tmp_path, channel):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"),
                                  retry=RetryPolicy(max_attempts=4, base=0.05, cap=0.1))
    manager.register_channel("ntfy", channel)
    return manager


def test_the_engine_delivers_in_the_background(ntfy, server, afs_plugins, tmp_path, creds):
    manager = _manager(afs_plugins, tmp_path, ntfy)
    try:
        manager.notify_training_completed("m", "r-1", 3600.0, final_loss=0.25)
        assert manager.flush(timeout=10) is True
    finally:
        manager.close(timeout=5)
    [request] = server.received
    assert request.json["topic"] == creds.TOPIC and request.json["tags"] == ["white_check_mark"]
    assert request.json["title"] == "Training completed: m"


def test_the_engine_retries_a_429_after_the_servers_wait(ntfy, server, afs_plugins, tmp_path):
    server.respond(status=429, body="{}", headers={"Retry-After": "0.3"})
    server.respond(status=503, body="{}")
    manager = _manager(afs_plugins, tmp_path, ntfy)
    try:
        manager.notify_training_failed("m", "r-1", "boom")
        assert manager.flush(timeout=10) is True
    finally:
        manager.close(timeout=5)
    first, second, third = server.received
    assert second.at - first.at >= 0.3 and first.json == third.json


def test_the_engine_asks_once_when_refused_and_keeps_no_secret(ntfy, server, afs_plugins, tmp_path, caplog,
                                                                no_secret):
    server.default = Scripted(status=403, body='{"code":40301,"http":403,"error":"forbidden"}')
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store, retry=RetryPolicy(base=0.01, cap=0.01))
    manager.register_channel("ntfy", ntfy)
    with caplog.at_level(logging.DEBUG):
        try:
            manager.notify_training_failed("m", "r-1", "boom")
            manager.flush(timeout=5)
        finally:
            manager.close(timeout=5)
    assert len(server.received) == 1
    [dead] = store.outbox()
    assert "NTFY_TOKEN was refused" in dead.last_error
    history = [json.dumps(entry._asdict(), default=str) for entry in store.history()]
    files = [path.read_bytes().decode("utf-8", "replace") for path in tmp_path.glob("afs.db*")]
    no_secret(caplog.text, dead.last_error, *history, *files)
    assert "POST / HTTP/1.1" in caplog.text  # the request line was logged: the check saw it


# -- through the command line -----------------------------------------------------------


def _env(server, creds, **more):
    return {"NTFY_URL": server.url, "NTFY_TOPIC": creds.TOPIC, "NTFY_TOKEN": creds.TOKEN, **more}


def test_afs_test_ntfy_sends_a_quiet_test_message(server, creds, afs_cli, no_secret):
    done = afs_cli("test", "ntfy", env=_env(server, creds))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"ntfy: delivered to ntfy {server.url} topic *** (token); "
                                   "the service answered: message hV9lXXdUA3Ex")
    payload = server.received[0].json
    assert payload["title"] == "AFS test notification" and payload["priority"] == 2
    assert payload["message"].startswith("If you can read this, the ntfy channel works. Sent by \\`afs test\\` from ")
    assert server.received[0].headers["Authorization"] == f"Bearer {creds.TOKEN}"
    no_secret(done.stdout, done.stderr)


def test_afs_test_ntfy_says_why_it_was_refused_and_exits_1(server, creds, afs_cli, no_secret):
    server.default = Scripted(status=401, body='{"code":40101,"http":401,"error":"unauthorized"}')
    done = afs_cli("test", "ntfy", env=_env(server, creds))
    assert done.returncode == 1
    assert "ntfy: failed (permanent): HTTP 401: unauthorized (code 40101): NTFY_TOKEN was refused" in done.stdout
    assert len(server.received) == 1
    no_secret(done.stdout, done.stderr)


def test_afs_status_shows_ntfy_without_its_secrets(server, creds, afs_cli, no_secret):
    configured = json.loads(afs_cli("status", "--json", env=_env(server, creds)).stdout)
    row = next(r for r in configured["channels"] if r["channel"] == "ntfy")
    assert (row["state"], row["detail"]) == ("configured", f"ntfy {server.url} topic *** (token)")
    wrong = afs_cli("status", "--json", env=_env(server, creds, NTFY_TOPIC=f"{creds.TOPIC}!"))
    row = next(r for r in json.loads(wrong.stdout)["channels"] if r["channel"] == "ntfy")
    assert row["state"] == "misconfigured" and "NTFY_TOPIC must be 1 to 64" in row["detail"]
    no_secret(configured, wrong.stdout, wrong.stderr)
