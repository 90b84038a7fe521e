"""TelegramChannel against a real HTTP server on 127.0.0.1 playing the Bot API: the exact
requests, its answers, several chats, a migrated group, through send_now, through the
engine and through ``afs test telegram``."""

import json
import logging
import time

import pytest

from afs_core import NotificationManager, send_now
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store
from afs_core.testing import Scripted
from afs_telegram import TelegramChannel

FAMILY = "👨‍👩‍👧"


def chats_of(server):
    return [r.json["chat_id"] for r in server.received]


def test_one_send_message_request_with_the_token_in_the_path(telegram, server, creds, make_event):
    outcome = send_now(telegram, make_event(title="Training completed: m", message="done", model_name="m",
                                            run_id="r", metrics={"loss": 0.25}))
    assert outcome.delivered and outcome.receipt == {"42": "message 42"}
    [request] = server.received
    assert (request.method, request.path, request.query) == ("POST", creds.PATH, {})
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["User-Agent"] == "afs-telegram"
    assert "Authorization" not in request.headers
    assert request.json == {
        "chat_id": 42,
        "text": "<b>✅ Training completed: m</b>\ndone\n\n<pre>Model  m\nRun    r\nloss   0.25</pre>\n"
                f"<i>{request.json['text'].rsplit('<i>', 1)[1]}",
        "parse_mode": "HTML",
        "disable_notification": True,
        "link_preview_options": {"is_disabled": True},
    }


def test_warnings_and_worse_ring_info_is_silent(telegram, server, make_event):
    send_now(telegram, make_event(level="info"))
    send_now(telegram, make_event(level="warning"))
    send_now(telegram, make_event(level="critical"))
    assert [r.json["disable_notification"] for r in server.received] == [True, False, False]


def test_any_script_arrives_as_utf8(telegram, server, make_event):
    title = f"🚀 训练完成 {FAMILY} اكتمل التدريب"
    send_now(telegram, make_event(title=title, message="Модель é\u0301 האימון"))
    raw = server.received[0].body.decode("utf-8")
    assert title in raw and "Модель é\u0301 האימון" in raw and "\\u" not in raw


def test_hostile_text_arrives_escaped(telegram, server, make_event, markup):
    send_now(telegram, make_event(title="<b>x</b>", message="</pre> &amp; @everyone\x1b[2J"))
    sent = server.received[0].json["text"]
    assert sent.startswith("<b>✅ &lt;b&gt;x&lt;/b&gt;</b>\n&lt;/pre&gt; &amp;amp; @\u2060everyone[2J\n")
    markup(sent)


@pytest.mark.parametrize("unit", ["中", "🚀", FAMILY, "&"])
def test_the_text_arriving_never_shows_over_4096(telegram, server, make_event, markup, unit):
    send_now(telegram, make_event(message=unit * 5000))
    _, shown = markup(server.received[0].json["text"])
    assert len(shown.encode("utf-16-le")) // 2 <= 4096 and (unit + "…") in shown


def test_a_plugins_own_message_is_fitted_and_keeps_its_chats(telegram, server, afs_plugins, make_event):
    from afs_core import hookimpl

    class Own:
        @hookimpl
        def afs_format_event(self, event, channel):
            return "plain <b>" + "é" * 5000 if event.title == "plain" else {"text": "<i>hi</i>", "parse_mode": "HTML"}

    afs_plugins.register(Own(), name="own")
    assert send_now(telegram, make_event(title="plain")).delivered and send_now(telegram, make_event()).delivered
    first, second = (r.json for r in server.received)
    assert first["text"].startswith("plain <b>éé") and len(first["text"]) == 4096 and "parse_mode" not in first
    assert second == {"chat_id": 42, "text": "<i>hi</i>", "parse_mode": "HTML", "link_preview_options": {"is_disabled": True}}


# -- several chats ----------------------------------------------------------------------


def test_each_chat_gets_the_event_once(server, afs_plugins, creds, make_event):
    channel = TelegramChannel(creds.TOKEN, "-1001234567890,@afs_runs,42", api_url=server.url)
    outcome = send_now(channel, make_event())
    assert outcome.delivered and chats_of(server) == [-1001234567890, "@afs_runs", 42]
    assert outcome.receipt == {"-1001234567890": "message 42", "@afs_runs": "message 42", "42": "message 42"}
    assert len({r.json["text"] for r in server.received}) == 1


def test_a_chat_that_refuses_does_not_stop_the_others(server, afs_plugins, creds, make_event, bot_answer):
    channel = TelegramChannel(creds.TOKEN, "1,2,3", api_url=server.url)
    server.respond(Scripted(status=200, body=server.default.body), bot_answer(400, "Bad Request: chat not found"))
    outcome = send_now(channel, make_event())
    assert chats_of(server) == [1, 2, 3]
    assert outcome.permanent and outcome.error.startswith("2: HTTP 400: Bad Request: chat not found: check TELEGRAM_CHAT_ID")
    assert outcome.error.endswith("(sent to 2 of 3)")


