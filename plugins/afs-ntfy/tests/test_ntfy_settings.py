"""Reading and checking the ntfy settings: server, topic, login, timeout."""

import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_ntfy import NtfyChannel

TOPIC = "afs_TopicSecret-7q"
TOKEN = "tk_T0kenSecretValue0123456789ab"
USER, PASSWORD = "alice", "pässw0rd-Secret"


def test_entry_point_offers_the_ntfy_channel():
    spec = PluginHost(allow={"afs-ntfy"}, strict=True).channels["ntfy"]
    assert spec.channel_class is NtfyChannel and spec.distribution == "afs-ntfy"


def test_without_a_topic_the_channel_is_simply_not_configured():
    assert NtfyChannel.from_env({}) is None
    assert NtfyChannel.required_settings == ("NTFY_TOPIC",)


@pytest.mark.parametrize("given", ["NTFY_URL", "NTFY_TOKEN", "NTFY_USER", "NTFY_PASSWORD"])
def test_any_login_or_server_without_a_topic_is_an_error_not_silence(given):
    with pytest.raises(ConfigurationError, match=f"NTFY_TOPIC is missing, but {given} is set"):
        NtfyChannel.from_env({given: "https://ntfy.example.com" if given == "NTFY_URL" else "x"})


def test_from_env_reads_every_setting_with_ntfy_sh_as_the_default_server():
    channel = NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_TOKEN": TOKEN, "NTFY_TIMEOUT": "4"})
    assert (channel.server, channel.webhook_url, channel.timeout) == ("https://ntfy.sh", "https://ntfy.sh/", 4.0)
    basic = NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_URL": "https://ntfy.example.com/",
                                  "NTFY_USER": USER, "NTFY_PASSWORD": PASSWORD})
    assert basic.server == "https://ntfy.example.com" and basic.user == USER
    assert basic._authorization.reveal() == "Basic YWxpY2U6cMOkc3N3MHJkLVNlY3JldA=="  # UTF-8, as ntfy reads it


@pytest.mark.parametrize("topic", ["a", "x" * 64, "my-alerts_2", "ABC-def_123"])
def test_good_topics(topic):
    assert NtfyChannel.from_env({"NTFY_TOPIC": topic}).topic.reveal() == topic


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("x" * 65, "it has 65 characters"),
        ("my alerts", "a character that is not allowed"),
        ("alerts!", "a character that is not allowed"),
        ("tópico", "a character that is not allowed"),
        ("https://ntfy.sh/alerts", "not a URL"),
        ("ntfy.sh/alerts", "not a URL"),
    ],
)
def test_bad_topics_are_refused_at_from_env_without_quoting_them(topic, says):
    with pytest.raises(ConfigurationError, match="NTFY_TOPIC") as caught:
        NtfyChannel.from_env({"NTFY_TOPIC": topic})
    assert says in str(caught.value) and topic not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://ntfy.sh", "https://ntfy.sh"),
        ("https://ntfy.example.com:8443/", "https://ntfy.example.com:8443"),
        ("https://proxy.example.com/ntfy/", "https://proxy.example.com/ntfy"),  # behind a path-prefix proxy
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost", "http://localhost"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://192.168.1.10:8080", "http://192.168.1.10:8080"),
        ("http://10.0.0.7", "http://10.0.0.7"),
        ("http://172.20.0.2", "http://172.20.0.2"),
        ("http://100.101.102.103", "http://100.101.102.103"),  # Tailscale
        ("http://[fd12:3456::1]", "http://[fd12:3456::1]"),
    ],
)
def test_servers_that_are_accepted(url, base):
    assert NtfyChannel(TOPIC, url).server == base


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://ntfy.example.com", "must use https://"),
        ("http://ntfy.sh", "must use https://"),
        ("http://8.8.8.8", "must use https://"),
        ("http://172.32.0.1", "must use https://"),  # just outside 172.16.0.0/12
        ("http://nas.lan:8080", "must use https://"),  # names are not resolved
        ("https://alice:hunter2@ntfy.example.com", "must not hold a user or password"),
        ("https://ntfy.sh/alerts", "put the topic in NTFY_TOPIC"),
        ("https://ntfy.example.com/?auth=abc", "without ?query"),
        ("ftp://ntfy.example.com", "must start with https://"),
        ("ntfy.sh", "must start with https://"),
        ("https://ntfy.example.com:99999", "not a valid URL"),
    ],
)
def test_servers_that_are_refused(url, says):
    with pytest.raises(ConfigurationError, match="NTFY_URL") as caught:
        NtfyChannel(TOPIC, url)
    assert says in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_server_address_that_ends_with_the_topic_is_refused():
    with pytest.raises(ConfigurationError, match="NTFY_URL ends with the topic") as caught:
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_URL": f"https://ntfy.example.com/{TOPIC}"})
    assert TOPIC not in str(caught.value)


