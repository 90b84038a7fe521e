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
    assert EmailNotifier.from_env({}) is None
    notifier = EmailNotifier.from_env(SETTINGS)
    assert notifier.smtp_port == 465 and notifier.to_emails == ["a@example.com", "b@example.com"]
    assert notifier.is_configured()


def test_seed_constructor_arguments():
    notifier = EmailNotifier(
        smtp_host="smtp.gmail.com", smtp_port=587, smtp_user="me@gmail.com",
        smtp_password="app-password", from_email="me@gmail.com", to_emails=["r@example.com"],
    )
    assert notifier.describe() == "email smtp://me@gmail.com@smtp.gmail.com:587 -> r@example.com"


def test_bad_port_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="SMTP_PORT"):
        EmailNotifier.from_env({**SETTINGS, "SMTP_PORT": "smtp"})


def test_password_never_shows(monkeypatch):
    for key, value in SETTINGS.items():
        monkeypatch.setenv(key, value)
    notifier = EmailNotifier()
    assert "app-pa55word" not in repr(notifier) and "app-pa55word" not in notifier.describe()
    assert scrub("535 auth failed for me@example.com/app-pa55word", notifier.secrets()).endswith("/***")
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"email"}))
    result = manager.notify("t", "m")
    assert result["email"] is False and "app-pa55word" not in result.failed["email"]


def test_seed_import_path():
    from afs.notifications import EmailNotifier as Seed

    assert Seed is EmailNotifier
