"""Entry-point discovery: one plugin at a time, broken ones skipped, switches honoured."""

import logging
from pathlib import Path

import pytest

from afs_core import NotificationManager, send_now
from afs_core.errors import ConfigurationError, PluginLoadError
from afs_core.plugins import PluginHost

GOOD_PLUGIN = """
from afs_core import Channel, hookimpl

class {cls}(Channel):
    @classmethod
    def from_env(cls, env):
        return cls() if env.get("{setting}") else None

    def deliver(self, message):
        pass

@hookimpl
def afs_register_channels(register):
    register("{channel}", {cls})
"""


def install(site, dist, source, entry_point=None):
    return site.install(dist, source, entry_point)


def good(site, dist, channel, setting):
    cls = channel.capitalize() + "Channel"
    return site.install(dist, GOOD_PLUGIN.format(cls=cls, channel=channel, setting=setting), channel)


def test_installed_plugin_channels_are_discovered(site):
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    host = PluginHost()
    spec = host.channels["acme"]
    assert spec.distribution == "afs-acme"
    info = {p.name: p for p in host.plugins()}["acme"]
    assert info.version == "1.2.3" and info.channels == ("acme",)
    assert "afs_register_channels" in info.hooks


def test_a_plugin_that_fails_to_import_is_skipped_and_named(site, caplog):
    install(site, "afs-broken", "raise RuntimeError('half installed')", "broken")
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    with caplog.at_level(logging.WARNING, logger="afs.plugins"):
        host = PluginHost()
    assert "acme" in host.channels
    assert [f.distribution for f in host.failures] == ["afs-broken"]
    assert "afs-broken" in caplog.text and "half installed" in caplog.text


def test_strict_mode_raises_for_a_broken_plugin(site):
    install(site, "afs-broken", "import no_such_module_anywhere", "broken")
    with pytest.raises(PluginLoadError, match="afs-broken"):
        PluginHost(strict=True)
    with pytest.raises(PluginLoadError):
        PluginHost.from_env({"AFS_STRICT_PLUGINS": "1"})


def test_a_misspelt_hook_in_an_installed_plugin_is_skipped(site):
    install(
        site,
        "afs-typo",
        """
        from afs_core import hookimpl

        @hookimpl
        def afs_register_channel(register):
            raise AssertionError("never called")
        """,
        "typo",
    )
    host = PluginHost()
    assert "typo" not in dict(host.pm.list_name_plugin())
    assert "unknown hook" in host.failures[0].error


def test_allow_list_loads_only_named_plugins(site):
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    good(site, "afs-other", "other", "OTHER_TOKEN")
    only_acme = PluginHost.from_env({"AFS_LOAD_PLUGINS": "acme"})
    assert "acme" in only_acme.channels and "other" not in only_acme.channels
    by_distribution = PluginHost.from_env({"AFS_LOAD_PLUGINS": " afs-other , "})
    assert "other" in by_distribution.channels and "acme" not in by_distribution.channels
    none = PluginHost.from_env({"AFS_LOAD_PLUGINS": ""})
    assert set(none.channels) == {"console"}


def test_a_plugin_cannot_take_a_builtin_channel_name(site, caplog):
    install(
        site,
        "afs-impostor",
        """
        from afs_core import Channel, hookimpl

        class Impostor(Channel):
            def deliver(self, message):
                pass

        @hookimpl
        def afs_register_channels(register):
            register("console", Impostor)
        """,
        "impostor",
    )
    host = PluginHost()
    assert host.channels["console"].plugin == "afs_core.default_plugins.console"
    assert "already registered" in host.failures[0].error


def test_a_failing_register_hook_skips_only_that_plugin(site):
    install(
        site,
        "afs-raises",
        """
        from afs_core import hookimpl

        @hookimpl
        def afs_register_channels(register):
            register("Bad Name!", object)
        """,
        "raises",
    )
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    host = PluginHost()
    assert "acme" in host.channels
    assert "must be lowercase" in host.failures[0].error


def test_from_env_registers_configured_channels_only(site):
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    good(site, "afs-other", "other", "OTHER_TOKEN")
    env_file = Path.cwd() / ".env"
    env_file.write_text("ACME_TOKEN=from-dotenv\n")
    manager = NotificationManager.from_env(plugins=PluginHost())
    assert list(manager.handlers) == ["acme"]


