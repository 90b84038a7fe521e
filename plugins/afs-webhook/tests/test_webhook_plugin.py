"""The ``webhook`` channel's entry point and settings: what is accepted, what is refused
(clearly, without quoting a secret), and how a configured channel shows itself."""

import base64
import json
import os
import subprocess
import sys

import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_webhook import WebhookNotifier
from afs_webhook.endpoints import looks_like_token

URL = "https://hooks.example.com/afs/pathT0KENxyz?key=qT0KENabc"


def _env(kit, **extra):
    return {"WEBHOOK_URL": URL, "WEBHOOK_SECRET": kit.SECRET, **extra}


def test_entry_point_offers_the_webhook_channel():
    spec = PluginHost(allow={"afs-webhook"}, strict=True).channels["webhook"]
    assert spec.channel_class is WebhookNotifier and spec.distribution == "afs-webhook"


def test_from_env_reads_every_setting(kit):
    channel = WebhookNotifier.from_env(_env(
        kit, WEBHOOK_URL=f"{URL}, https://second.example:8443/in ,", WEBHOOK_TIMEOUT="4",
        WEBHOOK_HEADERS=json.dumps({"Authorization": f"Bearer {kit.AUTH_TOKEN}", "X-Team": "ml"})))
    assert [e.url for e in channel.endpoints] == [URL, "https://second.example:8443/in"]
    assert channel.timeout == 4.0
    assert [(name, value.reveal()) for name, value in channel.headers] == [
        ("Authorization", f"Bearer {kit.AUTH_TOKEN}"), ("X-Team", "ml")]


def test_not_configured_until_the_url_and_secret_are_set(kit):
    assert WebhookNotifier.from_env({}) is None
    with pytest.raises(ConfigurationError, match="^WEBHOOK_SECRET is not set$"):
        WebhookNotifier.from_env({"WEBHOOK_URL": URL})
    with pytest.raises(ConfigurationError, match="^WEBHOOK_URL is not set$"):
        WebhookNotifier.from_env({"WEBHOOK_SECRET": kit.SECRET})


def test_no_arguments_reads_the_same_settings(monkeypatch, kit):
    monkeypatch.setenv("WEBHOOK_URL", URL)
    monkeypatch.setenv("WEBHOOK_SECRET", kit.SECRET)
    assert WebhookNotifier().endpoints[0].url == URL


def test_a_missing_secret_in_code_says_how_to_make_one():
    with pytest.raises(ConfigurationError, match="new_secret"):
        WebhookNotifier(URL, "")


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_", "has nothing after 'whsec_'"),
        ("whsec_Zm9v*YmFy#secretpart", "standard base64"),
        ("whsec_c2VjcmV0-_c2VjcmV0c2VjcmV0", "standard base64"),  # the URL-safe alphabet
        ("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=A", "standard base64"),  # padding in the middle
        ("whsec_QUJDREVGR", "standard base64"),  # a length no base64 has (4n + 1)
        ("whsec_" + base64.b64encode(b"short key").decode(), "too short"),
    ],
)
def test_a_malformed_secret_is_refused_at_from_env_without_being_quoted(kit, secret, words):
    with pytest.raises(ConfigurationError, match=words) as caught:
        WebhookNotifier.from_env(_env(kit, WEBHOOK_SECRET=secret))
    message = str(caught.value)
    assert message.startswith("WEBHOOK_SECRET ")
    assert secret[len("whsec_"):] not in message or secret == "whsec_"


@pytest.mark.parametrize(
    ("urls", "words"),
    [
        ("http://hooks.example.com/afs/pathT0KENxyz", r"^WEBHOOK_URL must use https:// \(host 'hooks.example.com'\)"),
        ("ftp://hooks.example.com/pathT0KENxyz", "^WEBHOOK_URL must start with https://"),
        ("https:///pathT0KENxyz", "^WEBHOOK_URL must start with https:// and name a host"),
        ("https://user:pathT0KENxyz@hooks.example.com/in", "holds a user name or password"),
        ("https://hooks.example.com:99999/pathT0KENxyz", "^WEBHOOK_URL is not a valid URL"),
        (f"{URL},http://second.example/pathT0KENxyz", r"^WEBHOOK_URL \(URL 2\) must use https://"),
        (f"{URL},{URL}", r"lists the same URL twice \(URL 1 and URL 2\)"),
        (" , ", "^WEBHOOK_URL names no URL"),
    ],
)
def test_every_url_is_checked_at_from_env_and_named_by_position_and_host_only(kit, urls, words):
    with pytest.raises(ConfigurationError, match=words) as caught:
        WebhookNotifier.from_env(_env(kit, WEBHOOK_URL=urls))
    kit.assert_no_secret(caught.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/in", "http://localhost/in", "http://[::1]:8080/in",
                                 "https://hooks.example.com", "https://10.0.0.5/in?x=1"])