def test_token_and_basic_login_are_one_or_the_other():
    with pytest.raises(ConfigurationError, match="not both"):
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_TOKEN": TOKEN, "NTFY_USER": USER, "NTFY_PASSWORD": PASSWORD})
    with pytest.raises(ConfigurationError, match="go together"):
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_USER": USER})
    with pytest.raises(ConfigurationError, match="go together"):
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_PASSWORD": PASSWORD})
    with pytest.raises(ConfigurationError, match="NTFY_USER must not contain ':'"):
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_USER": "a:b", "NTFY_PASSWORD": PASSWORD})


def test_a_token_a_header_cannot_carry_is_refused_without_showing_it():
    with pytest.raises(ConfigurationError, match="NTFY_TOKEN has spaces") as caught:
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_TOKEN": "tk_abc\r\nX-Evil: 1"})
    assert "tk_abc" not in str(caught.value)


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "1e10", "soon"])
def test_timeouts_must_be_sensible(bad):
    with pytest.raises(ConfigurationError, match="NTFY_TIMEOUT"):
        NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_TIMEOUT": bad})


def test_no_secret_in_describe_repr_or_vars(no_secret):
    token = NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_TOKEN": TOKEN})
    basic = NtfyChannel.from_env({"NTFY_TOPIC": TOPIC, "NTFY_USER": USER, "NTFY_PASSWORD": PASSWORD})
    assert token.describe() == "ntfy https://ntfy.sh topic *** (token)"
    assert basic.describe() == "ntfy https://ntfy.sh topic *** (user alice)"
    no_secret(repr(token), repr(basic), vars(token), vars(basic))


def test_every_secret_is_declared_so_the_core_masks_it(creds, no_secret):
    basic = NtfyChannel(TOPIC, "https://ntfy.sh", user=USER, password=PASSWORD)
    token = NtfyChannel(TOPIC, "https://ntfy.sh", token=TOKEN)
    line = f"POST / topic={TOPIC} Authorization: Bearer {TOKEN} / {creds.BASIC}"
    no_secret(scrub(line, [*basic.secrets(), *token.secrets()]))
    assert set(creds.SECRETS) <= set(basic.secrets()) | set(token.secrets())


def test_the_manager_registers_ntfy_from_env(monkeypatch):
    monkeypatch.setenv("NTFY_TOPIC", TOPIC)
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"ntfy"}))
    assert list(manager.channels) == ["ntfy"]
    manager.close(timeout=1)


def test_a_wrong_setting_stops_from_env_with_the_channel_named(monkeypatch):
    monkeypatch.setenv("NTFY_TOPIC", TOPIC)
    monkeypatch.setenv("NTFY_URL", "http://ntfy.example.com")
    with pytest.raises(ConfigurationError, match="^ntfy channel: NTFY_URL must use https://"):
        NotificationManager.from_env(plugins=PluginHost(allow={"ntfy"}))
