"""Settings: the entry point, from_env, what is refused at start-up, and the least level."""

import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.events import EventType, NotificationLevel
from afs_core.plugins import PluginHost
from afs_pagerduty import PagerDutyChannel
from afs_pagerduty.channel import US_EVENTS_URL

KEY = "0123456789abcdef0123456789ABCDEF"


def test_entry_point_offers_the_pagerduty_channel():
    spec = PluginHost(allow={"afs-pagerduty"}, strict=True).channels["pagerduty"]
    assert spec.channel_class is PagerDutyChannel and spec.distribution == "afs-pagerduty"


def test_from_env_defaults_to_the_us_endpoint():
    channel = PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY})
    assert channel.webhook_url == US_EVENTS_URL and channel.timeout == 10.0
    assert channel.describe() == "pagerduty https://events.pagerduty.com/v2/enqueue"


def test_from_env_reads_the_eu_endpoint_and_timeout():
    channel = PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": f"  {KEY}\n",
                                         "PAGERDUTY_EVENTS_URL": "https://events.eu.pagerduty.com/v2/enqueue",
                                         "PAGERDUTY_TIMEOUT": "4"})
    assert channel.webhook_url == "https://events.eu.pagerduty.com/v2/enqueue" and channel.timeout == 4.0
    assert channel.routing_key.reveal() == KEY


def test_not_configured_without_a_routing_key():
    assert PagerDutyChannel.from_env({}) is None
    assert PagerDutyChannel.from_env({"PAGERDUTY_TIMEOUT": "3"}) is None


def test_an_events_url_without_a_routing_key_is_a_mistake_not_silence():
    with pytest.raises(ConfigurationError, match="PAGERDUTY_ROUTING_KEY is missing, but PAGERDUTY_EVENTS_URL"):
        PagerDutyChannel.from_env({"PAGERDUTY_EVENTS_URL": US_EVENTS_URL})


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (KEY[:31], "got 31 characters"),
        (KEY + "0", "got 33 characters"),
        ("e+23rschqsESqk9Q6_-g", "got 20 characters"),  # a REST API token, not an Integration Key
        (KEY[:30] + "-_", "characters other than letters and digits"),
        (KEY[:31] + "é", "characters other than letters and digits"),
    ],
)
def test_a_wrong_routing_key_is_refused_at_from_env_without_quoting_it(key, said):
    with pytest.raises(ConfigurationError, match=said) as info:
        PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": key})
    assert "PAGERDUTY_ROUTING_KEY" in str(info.value) and "Integration Key" in str(info.value)
    assert key not in str(info.value) and key[:20] not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["https://events.pagerduty.com/v2/enqueue/", "https://events.eu.pagerduty.com/v2/enqueue",
     "http://127.0.0.1:8080/v2/enqueue", "http://localhost:9/any/relay/path"],
)
def test_pagerdutys_endpoints_and_loopback_are_accepted(url):
    assert PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_EVENTS_URL": url}).webhook_url == url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://events.pagerduty.com/v2/enqueue", "must use https://"),
        ("https://events.pagerduty.com/generic/2010-04-15/create_event.json", "wrong path; expected /v2/enqueue"),
        ("https://api.pagerduty.com/incidents", "must point at events.pagerduty.com or events.eu.pagerduty.com"),
        ("https://events.pagerduty.com.evil.example/v2/enqueue", "must point at"),
        ("ftp://events.pagerduty.com/v2/enqueue", "must start with https://"),
        ("not a url", "must start with https://"),
    ],
)
def test_any_other_events_url_is_refused_at_from_env(url, said):
    with pytest.raises(ConfigurationError, match=said) as info:
        PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_EVENTS_URL": url})
    assert "PAGERDUTY_EVENTS_URL" in str(info.value) and KEY not in str(info.value)


def test_an_empty_events_url_in_code_is_refused():
    with pytest.raises(ConfigurationError, match="PAGERDUTY_EVENTS_URL must be a URL"):
        PagerDutyChannel(KEY, "")


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "soon"])
def test_timeouts_must_be_sensible(bad):
    with pytest.raises(ConfigurationError, match="PAGERDUTY_TIMEOUT"):
        PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_TIMEOUT": bad})


def test_only_errors_page_by_default_and_recoveries_are_wanted_below_that():
    assert PagerDutyChannel.default_min_level is NotificationLevel.ERROR
    assert PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY}).min_level is NotificationLevel.ERROR
    assert {EventType.TRAINING_COMPLETED, EventType.TRAINING_RESUMED, EventType.GPU_MEMORY_WARNING,
            EventType.GPU_UTILIZATION_LOW, EventType.TRAINING_PROGRESS_RESUMED} == set(PagerDutyChannel.wanted_below_level)


@pytest.mark.parametrize(
    ("env", "level"),
    [
        ({"AFS_PAGERDUTY_MIN_LEVEL": "warning"}, NotificationLevel.WARNING),
        ({"AFS_MIN_LEVEL": "warning"}, NotificationLevel.ERROR),  # the global setting never lowers it
        ({"AFS_MIN_LEVEL": "critical"}, NotificationLevel.CRITICAL),
        ({"AFS_PAGERDUTY_MIN_LEVEL": "info", "AFS_MIN_LEVEL": "critical"}, NotificationLevel.INFO),
    ],
)
def test_the_channel_knows_the_least_level_the_core_lets_through(env, level, afs_plugins):
    import afs_pagerduty.plugin

    channel = PagerDutyChannel.from_env({"PAGERDUTY_ROUTING_KEY": KEY, **env})
    assert channel.min_level is level
    afs_plugins.register(afs_pagerduty.plugin)
    manager = NotificationManager(plugins=afs_plugins, background=False, settings=env)
    manager.register_channel("pagerduty", channel)
    assert manager._policies["pagerduty"].min_level is level


def test_a_channel_built_in_code_reads_the_least_level_from_the_environment(monkeypatch):
    assert PagerDutyChannel(KEY).min_level is NotificationLevel.ERROR
    monkeypatch.setenv("AFS_PAGERDUTY_MIN_LEVEL", "warning")
    assert PagerDutyChannel(KEY).min_level is NotificationLevel.WARNING
    assert PagerDutyChannel(KEY, min_level="critical").min_level is NotificationLevel.CRITICAL


def test_manager_registers_pagerduty_from_env(monkeypatch):
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", KEY)
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"pagerduty"}))
    try:
        assert list(manager.handlers) == ["pagerduty"]
    finally:
        manager.close(timeout=1)


def test_a_bad_key_stops_the_manager_naming_the_channel(monkeypatch):
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "short-secret-value")
    with pytest.raises(ConfigurationError, match="pagerduty channel: PAGERDUTY_ROUTING_KEY") as info:
        NotificationManager.from_env(plugins=PluginHost(allow={"pagerduty"}))
    assert "short-secret-value" not in str(info.value)