def test_https_anywhere_and_plain_http_on_loopback_are_accepted(kit, url):
    assert WebhookNotifier(url, kit.SECRET).endpoints[0].url == url


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ("{not json", "WEBHOOK_HEADERS is not valid JSON"),
        ('["Authorization", "Bearer authT0KENdef"]', "must be a JSON object of header names to values, got list"),
        ('{"webhook-signature": "v1,authT0KENdef"}', "may not set 'webhook-signature'"),
        ('{"Content-Type": "text/plain"}', "may not set 'Content-Type'"),
        ('{"Bad Name": "authT0KENdef"}', "a header name HTTP does not allow"),
        # The value written into the name: the name is never quoted, the fix is said.
        ('{"Authorization: Bearer authT0KENdef": ""}', "contains ':' or a space; write the value as the JSON value"),
        ('{"Bearer authT0KENdef": "x"}', "contains ':' or a space"),
        ('{"authT0KENdef/x": "1"}', r"may only hold letters, digits and .*\(the name is not shown"),
        ('{"": "authT0KENdef"}', "a header name HTTP does not allow: it is empty"),
        ("[" * 100_000, "WEBHOOK_HEADERS is nested too deeply to be read"),
        ('{"X-Token": 123}', "the value of 'X-Token' must be a string, got int"),
        ('{"X-Token": "authT0KENdef\\r\\nX-Evil: 1"}', "the value of 'X-Token' must be ASCII text on one line"),
        ('{"X-Token": "authT0KENdéf"}', "must be ASCII text on one line"),
        ('{"X-Token": "a", "x-token": "authT0KENdef"}', "sets 'x-token' twice"),
    ],
)
def test_bad_extra_headers_are_refused_naming_the_header_never_its_value(kit, headers, words):
    with pytest.raises(ConfigurationError, match=words) as caught:
        WebhookNotifier.from_env(_env(kit, WEBHOOK_HEADERS=headers))
    kit.assert_no_secret(caught.value)


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "soon", "99999"])
def test_timeouts_must_be_sensible(kit, bad):
    with pytest.raises(ConfigurationError, match="WEBHOOK_TIMEOUT"):
        WebhookNotifier.from_env(_env(kit, WEBHOOK_TIMEOUT=bad))


def test_describe_and_repr_show_scheme_and_host_only(kit):
    channel = WebhookNotifier.from_env(_env(kit, WEBHOOK_URL=f"{URL},https://second.example:8443/x/y",
                                            WEBHOOK_HEADERS=json.dumps({"Authorization": f"Bearer {kit.AUTH_TOKEN}"})))
    assert channel.describe() == "webhook https://hooks.example.com, https://second.example:8443"
    assert repr(channel) == "<WebhookNotifier webhook https://hooks.example.com, https://second.example:8443>"
    kit.assert_no_secret(channel.describe(), repr(channel), repr(channel.endpoints), repr(channel.headers),
                         repr(channel.secret))


def test_urls_that_look_alike_are_told_apart_by_position(kit):
    channel = WebhookNotifier("https://a.example/x/one,https://a.example/x/two,http://[::1]:8080,https://b.example",
                              kit.SECRET)
    assert [e.label for e in channel.endpoints] == [
        "https://a.example/… (URL 1)", "https://a.example/… (URL 2)", "http://[::1]:8080", "https://b.example"]
    assert channel.describe() == "webhook https://a.example, https://a.example, http://[::1]:8080, https://b.example"
    assert len({e.key for e in channel.endpoints}) == 4


def test_the_url_tokens_the_secret_and_every_header_value_are_declared_secret(kit):
    channel = WebhookNotifier.from_env(_env(kit, WEBHOOK_HEADERS=json.dumps(
        {"Authorization": f"Bearer {kit.AUTH_TOKEN}", "X-Team": "ml-platform"})))
    secrets = set(channel.secrets())
    assert {kit.SECRET, kit.SECRET[6:], kit.PATH_TOKEN, "key=" + kit.QUERY_TOKEN, kit.QUERY_TOKEN, f"Bearer {kit.AUTH_TOKEN}",
            kit.AUTH_TOKEN, "ml-platform", URL} <= secrets


