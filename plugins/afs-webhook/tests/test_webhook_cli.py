"""``afs test webhook`` as a user runs it, and the secrets kept out of every output:
logs, errors, ``afs status``, ``afs history``, ``afs outbox`` and the store itself."""

import json
import logging
import os
import sqlite3

from standardwebhooks import Webhook

from afs_core import NotificationManager, send_now
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store, open_store
from afs_core.testing import Scripted, WebhookServer


def _settings(kit, urls):
    return {"AFS_LOAD_PLUGINS": "webhook", "WEBHOOK_URL": urls, "WEBHOOK_SECRET": kit.SECRET,
            "WEBHOOK_HEADERS": json.dumps({"Authorization": f"Bearer {kit.AUTH_TOKEN}"}), "WEBHOOK_TIMEOUT": "5"}


def test_afs_test_webhook_sends_one_signed_event(afs_cli, webhook_server, kit):
    webhook_server.default = Scripted(status=200, body="thanks")
    done = afs_cli("test", "webhook", env=_settings(kit, kit.url_of(webhook_server)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"webhook: delivered to webhook {webhook_server.url}; the service answered: HTTP 200: thanks\n"
    (request,) = webhook_server.received
    body = Webhook(kit.SECRET).verify(request.body, request.headers)
    assert body["title"] == "AFS test notification" and body["tags"] == ["test"] and body["run_id"] == "afs-test"
    assert request.headers["webhook-id"] == body["id"] and request.headers["Authorization"] == f"Bearer {kit.AUTH_TOKEN}"
    kit.assert_no_secret(done.stdout, done.stderr)


def test_afs_test_webhook_reports_a_refusal_without_any_secret(afs_cli, webhook_server, kit):
    echo = f"bad token {kit.PATH_TOKEN} / {kit.QUERY_TOKEN} / Bearer {kit.AUTH_TOKEN} / {kit.SECRET}"
    webhook_server.respond(status=401, body=echo)
    done = afs_cli("test", "webhook", env=_settings(kit, kit.url_of(webhook_server)))
    assert done.returncode != 0
    assert done.stdout.startswith("webhook: failed (permanent): HTTP 401: bad token *** / ***")
    kit.assert_no_secret(done.stdout, done.stderr)


def test_afs_test_webhook_with_a_bad_secret_says_so_without_quoting_it(afs_cli, kit):
    settings = {**_settings(kit, "https://hooks.example.com/in"), "WEBHOOK_SECRET": kit.SECRET[6:]}
    done = afs_cli("test", "webhook", env=settings)
    assert done.returncode != 0 and "WEBHOOK_SECRET must start with 'whsec_'" in done.stderr
    kit.assert_no_secret(done.stdout, done.stderr)


def test_no_secret_reaches_logs_errors_status_history_outbox_or_the_store(webhook_server, afs_plugins, afs_cli,
                                                                         caplog, kit):
    """One URL refuses the event for good, the other for now, both echoing every secret:
    the retry is pending, what each URL said is remembered in the store, and everything
    said about it is clean."""
    other = WebhookServer().start()
    try:
        urls = f"{kit.url_of(webhook_server)},{kit.url_of(other, 'other')}"
        settings = _settings(kit, urls)
        echo = f"{kit.PATH_TOKEN} {kit.QUERY_TOKEN} {kit.AUTH_TOKEN} {kit.SECRET} {kit.SECRET[6:]}"
        refusal = Scripted(status=503, body=f"overloaded: {echo}", headers={"Retry-After": "60"})
        other.respond(refusal, refusal)
        webhook_server.respond(status=410, body=f"gone: {echo}")
        from afs_webhook import WebhookNotifier

        channel = WebhookNotifier.from_env(settings)
        store = open_store()  # in AFS_HOME, where the afs commands below look
        manager = NotificationManager(plugins=afs_plugins, store=store, settings={},
                                      retry=RetryPolicy(max_attempts=5, base=0.05, cap=0.1))
        manager.register_channel("webhook", channel)
        with caplog.at_level(logging.DEBUG):
            try:
                result = manager.notify("Run failed", "out of memory", event_type="training_failed")
                kit.wait_until(lambda: any(row.attempts >= 1 for row in Store(store.path).outbox()))
                outcome = send_now(channel, result.event)  # the same event now: only the other URL again
            finally:
                manager.close(timeout=1)
        assert len(webhook_server.received) == 1 and len(other.received) == 2
        assert outcome.error == (f"{webhook_server.url}/…: HTTP 410: gone: *** *** *** *** ***; "
                                 f"{other.url}/…: HTTP 503: overloaded: *** *** *** *** ***")

        with sqlite3.connect(store.path) as db:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            dump = "\n".join(repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}"))
            remembered = db.execute("SELECT value FROM run_state WHERE key LIKE 'channel:webhook:fanout:%'").fetchall()
        assert len(remembered) == 1 and len(json.loads(remembered[0][0])["refused"]) == 1  # by key, with the reason
        history = afs_cli("history", "--json", env=settings)
        outbox = afs_cli("outbox", "--json", env=settings)
        status = afs_cli("status", env=settings)
        assert json.loads(outbox.stdout)[0]["error"].startswith(f"{webhook_server.url}/…: HTTP 410: gone: ***")
        assert f"webhook {webhook_server.url}, {other.url}" in status.stdout
        kit.assert_no_secret(caplog.text, outcome.error, result.outcomes, channel.describe(), repr(channel), dump,
                             history.stdout + history.stderr, outbox.stdout + outbox.stderr,
                             status.stdout + status.stderr)
        assert '"POST ' in caplog.text  # the DEBUG request lines were there to leak, and did not
    finally:
        other.stop()


def test_the_users_own_process_sees_no_secret_in_a_failed_result(webhook_server, afs_plugins, kit, tmp_path):
    from afs_webhook import WebhookNotifier

    webhook_server.respond(status=403, body=f"forbidden for Bearer {kit.AUTH_TOKEN}")
    channel = WebhookNotifier(kit.url_of(webhook_server), kit.SECRET, headers={"Authorization": f"Bearer {kit.AUTH_TOKEN}"})
    manager = NotificationManager(plugins=afs_plugins, background=False, store=Store(tmp_path / "afs.db"), settings={})
    manager.register_channel("webhook", channel)
    try:
        result = manager.notify("t", "m")
    finally:
        manager.close(timeout=1)
    assert result.failed == {"webhook": "HTTP 403: forbidden for ***"}
    assert os.path.exists(tmp_path / "afs.db")
    with sqlite3.connect(tmp_path / "afs.db") as db:
        kit.assert_no_secret(repr(db.execute("SELECT * FROM deliveries").fetchall()))