def test_channel_configuration_errors_surface_at_set_up(site, monkeypatch):
    install(
        site,
        "afs-strict",
        """
        from afs_core import Channel, ConfigurationError, hookimpl

        class StrictChannel(Channel):
            @classmethod
            def from_env(cls, env):
                if env.get("STRICT_URL"):
                    raise ConfigurationError("STRICT_URL must start with https://")
                return None

        @hookimpl
        def afs_register_channels(register):
            register("strict", StrictChannel)
        """,
        "strict",
    )
    monkeypatch.setenv("STRICT_URL", "ftp://nope")
    with pytest.raises(ConfigurationError, match="strict channel: STRICT_URL must start"):
        NotificationManager.from_env(plugins=PluginHost())


def test_a_channel_whose_from_env_crashes_is_skipped(site, monkeypatch, caplog):
    install(
        site,
        "afs-crashy",
        """
        from afs_core import Channel, hookimpl

        class CrashyChannel(Channel):
            @classmethod
            def from_env(cls, env):
                raise KeyError("bug in plugin")

        @hookimpl
        def afs_register_channels(register):
            register("crashy", CrashyChannel)
        """,
        "crashy",
    )
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    monkeypatch.setenv("ACME_TOKEN", "x")
    with caplog.at_level(logging.WARNING, logger="afs.manager"):
        manager = NotificationManager.from_env(plugins=PluginHost())
    assert list(manager.handlers) == ["acme"]
    assert "crashy channel could not read its settings" in caplog.text


def test_trylast_does_not_let_a_plugin_take_the_console_name(site):
    install(
        site,
        "afs-hijack",
        """
        from afs_core import Channel, hookimpl

        class Evil(Channel):
            def deliver(self, message):
                pass

        @hookimpl(trylast=True)
        def afs_register_channels(register):
            register("console", Evil)
        """,
        "hijack",
    )
    host = PluginHost()
    assert host.channels["console"].plugin == "afs_core.default_plugins.console"
    assert [f.distribution for f in host.failures] == ["afs-hijack"]


def test_a_plugin_that_fails_half_way_is_not_left_half_active(site):
    install(
        site,
        "afs-half",
        """
        from afs_core import Channel, hookimpl

        class Half(Channel):
            def deliver(self, message):
                pass

        @hookimpl
        def afs_register_channels(register):
            register("half", Half)
            raise RuntimeError("second channel broke")

        @hookimpl
        def afs_format_event(event, channel):
            return "hijacked"
        """,
        "half",
    )
    host = PluginHost()
    assert "half" not in host.channels
    assert "half" not in dict(host.pm.list_name_plugin())
    assert "second channel broke" in host.failures[0].error


def test_a_plugin_that_exits_while_importing_is_skipped(site):
    install(site, "afs-argparse", "import sys\nsys.exit(2)", "argparse-at-import")
    good(site, "afs-acme", "acme", "ACME_TOKEN")
    host = PluginHost()
    assert "acme" in host.channels
    assert host.failures[0].distribution == "afs-argparse"


def test_channel_send_honours_the_allow_list_from_dotenv(site, monkeypatch):
    import afs_core.plugins as plugins_module
    from afs_core import EventType, NotificationEvent
    from afs_core.testing import RecordingChannel

    install(
        site,
        "afs-spy",
        """
        from afs_core import hookimpl

        @hookimpl
        def afs_format_event(event, channel):
            return "rewritten by spy"
        """,
        "spy",
    )
    Path(".env").write_text("AFS_LOAD_PLUGINS=\n")
    monkeypatch.setattr(plugins_module, "_default_settings", None)
    monkeypatch.setattr(plugins_module, "_hosts", {})
    channel = RecordingChannel()
    assert send_now(channel, NotificationEvent(EventType.TRAINING_STARTED, "t", "m")).delivered
    assert channel.messages[0] != "rewritten by spy"


def test_a_traced_host_logs_the_enrich_call_even_with_no_enricher(caplog, recording_channel):
    # notify() skips pluggy when no plugin enriches events, except when every hook call is traced.
    host = PluginHost(load_entry_points=False, trace=True)
    assert not host.hook.afs_enrich_event.get_hookimpls()
    manager = NotificationManager(plugins=host, background=False)
    manager.register_channel("recording", recording_channel)
    with caplog.at_level(logging.DEBUG, logger="afs.plugins"):
        assert manager.notify("t", "m").delivered == ["recording"]
    assert any("afs_enrich_event" in record.getMessage() for record in caplog.records)
