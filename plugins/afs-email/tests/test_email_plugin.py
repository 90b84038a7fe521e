import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_email import EmailNotifier

SETTINGS = {
    "SMTP_HOST": "smtp.example.com",
    "SMTP_PORT": "465",
    "SMTP_USER": "me@example.com",
    "SMTP_PASSWORD": "app-pa55word",
    "FROM_EMAIL": "me@example.com",
    "TO_EMAILS": "a@example.com, b@example.com,",
}


def test_entry_point_offers_the_email_channel():
    spec = PluginHost(allow={"email"}, strict=True).channels["email"]
    assert spec.channel_class is EmailNotifier and spec.distribution == "afs-email"


def test_from_env_reads_every_setting():
    assert EmailNotifier.from_env({"SMTP_PORT": "587"}) is None
    notifier = EmailNotifier.from_env({**SETTINGS, "SMTP_TIMEOUT": "3"})
    assert notifier.smtp_port == 465 and notifier.tls == "implicit" and notifier.timeout == 3.0
    assert notifier.to_emails == ["a@example.com", "b@example.com"]


def test_no_arguments_reads_the_same_settings(monkeypatch):
    for key, value in SETTINGS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SMTP_TLS", "starttls")
    notifier = EmailNotifier()
    assert (notifier.smtp_host, notifier.tls, notifier.from_email) == ("smtp.example.com", "starttls", "me@example.com")


def test_seed_constructor_arguments():
    notifier = EmailNotifier(
        smtp_host="smtp.gmail.com", smtp_port=587, smtp_user="me@gmail.com",
        smtp_password="app-password", from_email="me@gmail.com", to_emails=["r@example.com"],
    )
    assert notifier.describe() == "email smtp://me@gmail.com@smtp.gmail.com:587 (starttls) -> r@example.com"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"SMTP_HOST": "", "TO_EMAILS": "a@example.com"}, "SMTP_HOST is missing, but .*TO_EMAILS are set"),
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT must be a whole number"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT must be 1-65535"),
        ({"SMTP_PASSWORD": ""}, "SMTP_USER and SMTP_PASSWORD go together"),
        ({"TO_EMAILS": ""}, "TO_EMAILS must list at least one recipient"),
        ({"TO_EMAILS": "not-an-address"}, "not an email address"),
        ({"TO_EMAILS": "a@example.com\r\nBcc: x@example.com"}, "plain email addresses"),
        ({"FROM_EMAIL": "", "SMTP_USER": "", "SMTP_PASSWORD": ""}, "FROM_EMAIL is not set"),
        ({"SMTP_TLS": "maybe"}, "SMTP_TLS must be one of starttls, implicit, off"),
        ({"SMTP_CA_FILE": "/no/such/ca.pem"}, "SMTP_CA_FILE"),
        ({"SMTP_HOST": "smtp.example.com/x"}, "SMTP_HOST must be a host name"),
        ({"SMTP_TIMEOUT": "inf"}, "SMTP_TIMEOUT must be between"),
        ({"SMTP_PASSWORD": "pässword"}, "non-ASCII"),
        ({"TO_EMAILS": "@example.com"}, "not an email address"),
        ({"TO_EMAILS": "a@example..com"}, "not an email address"),
    ],
)
def test_wrong_settings_are_clear_errors_at_configuration_time(settings, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        EmailNotifier.from_env({**SETTINGS, **settings})
    assert "app-pa55word" not in str(info.value)


def test_a_bad_setting_stops_from_env_at_start_up(monkeypatch):
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("TO_EMAILS", "nobody")
    monkeypatch.setenv("FROM_EMAIL", "me@example.com")
    with pytest.raises(ConfigurationError, match="email channel: TO_EMAILS"):
        NotificationManager.from_env(plugins=PluginHost(allow={"email"}))


def test_password_never_shows(monkeypatch):
    for key, value in SETTINGS.items():
        monkeypatch.setenv(key, value)
    notifier = EmailNotifier()
    assert "app-pa55word" not in repr(notifier) and "app-pa55word" not in notifier.describe()
    assert "app-pa55word" not in str(vars(notifier))
    assert scrub("535 auth failed for me@example.com/app-pa55word", notifier.secrets()).endswith("/***")


def test_seed_import_path():
    from afs.notifications import EmailNotifier as Seed

    assert Seed is EmailNotifier
