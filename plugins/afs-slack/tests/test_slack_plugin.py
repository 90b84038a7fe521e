import pytest

from afs_core import NotificationManager
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
    assert SlackNotifier().webhook_url == URL


def test_token_is_redacted_in_descriptions_and_errors():
    notifier = SlackNotifier(webhook_url=URL, channel="#alerts")
    quoted_by_requests = "Max retries exceeded with url: /services/T000/B000/sekr1tTOKENvalue"
    assert "sekr1t" not in scrub(quoted_by_requests, notifier.secrets())
    assert "sekr1t" not in repr(notifier) and "sekr1t" not in notifier.describe()
    assert notifier.describe() == "slack https://hooks.slack.com/services/*** #alerts"


def test_manager_registers_slack_from_dotenv_and_reports_failure_without_token(tmp_path, monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text(f"SLACK_WEBHOOK_URL={URL}\n")
    manager = NotificationManager.from_env(env_file, plugins=PluginHost(allow={"slack"}))
    assert list(manager.handlers) == ["slack"]
    result = manager.notify("t", "m")
    assert result["slack"] is False and "cannot post to Slack yet" in result.failed["slack"]


def test_seed_import_path():
    from afs.notifications import SlackNotifier as Seed

    assert Seed is SlackNotifier


@pytest.mark.parametrize("bad", ["abc", "-1"])
def test_bad_timeout_is_a_configuration_error(bad):
    from afs_core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="SLACK_TIMEOUT"):
        SlackNotifier.from_env({"SLACK_WEBHOOK_URL": URL, "SLACK_TIMEOUT": bad})
