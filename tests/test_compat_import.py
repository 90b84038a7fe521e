"""The import path of earlier releases keeps working: ``afs.notifications``."""

import importlib.util
import subprocess
import sys

import pytest

CHANNELS = {
    "DesktopNotifier": ("afs-desktop", "afs_desktop"),
    "EmailNotifier": ("afs-email", "afs_email"),
    "SlackNotifier": ("afs-slack", "afs_slack"),
    "DiscordNotifier": ("afs-discord", "afs_discord"),
}


def test_core_names_come_from_afs_core():
    import afs_core
    from afs.notifications import EventType, NotificationEvent, NotificationLevel, NotificationManager

    assert NotificationManager is afs_core.NotificationManager
    assert NotificationEvent is afs_core.NotificationEvent
    assert EventType is afs_core.EventType and NotificationLevel is afs_core.NotificationLevel


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_channel_class_comes_from_its_distribution_or_says_what_to_install(name):
    distribution, module = CHANNELS[name]
    if importlib.util.find_spec(module) is not None:
        namespace = {}
        exec(f"from afs.notifications import {name}", namespace)
        assert namespace[name] is getattr(importlib.import_module(module), name)
    else:
        with pytest.raises(ImportError) as info:
            exec(f"from afs.notifications import {name}", {})
        assert str(info.value) == f"{name} is provided by {distribution}: pip install {distribution}"


def test_unknown_name_is_an_import_error():
    with pytest.raises(ImportError):
        exec("from afs.notifications import TelegramNotifier", {})


def test_seed_import_line_in_a_fresh_interpreter():
    installed = [n for n, (_, m) in CHANNELS.items() if importlib.util.find_spec(m)]
    names = ", ".join(["NotificationManager", "NotificationEvent", "EventType", "NotificationLevel", *installed])
    code = f"from afs.notifications import {names}; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
