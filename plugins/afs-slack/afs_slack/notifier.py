"""``SlackNotifier``: posts events to a Slack incoming webhook.

Rendering lives in :mod:`afs_slack.blocks`; posting, deadlines, Slack's 429 and
the meaning of its answers come from :class:`~afs_core.channels.webhook.WebhookChannel`.
"""

from __future__ import annotations

import re
from typing import Any

from afs_core import RateLimit, SendsDirectly
from afs_core.channels import Setting, WebhookChannel, seconds
from afs_core.events import NotificationEvent

SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")


class SlackNotifier(SendsDirectly, WebhookChannel):
    """Slack incoming-webhook channel.

    Settings: ``SLACK_WEBHOOK_URL``, ``SLACK_CHANNEL`` (honoured only by legacy
    custom-integration webhooks; app webhooks post where they were installed),
    ``SLACK_TIMEOUT`` (seconds, a total deadline per request).
    """

    name = "slack"
    settings = (
        Setting("SLACK_WEBHOOK_URL", "webhook_url", required=True, secret=True),
        Setting("SLACK_CHANNEL", "channel"),
        Setting("SLACK_TIMEOUT", "timeout", parse=seconds),
    )
    hosts = SLACK_HOSTS
    url_path = re.compile(r"^/services/")
    url_hint = "https://hooks.slack.com/services/..."
    loopback_any_path = True
    user_agent = "afs-slack"
    rate_limit = RateLimit(per_second=1.0, burst=3)  # Slack: about one message a second per webhook

    def __init__(
        self,
        webhook_url: str | None = None,
        channel: str | None = None,
        timeout: float | None = None,
        *,
        allow_any_host: bool = False,
    ) -> None:
        if webhook_url is None:  # SlackNotifier(), as before: from .env and the environment
            given = self.settings_from_env({"channel": channel, "timeout": timeout})
            webhook_url, channel, timeout = given["webhook_url"], given.get("channel"), given.get("timeout")
        super().__init__(webhook_url, timeout=timeout, allow_any_host=allow_any_host)
        self.channel = channel or None

    def public_segments(self, path: str) -> int:
        # Only "/services" is public on Slack's own URLs; elsewhere the whole path may be the token.
        return 1 if path.startswith("/services/") else 0

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        from afs_slack.blocks import render

        return render(event, channel=self.channel)

    def describe(self) -> str:
        return super().describe() + (f" {self.channel}" if self.channel else "")
