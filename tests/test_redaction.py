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
