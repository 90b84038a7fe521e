"""Webhook helpers every HTTP channel shares: URL checks, Retry-After, status rules."""

import email.utils

import pytest

from afs_core import PermanentDeliveryError, TransientDeliveryError
from afs_core.channels.webhook import (
    classify_status,
    encode_json,
    is_loopback_host,
    parse_retry_after,
    validate_webhook_url,
)
from afs_core.errors import ConfigurationError


def check(url, **options):
    return validate_webhook_url(url, setting="X_URL", hosts=("hooks.example.com",), **options)


def test_service_host_over_https_is_accepted():
    assert check("https://hooks.example.com/a/b").hostname == "hooks.example.com"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "https://[::1]/y", "http://127.5.6.7/z"])
def test_loopback_is_accepted_over_http(url):
    assert check(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "must be a webhook URL"),
        ("ftp://hooks.example.com/x", "must start with https://"),
        ("http://hooks.example.com/x", "must use https://"),
        ("https://other.example.com/x", "must point at hooks.example.com"),
        ("https://hooks.example.com:70000/x", "not a valid URL"),
    ],
)
def test_wrong_urls_get_a_configuration_error_without_the_url(url, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        check(url)
    assert "/x" not in str(info.value)


def test_any_host_needs_the_opt_out_and_paths_are_checked():
    assert check("http://relay.internal/x", allow_any_host=True)
    with pytest.raises(ConfigurationError, match="wrong path; expected /api/"):
        check("https://hooks.example.com/nope", path_check=lambda p: p.startswith("/api/"), path_hint="/api/...")


def test_loopback_detection():
    assert is_loopback_host("LOCALHOST") and is_loopback_host("::1") and not is_loopback_host("10.0.0.1")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.35", 0.35), (None, None), ("soon", None), ("-5", 0.0), ("86400", 3600.0), ("nan", None)],
)
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date():
    assert parse_retry_after(email.utils.formatdate(1_000_030, usegmt=True), now=1_000_000) == 30.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, None), (204, None), (400, PermanentDeliveryError), (404, PermanentDeliveryError),
     (408, TransientDeliveryError), (429, TransientDeliveryError), (500, TransientDeliveryError),
     (302, PermanentDeliveryError)],
)
def test_status_classification(status, kind):
    error = classify_status(status, "said", retry_after=1.5)
    if kind is None:
        assert error is None
    else:
        redirect = " (a redirect, not followed)" if 300 <= status < 400 else ""
        assert type(error) is kind and str(error) == f"HTTP {status}: said{redirect}"


def test_strict_json_refuses_nan():
    assert encode_json({"a": "é"}) == '{"a": "é"}'.encode()
    with pytest.raises(PermanentDeliveryError):
        encode_json({"a": float("nan")})
