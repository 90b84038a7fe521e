from afs_core import NotificationManager
from afs_core.plugins import PluginHost
from afs_desktop import DesktopNotifier


def test_entry_point_offers_the_desktop_channel():
    spec = PluginHost(allow={"desktop"}, strict=True).channels["desktop"]
    assert spec.channel_class is DesktopNotifier and spec.distribution == "afs-desktop"


def test_from_env_registers_only_when_enabled():
    assert DesktopNotifier.from_env({}) is None
    assert DesktopNotifier.from_env({"DESKTOP_NOTIFICATIONS_ENABLED": "false"}) is None
    notifier = DesktopNotifier.from_env(
        {"DESKTOP_NOTIFICATIONS_ENABLED": "true", "DESKTOP_NOTIFICATIONS_SOUND": "false"}
    )
    assert notifier is not None and notifier.enable_sound is False


def test_without_a_backend_send_reports_false_and_says_why(monkeypatch):
    monkeypatch.setenv("DESKTOP_NOTIFICATIONS_ENABLED", "true")
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"desktop"}))
    result = manager.notify("Training Complete", "Model trained successfully")
    assert result["desktop"] is False and "no desktop backend" in result.failed["desktop"]
    assert DesktopNotifier(app_name="AFS").notify_simple("Training Complete", "done") is False


def test_seed_import_path():
    from afs.notifications import DesktopNotifier as Seed

    assert Seed is DesktopNotifier
