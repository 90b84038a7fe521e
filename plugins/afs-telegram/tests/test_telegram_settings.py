"""Reading and checking the Telegram settings: token, chats, API address, timeout."""

import pytest

from afs_core import NotificationManager
from afs_core.errors import ConfigurationError
from afs_core.plugins import PluginHost
from afs_core.redaction import scrub
from afs_telegram import TelegramChannel

TOKEN = "7012345678:AAHfq3-Secret_Part0123456789abcdefX"
KEY = TOKEN.split(":")[1]


def test_entry_point_offers_the_telegram_channel():
    spec = PluginHost(allow={"afs-telegram"}, strict=True).channels["telegram"]
    assert spec.channel_class is TelegramChannel and spec.distribution == "afs-telegram"


def test_without_its_settings_the_channel_is_simply_not_configured():
    assert TelegramChannel.from_env({}) is None
    assert TelegramChannel.required_settings == ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TELEGRAM_CHAT_ID": "42"}, "TELEGRAM_BOT_TOKEN is not set"),
        ({"TELEGRAM_BOT_TOKEN": TOKEN}, "TELEGRAM_CHAT_ID is not set"),
        ({"TELEGRAM_API_URL": "https://tg.example.com"},
         "TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID are missing, but TELEGRAM_API_URL is set"),
    ],
)
def test_half_a_configuration_is_an_error_not_silence(env, says):
    with pytest.raises(ConfigurationError, match=says) as caught:
        TelegramChannel.from_env(env)
    assert KEY not in str(caught.value)


def test_from_env_reads_every_setting():
    channel = TelegramChannel.from_env({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": " -1001234567890, @afs_runs,42,42 ",
                                        "TELEGRAM_API_URL": "https://tg.example.com/api/", "TELEGRAM_TIMEOUT": "4"})
    assert channel.chat_ids == ("-1001234567890", "@afs_runs", "42")  # each once, in order
    assert (channel.api_url, channel.timeout, channel.bot_id) == ("https://tg.example.com/api", 4.0, "7012345678")
    assert channel.webhook_url == f"https://tg.example.com/api/bot{TOKEN}/sendMessage"
    assert TelegramChannel.from_env({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "1"}).api_url == "https://api.telegram.org"


@pytest.mark.parametrize(
    "token",
    [
        "7012345678:" + "A" * 34,
        "7012345678:" + "A" * 36,
        "70123x5678:" + "A" * 35,
        ":" + "A" * 35,
        "7012345678" + "A" * 35,
        "7012345678:" + "A" * 34 + "!",
        "bot7012345678:" + "A" * 35,
        "7012345678: " + "A" * 35,
    ],
)
def test_a_token_of_the_wrong_shape_is_refused_at_from_env_without_showing_it(token):
    with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN does not look like a bot token") as caught:
        TelegramChannel.from_env({"TELEGRAM_BOT_TOKEN": token, "TELEGRAM_CHAT_ID": "42"})
    assert "A" * 20 not in str(caught.value)


