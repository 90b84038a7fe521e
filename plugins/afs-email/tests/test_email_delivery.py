"""EmailNotifier against real SMTP servers on 127.0.0.1 (aiosmtpd with STARTTLS and AUTH)."""

import logging
import time

import pytest

from afs_core import EventType, NotificationManager
from afs_email import EmailNotifier
from afs_email.notifier import PartialDeliveryError

USER, PASSWORD = "trainer@example.com", "app-pa55word"  # what the servers in conftest.py accept
RECIPIENTS = ["alice@example.com", "bob@example.com", "carol@example.com"]


def notifier_for(server, certificates, **overrides):
    options = dict(smtp_host="127.0.0.1", smtp_port=server.port, smtp_user=USER, smtp_password=PASSWORD,
                   from_email=USER, to_emails=RECIPIENTS, timeout=5, ca_file=certificates["ca_file"], tls="starttls")
    options.update(overrides)
    return EmailNotifier(**options)


def test_starttls_auth_delivers_a_multipart_report(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates)
    assert notifier.send(make_event(model_name="Qwen2.5-Coder-7B", run_id="training_001",
                                    title="Training completed: Qwen2.5-Coder-7B", metrics={"accuracy": 0.954321}))
    sender, envelope, _ = starttls_server.recorder.messages[0]
    assert sender == USER and envelope == RECIPIENTS
    message = starttls_server.recorder.parsed()
    assert message["Subject"] == "[AFS] ✅ Training completed: Qwen2.5-Coder-7B (training_001)"
    assert message.get_content_type() == "multipart/alternative"
    text, html = [part.get_content() for part in message.iter_parts()]
    assert "accuracy: 0.9543" in text and "Time (UTC):" in text and "Time (local):" in text
    assert "<table" in html and "border-left:6px solid #1a7f37" in html and ">0.9543<" in html
    assert starttls_server.recorder.logins == [USER]


