import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_slack import SlackNotifier

URL = "https://hooks.slack.com/services/T000/B000/sekr1tTOKENvalue"


def test_entry_point_offers_the_slack_channel():
    spec = PluginHost(allow={"slack"}, strict=True).channels["slack"]
    assert spec.channel_class is SlackNotifier and spec.distribution == "afs-slack"


def test_from_env_needs_the_webhook_url():
    assert SlackNotifier.from_env({}) is None
    notifier = SlackNotifier.from_env({"SLACK_WEBHOOK_URL": URL, "SLACK_CHANNEL": "#alerts", "SLACK_TIMEOUT": "3"})
    assert (notifier.webhook_url, notifier.channel, notifier.timeout) == (URL, "#alerts", 3.0)


def test_no_arguments_reads_the_same_settings(monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", URL)
    monkeypatch.setenv("SLACK_TIMEOUT", "2.5")
    notifier = SlackNotifier()
    assert (notifier.webhook_url, notifier.timeout) == (URL, 2.5)


def test_no_arguments_and_no_settings_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="SLACK_WEBHOOK_URL is not set"):
        SlackNotifier()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hooks.slack.com/services/T/B/X", "must start with https://"),
        ("http://hooks.slack.com/services/T/B/X", "must use https://"),
        ("https://evil.example/services/T/B/X", "must point at hooks.slack.com"),
        ("https://hooks.slack.com:99999/x", "not a valid URL"),
        ("", "must be a webhook URL"),
        ("https://hooks.slack.com", "wrong path"),
        ("https://hooks.slack.com/api/T/B/X", "wrong path"),
    ],
)
def test_wrong_webhook_urls_are_refused_at_construction(url, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        SlackNotifier(webhook_url=url)
    assert "services/T/B/X" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/any/path", "http://localhost/x", "http://[::1]:9/y"])
def test_loopback_urls_need_no_flag(url):
    assert SlackNotifier(webhook_url=url).webhook_url == url


def test_any_host_with_an_explicit_opt_out():
    assert SlackNotifier(webhook_url="https://relay.example/hook", allow_any_host=True)


def test_token_is_redacted_in_descriptions_and_errors():
    notifier = SlackNotifier(webhook_url=URL, channel="#alerts")
    quoted_by_requests = "Max retries exceeded with url: /services/T000/B000/sekr1tTOKENvalue"
    assert "sekr1t" not in scrub(quoted_by_requests, notifier.secrets())
    assert "sekr1t" not in repr(notifier) and "sekr1t" not in notifier.describe()
    assert notifier.describe() == "slack https://hooks.slack.com/services/*** #alerts"


def test_manager_registers_slack_from_dotenv(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"SLACK_WEBHOOK_URL={URL}\n")
    manager = NotificationManager.from_env(env_file, plugins=PluginHost(allow={"slack"}))
    assert list(manager.handlers) == ["slack"]


def test_a_wrong_url_in_dotenv_stops_from_env_with_a_clear_error(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SLACK_WEBHOOK_URL=https://hooks.slack.example/services/T/B/X\n")
    with pytest.raises(ConfigurationError, match="slack channel: SLACK_WEBHOOK_URL must point at"):
        NotificationManager.from_env(env_file, plugins=PluginHost(allow={"slack"}))


def test_seed_import_path():
    from afs.notifications import SlackNotifier as Seed

    assert Seed is SlackNotifier


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "inf", "nan"])
def test_bad_timeout_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError, match="SLACK_TIMEOUT"):
        SlackNotifier.from_env({"SLACK_WEBHOOK_URL": URL, "SLACK_TIMEOUT": bad})
    with pytest.raises(ConfigurationError, match="SLACK_TIMEOUT"):
        SlackNotifier(webhook_url=URL, timeout=float(bad) if bad != "abc" else bad)
