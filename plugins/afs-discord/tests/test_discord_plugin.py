import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_discord import DiscordNotifier

URL = "https://discord.com/api/webhooks/123456/tok3nSECRETpart"


def test_entry_point_offers_the_discord_channel():
    spec = PluginHost(allow={"afs-discord"}, strict=True).channels["discord"]
    assert spec.channel_class is DiscordNotifier and spec.distribution == "afs-discord"


def test_from_env_reads_webhook_username_avatar_and_timeout():
    assert DiscordNotifier.from_env({"DISCORD_USERNAME": "bot"}) is None
    notifier = DiscordNotifier.from_env(
        {"DISCORD_WEBHOOK_URL": URL, "DISCORD_USERNAME": "AFS", "DISCORD_AVATAR_URL": "https://x.example/a.png",
         "DISCORD_TIMEOUT": "4"}
    )
    assert (notifier.username, notifier.avatar_url, notifier.timeout) == ("AFS", "https://x.example/a.png", 4.0)


def test_no_arguments_reads_the_same_settings(monkeypatch):
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", URL)
    monkeypatch.setenv("DISCORD_USERNAME", "trainer")
    notifier = DiscordNotifier()
    assert (notifier.webhook_url, notifier.username) == (URL + "?wait=true", "trainer")


def test_no_arguments_and_no_settings_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="DISCORD_WEBHOOK_URL is not set"):
        DiscordNotifier()


@pytest.mark.parametrize(
    ("url", "sent_to"),
    [
        ("https://discordapp.com/api/webhooks/1/abc", "https://discord.com/api/webhooks/1/abc?wait=true"),
        ("https://ptb.discord.com/api/webhooks/1/abc", "https://ptb.discord.com/api/webhooks/1/abc?wait=true"),
        ("https://canary.discordapp.com/api/webhooks/1/abc", "https://canary.discord.com/api/webhooks/1/abc?wait=true"),
        ("https://discord.com/api/v10/webhooks/1/abc?thread_id=9", "https://discord.com/api/v10/webhooks/1/abc?thread_id=9&wait=true"),
        ("http://127.0.0.1:8080/api/webhooks/1/abc?wait=false", "http://127.0.0.1:8080/api/webhooks/1/abc?wait=true"),
    ],
)
def test_accepted_urls_and_where_they_are_sent(url, sent_to):
    assert DiscordNotifier(webhook_url=url).webhook_url == sent_to


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://discord.com/api/webhooks/abc", "wrong path"),
        ("https://discord.com/channels/1/2", "wrong path"),
        ("http://discord.com/api/webhooks/1/abc", "must use https://"),
        ("https://discord.evil.example/api/webhooks/1/abc", "must point at discord.com"),
        ("http://localhost/hook", "wrong path"),
    ],
)
def test_wrong_urls_are_refused_at_construction(url, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        DiscordNotifier(webhook_url=url)
    assert "abc" not in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), 1e10])
def test_timeouts_must_be_sensible(bad):
    with pytest.raises(ConfigurationError, match="DISCORD_TIMEOUT"):
        DiscordNotifier(webhook_url=URL, timeout=bad)


def test_other_hosts_need_the_explicit_opt_out():
    assert DiscordNotifier(webhook_url="https://relay.example/hook", allow_any_host=True)


def test_token_never_shows(monkeypatch):
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", URL)
    notifier = DiscordNotifier()
    assert notifier.describe() == "discord https://discord.com/api/webhooks/***"
    assert "tok3n" not in repr(notifier)
    assert "tok3n" not in scrub("POST /api/webhooks/123456/tok3nSECRETpart?wait=true: 401", notifier.secrets())


def test_manager_registers_discord_from_env(monkeypatch):
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", URL)
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"discord"}))
    assert list(manager.handlers) == ["discord"]


def test_seed_import_path():
    from afs.notifications import DiscordNotifier as Seed

    assert Seed is DiscordNotifier
