from afs_core import NotificationManager
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_discord import DiscordNotifier

URL = "https://discord.com/api/webhooks/123456/tok3nSECRETpart"


def test_entry_point_offers_the_discord_channel():
    spec = PluginHost(allow={"afs-discord"}, strict=True).channels["discord"]
    assert spec.channel_class is DiscordNotifier and spec.distribution == "afs-discord"


def test_from_env_reads_webhook_username_and_avatar():
    assert DiscordNotifier.from_env({"DISCORD_USERNAME": "bot"}) is None
    notifier = DiscordNotifier.from_env(
        {"DISCORD_WEBHOOK_URL": URL, "DISCORD_USERNAME": "AFS", "DISCORD_AVATAR_URL": "https://x/a.png"}
    )
    assert (notifier.username, notifier.avatar_url, notifier.timeout) == ("AFS", "https://x/a.png", 10.0)


def test_no_arguments_reads_the_same_settings(monkeypatch):
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", URL)
    monkeypatch.setenv("DISCORD_USERNAME", "trainer")
    notifier = DiscordNotifier()
    assert (notifier.webhook_url, notifier.username) == (URL, "trainer")


def test_token_never_shows(monkeypatch):
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", URL)
    notifier = DiscordNotifier()
    assert notifier.describe() == "discord https://discord.com/api/webhooks/***"
    assert "tok3n" not in repr(notifier)
    assert "tok3n" not in scrub("POST /api/webhooks/123456/tok3nSECRETpart?wait=true: 401", notifier.secrets())
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"discord"}))
    result = manager.notify("t", "m")
    assert "discord" in result.failed and "tok3n" not in result.failed["discord"]


def test_seed_import_path():
    from afs.notifications import DiscordNotifier as Seed

    assert Seed is DiscordNotifier