def test_a_retry_goes_only_to_the_chats_left(server, afs_plugins, creds, make_event, bot_answer):
    channel = TelegramChannel(creds.TOKEN, "1,2,3", api_url=server.url)
    server.respond(Scripted(status=200, body=server.default.body),
                   bot_answer(429, "Too Many Requests: retry after 0.3", retry_after=0.3))
    event = make_event()
    first = send_now(channel, event)
    assert not first.permanent and first.retry_after == 0.3 and "(sent to 2 of 3)" in first.error
    assert send_now(channel, event).delivered
    assert chats_of(server) == [1, 2, 3, 2]
    assert server.received[3].at - server.received[1].at >= 0.3


def test_a_429_holds_only_its_own_chat(server, afs_plugins, creds, make_event, bot_answer):
    channel = TelegramChannel(creds.TOKEN, "1,2", api_url=server.url, timeout=2)
    server.respond(bot_answer(429, "Too Many Requests: retry after 30", retry_after=30))
    started = time.monotonic()
    outcome = send_now(channel, make_event())
    assert time.monotonic() - started < 1 and outcome.retry_after == 30 and "1: HTTP 429" in outcome.error
    assert chats_of(server) == [1, 2]  # chat 2 did not wait for chat 1
    later = send_now(channel, make_event())  # chat 1 still held: reported, not sent, not slept
    assert not later.delivered and 29 <= later.retry_after <= 30 and chats_of(server) == [1, 2, 2]


def test_429_uses_the_bodys_retry_after_not_the_header(telegram, server, make_event, bot_answer):
    body = json.loads(bot_answer(429, "Too Many Requests: retry after 1", retry_after=1).body)
    server.respond(status=429, body=json.dumps(body), headers={"Retry-After": "9"})
    outcome = send_now(telegram, make_event())
    assert outcome.retry_after == 1 and not outcome.permanent


# -- permanent answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "description", "says"),
    [
        (401, "Unauthorized", "HTTP 401: Unauthorized: TELEGRAM_BOT_TOKEN is wrong or was revoked"),
        (400, "Bad Request: chat not found", "HTTP 400: Bad Request: chat not found: check TELEGRAM_CHAT_ID"),
        (403, "Forbidden: bot was blocked by the user", "HTTP 403: Forbidden: bot was blocked by the user: the user blocked the bot"),
        (403, "Forbidden: bot was kicked from the group chat", "add the bot back to the group"),
        (400, "Bad Request: can't parse entities: unsupported start tag", "HTTP 400: Bad Request: can't parse entities"),
        (404, "Not Found", "HTTP 404: Not Found: check TELEGRAM_API_URL and TELEGRAM_BOT_TOKEN"),
    ],
)
def test_permanent_answers_are_asked_once_and_say_why(telegram, server, make_event, bot_answer, no_secret, status,
                                                      description, says):
    server.respond(bot_answer(status, description))
    outcome = send_now(telegram, make_event())
    assert outcome.permanent and says in outcome.error
    assert len(server.received) == 1
    no_secret(outcome.error)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(telegram, server, make_event, bot_answer, status):
    server.respond(bot_answer(status, "Internal Server Error"))
    outcome = send_now(telegram, make_event())
    assert not outcome.delivered and not outcome.permanent and outcome.error.startswith(f"HTTP {status}")


# -- a group that became a supergroup ---------------------------------------------------


def test_a_migrated_group_is_followed_once_and_remembered(server, afs_plugins, creds, make_event, bot_answer, caplog):
    channel = TelegramChannel(creds.TOKEN, "-123,42", api_url=server.url)
    server.respond(bot_answer(400, "Bad Request: group chat was upgraded to a supergroup chat",
                              migrate_to_chat_id=-1009876543210))
    with caplog.at_level(logging.WARNING, logger="afs.telegram"):
        assert send_now(channel, make_event()).delivered
    assert chats_of(server) == [-123, -1009876543210, 42]
    assert server.received[0].json["text"] == server.received[1].json["text"]
    [warning] = [r for r in caplog.records if r.name == "afs.telegram"]
    assert warning.levelno == logging.WARNING
    assert "Set TELEGRAM_CHAT_ID to -1009876543210 instead of -123" in warning.getMessage()
    assert send_now(channel, make_event()).delivered
    assert chats_of(server)[3:] == [-1009876543210, 42]  # straight to the new id
    assert channel.describe().endswith("to -123 (now -1009876543210), 42")


def test_a_second_migration_is_an_error_not_a_loop(telegram, server, make_event, bot_answer):
    server.default = bot_answer(400, "Bad Request: group chat was upgraded to a supergroup chat",
                                migrate_to_chat_id=-1001)
    outcome = send_now(telegram, make_event())
    assert outcome.permanent and "upgraded to a supergroup" in outcome.error and len(server.received) == 2


# -- the token stays secret --------------------------------------------------------------


def test_the_token_is_in_no_log_line_error_or_answer(telegram, server, make_event, bot_answer, caplog, no_secret):
    server.respond(bot_answer(401, f"Unauthorized: token {telegram.token.reveal()} is wrong"))
    with caplog.at_level(logging.DEBUG):
        outcome = send_now(telegram, make_event())
    assert "sendMessage" in caplog.text and "POST /***/sendMessage" in caplog.text  # the request line, masked
    no_secret(caplog.text, outcome.error, repr(telegram), telegram.describe())