@pytest.mark.parametrize(
    ("segment", "token"),
    [("pathT0KENxyz", True), ("3f9c0a1b", True), ("a" * 20, True), ("T0KEN12", False), ("in", False),
     ("events", False), ("hooks", False), ("v1", False), ("webhooks-incoming", False)],
)
def test_a_path_segment_is_a_token_with_8_characters_and_a_digit_or_20_characters(segment, token):
    assert looks_like_token(segment) is token


def test_a_token_anywhere_in_the_path_is_secret_but_ordinary_words_are_not(kit):
    channel = WebhookNotifier(f"https://a.example/hooks/{kit.PATH_TOKEN}/events?key={kit.QUERY_TOKEN},"
                              "https://b.example/in,https://c.example/v1/" + "x" * 24, kit.SECRET)
    secrets = set(channel.secrets())
    assert {kit.PATH_TOKEN, f"hooks/{kit.PATH_TOKEN}/events", f"/hooks/{kit.PATH_TOKEN}/events", kit.QUERY_TOKEN,
            "x" * 24} <= secrets
    assert not {"hooks", "events", "in", "/in", "v1"} & secrets
    assert scrub("Starting new HTTP connection: POST /in: no such hook events", channel.secrets()) == (
        "Starting new HTTP connection: POST /in: no such hook events")


def test_the_manager_registers_the_channel_from_env(monkeypatch, kit):
    monkeypatch.setenv("WEBHOOK_URL", URL)
    monkeypatch.setenv("WEBHOOK_SECRET", kit.SECRET)
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"webhook"}))
    try:
        assert list(manager.handlers) == ["webhook"]
    finally:
        manager.close(timeout=1)


def test_afs_status_names_what_is_missing_shows_the_host_and_never_a_secret(afs_cli, kit):
    missing = afs_cli("status", env={"AFS_LOAD_PLUGINS": "webhook"})
    assert missing.returncode == 0, missing.stderr
    assert "webhook    not configured  set WEBHOOK_URL, WEBHOOK_SECRET" in missing.stdout
    configured = afs_cli("status", env={"AFS_LOAD_PLUGINS": "webhook", **_env(
        kit, WEBHOOK_HEADERS=json.dumps({"Authorization": f"Bearer {kit.AUTH_TOKEN}"}))})
    assert "webhook    configured      webhook https://hooks.example.com" in configured.stdout, configured.stdout
    wrong = afs_cli("status", env={"AFS_LOAD_PLUGINS": "webhook", **_env(kit, WEBHOOK_SECRET=kit.SECRET[6:])})
    assert "webhook    misconfigured   WEBHOOK_SECRET must start with 'whsec_'" in wrong.stdout, wrong.stdout
    kit.assert_no_secret(missing.stdout + missing.stderr, configured.stdout + configured.stderr,
                         wrong.stdout + wrong.stderr)


def test_a_sender_does_not_load_what_only_a_receiver_needs(kit, tmp_path):
    """Start-up to the first notify() with the channel configured, as a training script
    runs it (a courier delivers): neither the schema file's reader (importlib.resources,
    and the tempfile, shutil and compressors it brings), for receivers calling
    load_schema(), nor the socket module is loaded; nor hashing (the courier signs, and derives
    the URLs' keys) or attrs."""
    probe = ("import json, sys\n"
             "from afs_core import NotificationManager\n"
             "manager = NotificationManager.from_env()\n"
             "manager.notify('probe', 'probe')\n"
             "print(json.dumps([type(manager._engine).__name__, sorted(sys.modules)]), flush=True)\n"
             "manager.close(0.1)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFS_", "WEBHOOK_"))}
    env.update(AFS_HOME=str(tmp_path / "afs"), AFS_LOAD_PLUGINS="webhook", AFS_FLUSH_TIMEOUT="0.1",
               WEBHOOK_URL="http://127.0.0.1:9/hook", WEBHOOK_SECRET=kit.SECRET)
    for _ in range(2):  # the first reads the entry points (importlib.metadata loads socket) and keeps them
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    engine, modules = json.loads(done.stdout.splitlines()[0])
    assert engine == "CourierLink" and "afs_webhook.notifier" in modules  # the probe really made the channel
    assert not set(modules) & {"importlib.resources", "tempfile", "shutil", "lzma", "bz2", "socket", "selectors",
                               "subprocess", "hashlib", "hmac", "attrs", "attr"}
