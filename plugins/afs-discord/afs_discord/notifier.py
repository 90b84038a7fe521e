"""``DiscordNotifier``: posts events to a Discord webhook as embeds.

This release registers the channel and reads its settings; posting to Discord
(embeds, limits, mention safety, rate limits) comes next, so ``deliver`` fails
with a permanent, clearly worded error until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from afs_core import Channel, PermanentDeliveryError
from afs_core.config import env_float, load_env
from afs_core.redaction import redact_url, url_secrets


class DiscordNotifier(Channel):
    """Discord webhook channel. Settings: ``DISCORD_WEBHOOK_URL``, ``DISCORD_USERNAME``,
    ``DISCORD_AVATAR_URL``."""

    name = "discord"

    def __init__(
        self,
        webhook_url: str | None = None,
        username: str | None = None,
        avatar_url: str | None = None,
        timeout: float | None = None,
    ) -> None:
        settings: Mapping[str, str] = load_env() if webhook_url is None else {}
        self.webhook_url = webhook_url or settings.get("DISCORD_WEBHOOK_URL") or None
        self.username = username or settings.get("DISCORD_USERNAME") or None
        self.avatar_url = avatar_url or settings.get("DISCORD_AVATAR_URL") or None
        self.timeout = float(timeout) if timeout is not None else env_float(settings, "DISCORD_TIMEOUT", 10.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiscordNotifier | None:
        if not env.get("DISCORD_WEBHOOK_URL", "").strip():
            return None
        return cls(
            webhook_url=env["DISCORD_WEBHOOK_URL"].strip(),
            username=env.get("DISCORD_USERNAME") or None,
            avatar_url=env.get("DISCORD_AVATAR_URL") or None,
            timeout=env_float(env, "DISCORD_TIMEOUT", 10.0),
        )

    def is_configured(self) -> bool:
        return self.webhook_url is not None

    def deliver(self, message: Any) -> None:
        raise PermanentDeliveryError("afs-discord 0.1.0 cannot post to Discord yet; delivery is not built")

    def describe(self) -> str:
        if not self.webhook_url:
            return "discord (not configured)"
        return "discord " + redact_url(self.webhook_url, keep_path_segments=2)

    def secrets(self) -> Iterable[str]:
        # /api/webhooks is public; the id and token after it are not.
        return url_secrets(self.webhook_url, public_segments=2) if self.webhook_url else []