def test_implicit_tls_on_465_style_server(implicit_tls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(implicit_tls_server, certificates, tls=None, smtp_port=implicit_tls_server.port)
    assert notifier.tls == "starttls"  # chosen from the port: only 465 means implicit
    notifier = notifier_for(implicit_tls_server, certificates, tls="implicit")
    assert notifier.send(make_event())
    assert implicit_tls_server.recorder.logins == [USER]


def test_certificate_verification_is_on_by_default(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates, ca_file=None)  # the test CA is not trusted
    outcome = notifier.send_with_outcome(make_event())
    assert outcome.permanent and "certificate failed verification" in outcome.error
    assert starttls_server.recorder.logins == []


def test_no_starttls_fails_closed_before_any_credential(plain_server, certificates, afs_plugins, make_event):
    outcome = notifier_for(plain_server, certificates).send_with_outcome(make_event())
    assert outcome.permanent and "offers no STARTTLS" in outcome.error
    assert plain_server.recorder.logins == [] and plain_server.recorder.messages == []


def test_plain_smtp_only_when_explicitly_turned_off(plain_server, certificates, afs_plugins, make_event):
    relay = notifier_for(plain_server, certificates, tls="off", smtp_user=None, smtp_password=None)
    assert relay.send(make_event())
    assert len(plain_server.recorder.messages) == 1


def test_bad_password_is_permanent_and_points_at_app_passwords(starttls_server, certificates, afs_plugins, make_event, caplog):
    notifier = notifier_for(starttls_server, certificates, smtp_password="wrong-secret")
    with caplog.at_level(logging.DEBUG):
        outcome = notifier.send_with_outcome(make_event())
    assert outcome.permanent and "535" in outcome.error and "app password" in outcome.error
    assert "wrong-secret" not in caplog.text and "wrong-secret" not in outcome.error
    assert "wrong-secret" not in repr(notifier) and "wrong-secret" not in notifier.describe()


def test_some_recipients_refused_is_a_partial_failure_naming_them(starttls_server, certificates, afs_plugins, make_event):
    starttls_server.recorder.refuse = {"bob@example.com", "carol@example.com"}
    notifier = notifier_for(starttls_server, certificates)
    with pytest.raises(PartialDeliveryError) as info:
        notifier.deliver(notifier.format(make_event()))
    assert set(info.value.refused) == {"bob@example.com", "carol@example.com"}
    assert "delivered to 1 of 3" in str(info.value) and "bob@example.com (550" in str(info.value)
    assert starttls_server.recorder.messages[0][1] == ["alice@example.com"]


def test_all_recipients_refused_is_permanent(starttls_server, certificates, afs_plugins, make_event):
    starttls_server.recorder.refuse = set(RECIPIENTS)
    outcome = notifier_for(starttls_server, certificates).send_with_outcome(make_event())
    assert outcome.permanent and "every recipient was refused" in outcome.error


def test_header_injection_in_the_title_adds_no_header_or_recipient(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates, to_emails=["alice@example.com"])
    assert notifier.send(make_event(title="done\r\nBcc: victim@example.com", run_id="r\nX-Evil: 1"))
    _, envelope, raw = starttls_server.recorder.messages[0]
    assert envelope == ["alice@example.com"]
    message = starttls_server.recorder.parsed()
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert message["Subject"] == "[AFS] ✅ done Bcc: victim@example.com (r X-Evil: 1)"


def test_emoji_and_lone_surrogates_make_valid_headers(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates)
    assert notifier.send(make_event(title="🚀✅👨‍👩‍👧 done \ud800 ok"))
    raw = starttls_server.recorder.messages[0][2]
    raw.decode("ascii")  # headers are RFC 2047-encoded, the body transfer-encoded
    assert starttls_server.recorder.parsed()["Subject"] == "[AFS] ✅ 🚀✅👨‍👩‍👧 done ok (run-1)"


def test_user_text_is_html_escaped(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates)
    notifier.send(make_event(EventType.TRAINING_FAILED, "<script>alert(1)</script>", "a & b <img src=x>",
                             model_name='"><b>m', context={"traceback": "Traceback\n<module> & </pre>"}))
    html = list(starttls_server.recorder.parsed().iter_parts())[1].get_content()
    assert "<script>" not in html and "<img" not in html and "<b>m" not in html
    assert "&lt;script&gt;" in html and "a &amp; b &lt;img src=x&gt;" in html
    assert "&lt;module&gt; &amp; &lt;/pre&gt;" in html and "font-family:Consolas" in html


@pytest.mark.parametrize("deadline", [0.5, 1.5])  # before the first byte; mid-greeting
def test_a_server_that_never_greets_or_dribbles_is_cut_at_the_deadline(silent_server, afs_plugins, make_event, deadline):
    port, _ = silent_server
    notifier = EmailNotifier(smtp_host="127.0.0.1", smtp_port=port, from_email=USER, to_emails=RECIPIENTS,
                             timeout=deadline, tls="off")
    started = time.monotonic()
    outcome = notifier.send_with_outcome(make_event())
    elapsed = time.monotonic() - started
    assert not outcome.permanent and "deadline" in outcome.error
    assert elapsed < deadline + 0.5


def test_connection_refused_is_transient(afs_plugins, make_event, free_port):
    notifier = EmailNotifier(smtp_host="127.0.0.1", smtp_port=free_port(), from_email=USER, to_emails=RECIPIENTS,
                             timeout=2, tls="off")
    outcome = notifier.send_with_outcome(make_event())
    assert not outcome.permanent and "Connection" in outcome.error


def test_a_batch_of_100_uses_one_connection_and_one_login(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates)
    assert notifier.send_batch([make_event(title=f"event {i}") for i in range(100)]) == 100
    recorder = starttls_server.recorder
    assert len(recorder.messages) == 100 and recorder.logins == [USER] and len(recorder.peers) == 1


def test_the_engine_hands_a_burst_over_as_one_batch_one_connection_one_login(
        starttls_server, certificates, afs_plugins, make_event, tmp_path):
    from afs_core.delivery.store import Store

    store = Store(tmp_path / "afs.db")
    for i in range(12):  # a burst already waiting when the worker starts, as after a restart
        store.enqueue(make_event(title=f"event {i}"), ["email"])
    manager = NotificationManager(plugins=afs_plugins, store=store)
    manager.register_handler("email", notifier_for(starttls_server, certificates))
    try:
        assert manager.flush(timeout=30) is True
    finally:
        manager.close(timeout=5)
    recorder = starttls_server.recorder
    assert len(recorder.messages) == 12 and recorder.logins == [USER] and len(recorder.peers) == 1
    assert all(e.deliveries[0].status.value == "delivered" for e in store.history(limit=20))


def test_a_batch_reconnects_once_when_the_server_drops_it(starttls_server, certificates, afs_plugins, make_event):
    starttls_server.recorder.drop_after = 4
    notifier = notifier_for(starttls_server, certificates)
    sent = notifier.send_batch([make_event(title=f"event {i}") for i in range(10)])
    recorder = starttls_server.recorder
    assert sent == 8 and len(recorder.messages) == 8  # 4, reconnect, 4, then it gives up
    assert len(recorder.logins) == 2 and len(recorder.peers) == 2


def test_password_never_reaches_results_or_logs(starttls_server, certificates, afs_plugins, caplog):
    starttls_server.recorder.refuse = set(RECIPIENTS)
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_handler("email", notifier_for(starttls_server, certificates))
    with caplog.at_level(logging.DEBUG):
        result = manager.notify_training_failed("m", "r", f"leaked {PASSWORD}?")
    assert PASSWORD not in result.failed["email"] and PASSWORD not in caplog.text
    assert PASSWORD not in str(manager.get_status())


def test_another_plugin_can_replace_the_report(starttls_server, certificates, afs_plugins, make_event):
    from afs_core import hookimpl

    class Terse:
        @hookimpl
        def afs_format_event(self, event, channel):
            return f"{event.title}\n\nshort & sweet" if isinstance(channel, EmailNotifier) else None

    afs_plugins.register(Terse(), name="terse")
    notifier_for(starttls_server, certificates).send(make_event())
    message = starttls_server.recorder.parsed()
    assert message["Subject"] == "[AFS] Training completed: tiny-model"
    assert "short &amp; sweet" in list(message.iter_parts())[1].get_content()


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(stalling_starttls_server, certificates, afs_plugins, make_event):
    notifier = EmailNotifier(smtp_host="127.0.0.1", smtp_port=stalling_starttls_server, smtp_user=USER,
                             smtp_password=PASSWORD, from_email=USER, to_emails=RECIPIENTS, timeout=1,
                             tls="starttls", ca_file=certificates["ca_file"])
    started = time.monotonic()
    outcome = notifier.send_with_outcome(make_event())
    assert time.monotonic() - started < 1.6
    assert not outcome.permanent and "deadline" in outcome.error


def test_a_bad_password_is_tried_once(starttls_server, certificates, afs_plugins, make_event):
    notifier_for(starttls_server, certificates, smtp_password="wrong").send(make_event())
    assert starttls_server.recorder.auth_attempts == 1


def test_a_batch_whose_login_fails_fails_every_event_for_good_after_one_try(starttls_server, certificates, afs_plugins, make_event):
    notifier = notifier_for(starttls_server, certificates, smtp_password="wrong")
    assert notifier.send_batch([make_event() for _ in range(5)]) == 0
    assert starttls_server.recorder.auth_attempts == 1
    outcome = notifier.send_with_outcome(make_event())
    assert outcome.permanent and "535" in outcome.error


def test_greylisting_every_recipient_is_transient(starttls_server, certificates, afs_plugins, make_event):
    starttls_server.recorder.refuse = set(RECIPIENTS)
    starttls_server.recorder.refuse_code = "451 4.7.1 Greylisted, try again later"
    outcome = notifier_for(starttls_server, certificates).send_with_outcome(make_event())
    assert not outcome.permanent and "deferred" in outcome.error


def test_implicit_tls_against_a_plain_port_says_what_to_check(plain_server, certificates, afs_plugins, make_event):
    outcome = notifier_for(plain_server, certificates, tls="implicit").send_with_outcome(make_event())
    assert outcome.permanent and "SMTP_TLS" in outcome.error


def test_a_454_login_is_transient_and_a_535_permanent():
    import smtplib

    from afs_core.channels.deadline import Deadline

    notifier = EmailNotifier(smtp_host="127.0.0.1", from_email=USER, to_emails=RECIPIENTS, tls="off")
    with Deadline(5) as deadline:
        busy = notifier._classify(smtplib.SMTPAuthenticationError(454, b"4.7.0 Temporary failure"), deadline)
        wrong = notifier._classify(smtplib.SMTPAuthenticationError(535, b"5.7.8 Bad credentials"), deadline)
    assert not busy.permanent and wrong.permanent and "app password" in str(wrong)


def test_a_formatters_report_is_made_header_safe(starttls_server, certificates, afs_plugins, make_event):
    from afs_core import hookimpl
    from afs_email.report import EmailReport

    class Careless:
        @hookimpl
        def afs_format_event(self, event, channel):
            return EmailReport("hi\r\nBcc: victim@example.com", "text \ud800", "<p>html</p>")

    afs_plugins.register(Careless(), name="careless")
    assert notifier_for(starttls_server, certificates, to_emails=["alice@example.com"]).send(make_event())
    assert starttls_server.recorder.messages[0][1] == ["alice@example.com"]
    assert starttls_server.recorder.parsed()["Subject"] == "hi Bcc: victim@example.com"
