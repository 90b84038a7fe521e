"""Configuration: read from the environment, checked at start-up, secrets never quoted."""

import base64
import json

import pytest
from twilio_api import (
    ALICE,
    BOB,
    CREDENTIALS,
    KEY_SECRET,
    KEY_SID,
    SENDER,
    SERVICE_SID,
    SID,
    TOKEN,
    afs,
    assert_no_secret,
)

from afs_core import NotificationLevel, NotificationManager
from afs_core.delivery.policy import ChannelPolicy
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_twilio import TwilioNotifier

BASE = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM": SENDER, "TWILIO_TO": ALICE}


def test_entry_point_offers_the_twilio_channel():
    spec = PluginHost(allow={"afs-twilio"}, strict=True).channels["twilio"]
    assert spec.channel_class is TwilioNotifier and spec.distribution == "afs-twilio"


def test_from_env_reads_every_setting():
    channel = TwilioNotifier.from_env({**BASE, "TWILIO_TO": f"{ALICE}, {BOB}", "TWILIO_API_URL": "https://relay.example/twilio/",
                                       "TWILIO_MAX_SEGMENTS": "3", "TWILIO_TIMEOUT": "4",
                                       "TWILIO_MESSAGING_SERVICE_SID": SERVICE_SID})
    assert channel.to == (ALICE, BOB) and channel.account_sid == SID and channel.from_number == SENDER
    assert channel.messaging_service_sid == SERVICE_SID and channel.max_segments == 3 and channel.timeout == 4.0
    assert channel.webhook_url == f"https://relay.example/twilio/2010-04-01/Accounts/{SID}/Messages.json"


def test_defaults_are_twilio_two_segments_and_ten_seconds():
    channel = TwilioNotifier.from_env(BASE)
    assert channel.webhook_url == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert channel.max_segments == 2 and channel.timeout == 10.0


def test_twilios_own_settings_alone_do_not_turn_the_channel_on():
    """The Twilio CLI and SDK read TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN too: having them
    set must neither send SMS nor stop every other channel from starting."""
    assert TwilioNotifier.from_env({"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM": SENDER}) is None
    # Nor do the defaults a settings template carries.
    template = {"TWILIO_TO": "", "TWILIO_API_URL": "https://api.twilio.com", "TWILIO_MAX_SEGMENTS": "2", "TWILIO_TIMEOUT": "10"}
    assert TwilioNotifier.from_env(template) is None


def test_numbers_are_e164_with_separators_removed_and_repeats_dropped():
    channel = TwilioNotifier.from_env({**BASE, "TWILIO_TO": "+44 7700 901234, +1 (555) 123-0987,+447700901234"})
    assert channel.to == (ALICE, BOB)


@pytest.mark.parametrize("bad", ["07700 900123", "447700900123", "+0123456789", "+1 555", "+1234567890123456",
                                 "+44 (0).-", " 0044 7700 900123 "])
def test_a_number_not_in_e164_form_stops_the_configuration_naming_it(bad):
    with pytest.raises(ConfigurationError, match=r"TWILIO_TO \(number 2\)") as info:
        TwilioNotifier.from_env({**BASE, "TWILIO_TO": f"{ALICE},{bad}"})
    assert repr(bad.strip()) in str(info.value) and "E.164" in str(info.value)


@pytest.mark.parametrize("setting", ["TWILIO_TO", "TWILIO_FROM"])
@pytest.mark.parametrize("bad", [TOKEN, KEY_SECRET, "alice", "+٤٤7700901234", "+44 7700 900123 000000", "+1 555 x12"])
def test_a_value_not_written_like_a_number_is_refused_without_quoting_it(setting, bad):
    """People paste the auth token where a number belongs: only digits, +, spaces, brackets,
    dots and dashes, 20 characters at most, are quoted."""
    with pytest.raises(ConfigurationError, match=f"{setting}: the value given \\({len(bad)} characters, not shown") as info:
        TwilioNotifier.from_env({**BASE, setting: bad})
    assert bad not in str(info.value) and "E.164" in str(info.value)
    assert_no_secret(str(info.value))


def test_a_sender_not_in_e164_form_is_refused():
    with pytest.raises(ConfigurationError, match="TWILIO_FROM"):
        TwilioNotifier.from_env({**BASE, "TWILIO_FROM": "AFS Alerts"})


def test_no_number_at_all_is_refused():
    with pytest.raises(ConfigurationError, match="TWILIO_TO holds no phone number"):
        TwilioNotifier.from_env({**BASE, "TWILIO_TO": " , "})


@pytest.mark.parametrize(
    ("setting", "value"),
    [("TWILIO_ACCOUNT_SID", TOKEN), ("TWILIO_ACCOUNT_SID", "AC123"), ("TWILIO_ACCOUNT_SID", "SK" + "0" * 32),
     ("TWILIO_API_KEY_SID", TOKEN), ("TWILIO_MESSAGING_SERVICE_SID", "MG" + "x" * 32)],
)
def test_a_sid_of_the_wrong_shape_is_refused_without_quoting_it(setting, value):
    """People paste the auth token where the SID belongs: the error never shows it."""
    env = {**BASE, setting: value, **({"TWILIO_API_KEY_SECRET": KEY_SECRET} if setting == "TWILIO_API_KEY_SID" else {})}
    with pytest.raises(ConfigurationError, match=f"{setting} must be") as info:
        TwilioNotifier.from_env(env)
    assert value not in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("TWILIO_ACCOUNT_SID", "TWILIO_ACCOUNT_SID is not set"),
        ("TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN is not set (or set TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET)"),
        ("TWILIO_FROM", "TWILIO_FROM is not set (or set TWILIO_MESSAGING_SERVICE_SID)"),
    ],
)
def test_a_missing_setting_is_named_once_the_numbers_are_set(missing, says):
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigurationError) as info:
        TwilioNotifier.from_env(env)
    assert str(info.value) == says