def test_a_failed_connection_names_no_token(server, afs_plugins, creds, make_event, caplog, no_secret):
    channel = TelegramChannel(creds.TOKEN, "42", api_url=server.url, timeout=1)
    server.stop()
    with caplog.at_level(logging.DEBUG):
        outcome = send_now(channel, make_event())
    assert not outcome.delivered and not outcome.permanent and "connect" in outcome.error
    no_secret(caplog.text, outcome.error)


# -- through the engine -----------------------------------------------------------------


def _manager(afs_plugins, tmp_path, channel, **retry):
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"),
                                  retry=RetryPolicy(**{"max_attempts": 4, "base": 0.05, "cap": 0.1, **retry}))
    manager.register_channel("telegram", channel)
    return manager


def test_the_engine_sends_to_every_chat_and_retries_only_the_one_that_failed(server, afs_plugins, creds, tmp_path,
                                                                             bot_answer):
    channel = TelegramChannel(creds.TOKEN, "1,2,3", api_url=server.url)
    server.respond(Scripted(status=200, body=server.default.body),
                   bot_answer(429, "Too Many Requests: retry after 0.3", retry_after=0.3))
    manager = _manager(afs_plugins, tmp_path, channel)
    try:
        manager.notify_training_failed("m", "r-1", "boom")
        assert manager.flush(timeout=10) is True
    finally:
        manager.close(timeout=5)
    assert chats_of(server) == [1, 2, 3, 2]
    assert server.received[3].at - server.received[1].at >= 0.3
    assert all(r.json["disable_notification"] is False for r in server.received)


def test_the_engine_asks_once_when_refused_and_keeps_no_token(telegram, server, afs_plugins, tmp_path, caplog,
                                                              bot_answer, no_secret):
    server.default = bot_answer(403, "Forbidden: bot was blocked by the user")
    store = Store(tmp_path / "afs.db")
    manager = NotificationManager(plugins=afs_plugins, store=store, retry=RetryPolicy(base=0.01, cap=0.01))
    manager.register_channel("telegram", telegram)
    with caplog.at_level(logging.DEBUG):
        try:
            manager.notify_training_failed("m", "r-1", "boom")
            manager.flush(timeout=5)
        finally:
            manager.close(timeout=5)
    assert len(server.received) == 1
    [dead] = store.outbox()
    assert "bot was blocked by the user" in dead.last_error
    history = [json.dumps(entry._asdict(), default=str) for entry in store.history()]
    files = [path.read_bytes().decode("utf-8", "replace") for path in tmp_path.glob("afs.db*")]
    no_secret(caplog.text, dead.last_error, *history, *files)


# -- through the command line -----------------------------------------------------------


def _env(server, creds, **more):
    return {"TELEGRAM_API_URL": server.url, "TELEGRAM_BOT_TOKEN": creds.TOKEN, "TELEGRAM_CHAT_ID": "42", **more}


def test_afs_test_telegram_sends_a_test_message(server, creds, afs_cli, no_secret):
    done = afs_cli("test", "telegram", env=_env(server, creds))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"telegram: delivered to telegram {server.url}/bot{creds.BOT_ID}…/sendMessage to 42; "
                                   'the service answered: {"42": "message 42"}')
    [request] = server.received
    assert request.path == creds.PATH and request.json["chat_id"] == 42
    assert request.json["text"].startswith("<b>ℹ️ AFS test notification</b>\nIf you can read this, the telegram channel works.")
    no_secret(done.stdout, done.stderr)


def test_afs_test_telegram_says_why_it_was_refused(server, creds, afs_cli, bot_answer, no_secret):
    server.default = bot_answer(400, "Bad Request: chat not found")
    done = afs_cli("test", "telegram", env=_env(server, creds))
    assert done.returncode == 1 and len(server.received) == 1
    assert "telegram: failed (permanent): HTTP 400: Bad Request: chat not found: check TELEGRAM_CHAT_ID" in done.stdout
    no_secret(done.stdout, done.stderr)


def test_afs_status_shows_telegram_without_its_token(server, creds, afs_cli, no_secret):
    configured = afs_cli("status", "--json", env=_env(server, creds))
    row = next(r for r in json.loads(configured.stdout)["channels"] if r["channel"] == "telegram")
    assert (row["state"], row["detail"]) == ("configured", f"telegram {server.url}/bot{creds.BOT_ID}…/sendMessage to 42")
    wrong = afs_cli("status", "--json", env=_env(server, creds, TELEGRAM_BOT_TOKEN=creds.TOKEN + "x"))
    row = next(r for r in json.loads(wrong.stdout)["channels"] if r["channel"] == "telegram")
    assert row["state"] == "misconfigured" and "does not look like a bot token" in row["detail"]
    no_secret(configured.stdout, configured.stderr, wrong.stdout, wrong.stderr)
