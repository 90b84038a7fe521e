from afs_core.redaction import redact_url, scrub, url_secrets


def test_scrub_masks_every_secret_even_short_ones():
    assert scrub("login as bob with xyz failed", ["xyz"]) == "login as bob with *** failed"
    assert scrub("token abc123", ["", "abc123", "abc"]) == "token ***"


def test_url_secrets_cover_the_path_an_http_library_quotes():
    url = "https://hooks.slack.com/services/T000/B000/sekr1tTOKEN"
    error = "HTTPSConnectionPool: Max retries exceeded with url: /services/T000/B000/sekr1tTOKEN"
    assert "sekr1tTOKEN" not in scrub(error, url_secrets(url))
    assert "sekr1tTOKEN" not in scrub("token sekr1tTOKEN rejected", url_secrets(url))


def test_redact_url_keeps_only_what_identifies_the_service():
    assert redact_url("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/services/***"
    assert redact_url("https://user:pw@discord.com/api/webhooks/1/t?wait=true", 2) == "https://discord.com/api/webhooks/***"
    assert redact_url("https://h.example:99999/x/y") == "https://h.example/x/***"


def test_secret_hides_in_reprs_and_dumps():
    import pickle

    import pytest

    from afs_core.redaction import Secret

    secret = Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r} {vars(type('X', (), {'p': secret}))}"
    assert secret.reveal() == "hunter2" and bool(secret) and not Secret("")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_each_query_value_is_a_secret_since_a_service_may_echo_it_alone():
    found = url_secrets("https://hooks.example/in?key=tok-123456&v=2")
    assert "key=tok-123456&v=2" in found and "tok-123456" in found
    assert "2" not in found  # too short to mask without masking every digit of every message


def test_a_channels_secret_settings_stay_hidden_in_its_attributes():
    from afs_core import Channel, Setting

    class Paged(Channel):
        settings = (Setting("PAGED_TOKEN", "token", required=True, secret=True),)

        def __init__(self, token):
            self._hash = hash(token)

    channel = Paged.from_env({"PAGED_TOKEN": "hunter2-token"})
    assert "hunter2-token" not in repr(vars(channel))
    assert list(channel.secrets()) == ["hunter2-token"]  # still known as a secret


def test_a_short_last_path_segment_is_not_masked_alone():
    found = url_secrets("https://relay.example/in", public_segments=0)
    assert found == ["https://relay.example/in"]  # the URL as a whole still is
    assert "abcdef" in url_secrets("https://relay.example/hook/abcdef", public_segments=1)
