"""``SlackNotifier``: posts events to a Slack incoming webhook.

Rendering lives in :mod:`afs_slack.blocks`; this module validates the settings,
posts within a total deadline over one reused connection, and turns Slack's
answers into typed delivery errors.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core import Channel, SendsDirectly, ConfigurationError, TransientDeliveryError
from afs_core.config import check_timeout, env_float, load_env
from afs_core.events import NotificationEvent
from afs_core.formatting import strip_control, truncate
from afs_core.channels.base import RateLimit
from afs_core.redaction import redact_url, url_secrets
from afs_core.channels.webhook import classify_status, is_loopback_host, parse_retry_after, validate_webhook_url

if TYPE_CHECKING:
    from afs_core.channels.http import WebhookSession

SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
DEFAULT_TIMEOUT = 10.0


def _on_loopback(url: str) -> bool:
    """Tests and local relays may use any path."""
    return is_loopback_host(urllib.parse.urlsplit(url.strip()).hostname)


class SlackNotifier(SendsDirectly, Channel):
    """Slack incoming-webhook channel.

    Settings: ``SLACK_WEBHOOK_URL``, ``SLACK_CHANNEL`` (honoured only by legacy
    custom-integration webhooks; app webhooks post where they were installed),
    ``SLACK_TIMEOUT`` (seconds, a total deadline per request).
    """

    name = "slack"
    required_settings = ("SLACK_WEBHOOK_URL",)
    rate_limit = RateLimit(per_second=1.0, burst=3)  # Slack: about one message a second per webhook

    def __init__(
        self,
        webhook_url: str | None = None,
        channel: str | None = None,
        timeout: float | None = None,
        *,
        allow_any_host: bool = False,
    ) -> None:
        if webhook_url is None:
            env = load_env()
            webhook_url = env.get("SLACK_WEBHOOK_URL", "").strip()
            if not webhook_url:
                raise ConfigurationError("SLACK_WEBHOOK_URL is not set (in the environment or .env)")
            channel = channel or env.get("SLACK_CHANNEL") or None
            if timeout is None:
                timeout = env_float(env, "SLACK_TIMEOUT", DEFAULT_TIMEOUT, minimum=0.1)
        parts = validate_webhook_url(
            webhook_url, setting="SLACK_WEBHOOK_URL", hosts=SLACK_HOSTS, allow_any_host=allow_any_host,
            path_check=lambda path: path.startswith("/services/") or _on_loopback(webhook_url),
            path_hint="https://hooks.slack.com/services/...",
        )
        self.webhook_url = webhook_url.strip()
        self.channel = channel
        self.timeout = DEFAULT_TIMEOUT if timeout is None else check_timeout(timeout, "SLACK_TIMEOUT")
        # Only "/services" is public on Slack's own URLs; elsewhere the whole path may be the token.
        self._public_segments = 1 if parts.path.startswith("/services/") else 0
        self._session: WebhookSession | None = None
        self._held_until = 0.0  # after a 429, nothing is posted before this (monotonic)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SlackNotifier | None:
        url = env.get("SLACK_WEBHOOK_URL", "").strip()
        if not url:
            return None
        return cls(
            webhook_url=url,
            channel=env.get("SLACK_CHANNEL") or None,
            timeout=env_float(env, "SLACK_TIMEOUT", DEFAULT_TIMEOUT, minimum=0.1),
        )

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        from afs_slack.blocks import render

        return render(event, channel=self.channel)

    def deliver(self, message: Any) -> str:
        held = self._held_until - time.monotonic()
        if held > 0:
            # Slack asked us to wait: posting anyway risks having the app disabled.
            raise TransientDeliveryError(f"Slack asked to wait {held:.1f} s more", retry_after=held)
        if self._session is None:
            from afs_core.channels.http import WebhookSession  # requests loads on first send only

            self._session = WebhookSession(user_agent="afs-slack", secrets=self.secrets())
        answer = self._session.post_json(self.webhook_url, message, timeout=self.timeout)
        # Slack says what went wrong in the body ("invalid_blocks", "channel_is_archived").
        said = truncate(strip_control(answer.text.strip(), keep=""), 200) or "no body"
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        if answer.status == 429:
            self._held_until = time.monotonic() + (retry_after if retry_after is not None else 1.0)
        error = classify_status(answer.status, said, retry_after=retry_after)
        if error is not None:
            raise error
        return said

    def describe(self) -> str:
        target = redact_url(self.webhook_url, keep_path_segments=self._public_segments)
        return f"slack {target}" + (f" {self.channel}" if self.channel else "")

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.webhook_url, public_segments=self._public_segments)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