@pytest.mark.parametrize(
    ("chats", "says"),
    [
        ("@abc", "'@abc'"),  # channel names have 5 to 32 characters
        ("my group", "'my group'"),
        ("https://t.me/afs_runs", "'https://t.me/afs_runs'"),
        ("42, -12x", "'-12x'"),
        (",", "names no chat"),
        (TOKEN, "a bot token?!"),
    ],
)
def test_wrong_chat_ids_are_named(chats, says):
    with pytest.raises(ConfigurationError, match="TELEGRAM_CHAT_ID") as caught:
        TelegramChannel(TOKEN, chats)
    assert says in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://api.telegram.org/", "https://api.telegram.org"),
        ("https://tg-proxy.example.com:8443/telegram", "https://tg-proxy.example.com:8443/telegram"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),  # a local Bot API server
        ("http://localhost:8081/", "http://localhost:8081"),
    ],
)
def test_api_addresses_that_are_accepted(url, base):
    assert TelegramChannel(TOKEN, "42", api_url=url).api_url == base


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://api.telegram.org", "must use https://"),
        ("http://192.168.1.5:8081", "must use https://"),  # the token would cross the network in clear
        (f"https://api.telegram.org/bot{TOKEN}", "without /bot<token>"),
        (f"https://api.telegram.org/bot{TOKEN}/sendMessage", "without /bot<token>"),
        # Read by a server the same way: in any case, percent-encoded, in any segment.
        (f"https://api.telegram.org/BOT{TOKEN}", "without /bot<token>"),
        (f"https://api.telegram.org/Bot{TOKEN}/sendMessage", "without /bot<token>"),
        (f"https://api.telegram.org/%62ot{TOKEN}", "without /bot<token>"),
        (f"https://api.telegram.org/%42%4F%54{TOKEN}", "without /bot<token>"),
        (f"https://api.telegram.org/%2562ot{TOKEN}", "without /bot<token>"),  # encoded twice
        (f"https://api.telegram.org/bot{TOKEN.replace(':', '%3A')}", "without /bot<token>"),
        (f"https://tg-proxy.example.com/telegram/BOT{TOKEN}", "without /bot<token>"),
        (f"https://tg-proxy.example.com/telegram%2Fbot{TOKEN}", "without /bot<token>"),
        (f"https://tg-proxy.example.com/telegram/{TOKEN}", "without /bot<token>"),  # the token without /bot
        (f"https://tg-proxy.example.com/telegram/{TOKEN.replace('-', '%2D').replace('_', '%5F')}",
         "without /bot<token>"),
        ("https://u:p@tg.example.com", "without a login"),
        ("https://tg.example.com/?x=1", "without a login, ?query"),
        ("api.telegram.org", "must start with https://"),
    ],
)
def test_api_addresses_that_are_refused(url, says):
    with pytest.raises(ConfigurationError, match="TELEGRAM_API_URL") as caught:
        TelegramChannel(TOKEN, "42", api_url=url)
    assert says in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan", "1e10", "soon"])
def test_timeouts_must_be_sensible(bad):
    with pytest.raises(ConfigurationError, match="TELEGRAM_TIMEOUT"):
        TelegramChannel.from_env({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "42", "TELEGRAM_TIMEOUT": bad})


def test_describe_and_repr_show_the_bot_but_never_its_token():
    channel = TelegramChannel.from_env({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "42,@afs_runs"})
    assert channel.describe() == "telegram https://api.telegram.org/bot7012345678…/sendMessage to 42, @afs_runs"
    own = {k: v for k, v in vars(channel).items() if k != "webhook_url"}  # WebhookChannel keeps its URL plain
    for shown in (repr(channel), own):
        assert KEY not in str(shown)


def test_the_token_is_masked_wherever_the_url_or_path_is_quoted():
    channel = TelegramChannel(TOKEN, "42")
    for line in (f"POST /bot{TOKEN}/sendMessage HTTP/1.1", f"https://api.telegram.org/bot{TOKEN}/sendMessage",
                 f"token {TOKEN}", f"key {KEY}"):
        assert KEY not in scrub(line, channel.secrets())
    assert scrub(f"POST /bot{TOKEN}/sendMessage", channel.secrets()) == "POST /***/sendMessage"


def test_the_manager_registers_telegram_from_env(monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "42")
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"telegram"}))
    assert list(manager.channels) == ["telegram"]
    manager.close(timeout=1)


def test_a_proxy_path_that_merely_starts_with_bot_is_fine():
    assert TelegramChannel(TOKEN, "42", api_url="https://proxy.example.com/botapi").api_url == "https://proxy.example.com/botapi"
    assert TelegramChannel(TOKEN, "42", api_url="https://proxy.example.com/BotApi/v2").api_url == (
        "https://proxy.example.com/BotApi/v2")


OTHER_BOT = "123:" + "x" * 35  # any bot's token, not this channel's: the address must hold none


@pytest.mark.parametrize("path", [f"/BOT{OTHER_BOT}", f"/%62ot{OTHER_BOT}", f"/%62OT{OTHER_BOT}",
                                  f"/telegram/%42ot{OTHER_BOT}/sendMessage", f"/telegram;bOt{OTHER_BOT}"])
def test_check_api_url_refuses_a_token_path_in_any_case_or_encoding(path):
    from afs_telegram.channel import check_api_url

    with pytest.raises(ConfigurationError, match="without /bot<token>") as caught:
        check_api_url(f"https://tg-proxy.example.com{path}")
    assert "x" * 35 not in str(caught.value)