def test_half_an_api_key_is_refused():
    with pytest.raises(ConfigurationError, match="go together"):
        TwilioNotifier.from_env({**BASE, "TWILIO_API_KEY_SID": KEY_SID})
    with pytest.raises(ConfigurationError, match="go together"):
        TwilioNotifier.from_env({**BASE, "TWILIO_API_KEY_SECRET": KEY_SECRET})


def test_an_api_key_is_used_when_given_and_no_auth_token_is_needed():
    env = {k: v for k, v in BASE.items() if k != "TWILIO_AUTH_TOKEN"}
    channel = TwilioNotifier.from_env({**env, "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": KEY_SECRET})
    header = channel._authorization.reveal()
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == f"{KEY_SID}:{KEY_SECRET}"
    assert header in channel.secrets() and KEY_SECRET in channel.secrets()


def test_a_messaging_service_can_stand_in_for_the_sender():
    env = {k: v for k, v in BASE.items() if k != "TWILIO_FROM"}
    channel = TwilioNotifier.from_env({**env, "TWILIO_MESSAGING_SERVICE_SID": SERVICE_SID})
    assert channel.from_number is None and channel.messaging_service_sid == SERVICE_SID
    assert channel.describe() == "twilio to +44…1234 via messaging service MG…eeff"


@pytest.mark.parametrize("bad", ["0", "11", "two", "-1"])
def test_the_segment_budget_is_one_to_ten(bad):
    with pytest.raises(ConfigurationError, match="TWILIO_MAX_SEGMENTS"):
        TwilioNotifier.from_env({**BASE, "TWILIO_MAX_SEGMENTS": bad})


@pytest.mark.parametrize("bad", ["0", "nan", "1e10", "soon"])
def test_timeouts_must_be_sensible(bad):
    with pytest.raises(ConfigurationError, match="TWILIO_TIMEOUT"):
        TwilioNotifier.from_env({**BASE, "TWILIO_TIMEOUT": bad})


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://api.twilio.com", "must use https://"),
        ("http://proxy.example:8080", "must use https://"),
        (f"https://{SID}:{TOKEN}@proxy.example", "must not carry credentials"),
        ("https://proxy.example/?key=abc", "must not carry credentials, a query"),
        ("ftp://api.twilio.com", "must start with https://"),
        ("https://proxy.example:99999", "not a valid URL"),
    ],
)
def test_the_api_url_must_be_https_except_on_loopback(url, says):
    with pytest.raises(ConfigurationError, match=says) as info:
        TwilioNotifier.from_env({**BASE, "TWILIO_API_URL": url})
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1", "https://api.dublin.ie1.twilio.com",
                                 "https://proxy.corp.example/twilio"])
def test_loopback_regional_and_proxy_bases_are_accepted(url):
    assert TwilioNotifier.from_env({**BASE, "TWILIO_API_URL": url}).webhook_url.startswith(url)


def test_the_least_level_is_error_unless_afs_twilio_min_level_says_otherwise():
    assert TwilioNotifier.default_min_level is NotificationLevel.ERROR

    def level(env):
        return ChannelPolicy.from_env(env, "twilio", default_level=TwilioNotifier.default_min_level).min_level

    assert level({}) is NotificationLevel.ERROR
    assert level({"AFS_MIN_LEVEL": "info"}) is NotificationLevel.ERROR
    assert level({"AFS_TWILIO_MIN_LEVEL": "warning"}) is NotificationLevel.WARNING


def test_secrets_never_show_in_describe_repr_or_errors():
    channel = TwilioNotifier.from_env({**BASE, "TWILIO_TO": f"{ALICE},{BOB}"})
    assert channel.describe() == "twilio to +44…1234, +15…0987 from +15…0006"
    assert_no_secret(channel.describe(), repr(channel), repr(vars(channel)), str(vars(channel)))
    assert {TOKEN, CREDENTIALS, f"Basic {CREDENTIALS}"} <= set(channel.secrets())
    assert_no_secret(scrub(f"Authorization: Basic {CREDENTIALS} token={TOKEN}", channel.secrets()))


def test_manager_registers_twilio_from_env(monkeypatch):
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"twilio"}))
    try:
        assert list(manager.channels) == ["twilio"]
    finally:
        manager.close(timeout=1)


def test_afs_status_shows_the_channel_masked_and_never_the_token():
    done = afs("status", "--json", env=BASE)
    assert done.returncode == 0, done.stderr
    row = next(r for r in json.loads(done.stdout)["channels"] if r["channel"] == "twilio")
    assert row["state"] == "configured" and row["detail"] == "twilio to +44…1234 from +15…0006"
    assert_no_secret(done.stdout, done.stderr)


def test_afs_status_says_what_is_wrong_without_quoting_the_token():
    done = afs("status", env={**BASE, "TWILIO_ACCOUNT_SID": TOKEN})
    assert done.returncode == 0, done.stderr
    assert "misconfigured" in done.stdout and "TWILIO_ACCOUNT_SID must be AC followed by 32" in done.stdout
    assert_no_secret(done.stdout, done.stderr)


def test_afs_status_names_the_settings_while_not_configured():
    done = afs("status", env={})
    assert "set TWILIO_TO, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM" in done.stdout
