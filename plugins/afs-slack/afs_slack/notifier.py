"""``SlackNotifier``: posts events to a Slack incoming webhook.

This release registers the channel and reads its settings; posting to Slack
(Block Kit rendering, escaping, limits, retries) is the next step, so ``deliver``
fails with a permanent, clearly worded error until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from afs_core import Channel, PermanentDeliveryError
from afs_core.config import env_float, load_env
from afs_core.redaction import redact_url, url_secrets


class SlackNotifier(Channel):
    """Slack incoming-webhook channel. Settings: ``SLACK_WEBHOOK_URL``, ``SLACK_CHANNEL``."""

    name = "slack"

    def __init__(
        self,
        webhook_url: str | None = None,
        channel: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if webhook_url is None:
            env = load_env()
            webhook_url = env.get("SLACK_WEBHOOK_URL") or None
            channel = channel or env.get("SLACK_CHANNEL") or None
            timeout = timeout if timeout is not None else env_float(env, "SLACK_TIMEOUT", 10.0)
        self.webhook_url = webhook_url
        self.channel = channel
        self.timeout = 10.0 if timeout is None else float(timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SlackNotifier | None:
        url = env.get("SLACK_WEBHOOK_URL", "").strip()
        if not url:
            return None
        return cls(
            webhook_url=url,
            channel=env.get("SLACK_CHANNEL") or None,
            timeout=env_float(env, "SLACK_TIMEOUT", 10.0),
        )

    def is_configured(self) -> bool:
        return bool(self.webhook_url)

    def deliver(self, message: Any) -> None:
        raise PermanentDeliveryError("afs-slack 0.1.0 cannot post to Slack yet; delivery is not built")

    def describe(self) -> str:
        target = redact_url(self.webhook_url, keep_path_segments=1) if self.webhook_url else "not configured"
        return f"slack {target}" + (f" {self.channel}" if self.channel else "")

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.webhook_url, public_segments=1) if self.webhook_url else []
