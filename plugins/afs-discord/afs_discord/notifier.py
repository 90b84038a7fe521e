"""``DiscordNotifier``: posts events to a Discord webhook as colour-coded embeds.

Rendering and limits live in :mod:`afs_discord.embeds`; this module validates the
webhook URL, follows Discord's rate-limit headers (per webhook, and the global
pause), packs batches of embeds, and turns answers into typed delivery errors.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core import Channel, SendsDirectly, ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from afs_core.config import check_timeout, env_float, load_env
from afs_core.delivery.dispatch import Filtered, deliver_event, deliver_message, enrich_event, render_message
from afs_core.events import NotificationEvent
from afs_core.formatting import strip_control, truncate
from afs_core.redaction import redact_url, url_secrets
from afs_core.channels.webhook import MAX_RETRY_AFTER, classify_status, parse_retry_after, validate_webhook_url
from afs_discord.embeds import EMBEDS_PER_MESSAGE, EMBEDS_TOTAL, NO_MENTIONS, embed_size, fit_payload, render

if TYPE_CHECKING:
    from afs_core.channels.http import WebhookSession

DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com",
                 "ptb.discordapp.com", "canary.discordapp.com")
_WEBHOOK_PATH = re.compile(r"^/api(/v\d+)?/webhooks/\d+/[A-Za-z0-9_.-]+/?$")
DEFAULT_TIMEOUT = 10.0
UNKNOWN_WEBHOOK = 10015
_ALONE = object()


class _RateLimits:
    """What Discord's headers said: per-webhook buckets and the process-wide pause.

    A send takes its slot from the bucket before it goes out, so threads sharing a
    webhook cannot all fire into its last slot.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[int, float]] = {}  # webhook -> (remaining, resets at)
        self.global_until = 0.0

    def reserve(self, webhook: str, now: float) -> float:
        """Seconds to wait before sending (0: go now, and the slot is taken)."""
        with self.lock:
            wait = self.global_until - now
            remaining, resets_at = self.buckets.get(webhook, (1, 0.0))
            if resets_at <= now:
                remaining = max(remaining, 1)  # the window is over: at least one slot again
            if remaining <= 0:
                wait = max(wait, resets_at - now)
            if wait > 0:
                return wait
            self.buckets[webhook] = (remaining - 1, resets_at)
            return 0.0

    def learn(self, webhook: str, headers: Mapping[str, str], now: float) -> None:
        remaining = headers.get("X-RateLimit-Remaining")
        reset_after = parse_retry_after(headers.get("X-RateLimit-Reset-After"))
        if remaining is None or reset_after is None:
            return
        try:
            count = int(float(remaining))
        except ValueError:
            return
        with self.lock:
            known, known_reset = self.buckets.get(webhook, (count, 0.0))
            if known_reset > now and abs(known_reset - (now + reset_after)) < 1.0:
                count = min(count, known)  # an older answer arriving late cannot refill the bucket
            self.buckets[webhook] = (count, now + reset_after)

    def exhaust(self, webhook: str, seconds: float, now: float) -> None:
        with self.lock:
            self.buckets[webhook] = (0, now + seconds)

    def pause_everything(self, seconds: float, now: float) -> None:
        with self.lock:
            self.global_until = max(self.global_until, now + seconds)


#: Shared by every Discord channel in the process: a global 429 pauses them all.
RATE_LIMITS = _RateLimits()


def normalise_url(url: str) -> str:
    """``discordapp.com`` becomes ``discord.com``; ``wait=true`` is always asked for, so
    Discord answers with the message it stored instead of a 204 that hides drops."""
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.netloc
    if parts.hostname and parts.hostname.endswith("discordapp.com"):
        host = host.replace("discordapp.com", "discord.com")
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "wait"]
    query.append(("wait", "true"))
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, urllib.parse.urlencode(query), ""))


class DiscordNotifier(SendsDirectly, Channel):
    """Discord webhook channel.

    Settings: ``DISCORD_WEBHOOK_URL``, ``DISCORD_USERNAME``, ``DISCORD_AVATAR_URL``,
    ``DISCORD_TIMEOUT`` (seconds, a total deadline per request, waits included).
    """

    name = "discord"
    required_settings = ("DISCORD_WEBHOOK_URL",)

    def __init__(
        self,
        webhook_url: str | None = None,
        username: str | None = None,
        avatar_url: str | None = None,
        timeout: float | None = None,
        *,
        allow_any_host: bool = False,
    ) -> None:
        if webhook_url is None:
            env = load_env()
            webhook_url = env.get("DISCORD_WEBHOOK_URL", "").strip()
            if not webhook_url:
                raise ConfigurationError("DISCORD_WEBHOOK_URL is not set (in the environment or .env)")
            username = username or env.get("DISCORD_USERNAME") or None
            avatar_url = avatar_url or env.get("DISCORD_AVATAR_URL") or None
            if timeout is None:
                timeout = env_float(env, "DISCORD_TIMEOUT", DEFAULT_TIMEOUT, minimum=0.1)
        validate_webhook_url(
            webhook_url, setting="DISCORD_WEBHOOK_URL", hosts=DISCORD_HOSTS, allow_any_host=allow_any_host,
            path_check=_WEBHOOK_PATH.match, path_hint="/api/webhooks/ID/TOKEN",
        )
        if avatar_url is not None:
            validate_webhook_url(avatar_url, setting="DISCORD_AVATAR_URL", hosts=(), allow_any_host=True)
        self.webhook_url = normalise_url(webhook_url)
        self.username = username
        self.avatar_url = avatar_url
        self.timeout = DEFAULT_TIMEOUT if timeout is None else check_timeout(timeout, "DISCORD_TIMEOUT")
        path = urllib.parse.urlsplit(self.webhook_url).path
        self._bucket_key = path
        segments = [s for s in path.split("/") if s]
        # Up to ".../webhooks" is public; the id and token after it are not (all of a relay's path is).
        self._public_segments = segments.index("webhooks") + 1 if "webhooks" in segments else 0
        self._session: WebhookSession | None = None
        self._gone: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiscordNotifier | None:
        url = env.get("DISCORD_WEBHOOK_URL", "").strip()
        if not url:
            return None
        return cls(
            webhook_url=url,
            username=env.get("DISCORD_USERNAME") or None,
            avatar_url=env.get("DISCORD_AVATAR_URL") or None,
            timeout=env_float(env, "DISCORD_TIMEOUT", DEFAULT_TIMEOUT, minimum=0.1),
        )

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        payload: dict[str, Any] = {"embeds": [render(event)], "allowed_mentions": NO_MENTIONS}
        if self.username:
            payload["username"] = truncate(strip_control(self.username, keep=""), 80)
        if self.avatar_url:
            payload["avatar_url"] = self.avatar_url
        return fit_payload(payload)

    # -- sending --------------------------------------------------------------------

    def deliver(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a Discord message must be a JSON object, got {type(message).__name__}")
        if self._gone is not None:  # Discord said this webhook no longer exists: stop calling it
            raise PermanentDeliveryError(self._gone)
        payload = fit_payload(message)
        deadline = time.monotonic() + self.timeout
        self._wait_for_rate_limit(deadline)
        if self._session is None:
            from afs_core.channels.http import WebhookSession  # requests loads on first send only

            self._session = WebhookSession(user_agent="afs-discord", secrets=self.secrets())
        remaining = max(deadline - time.monotonic(), 0.1)
        answer = self._session.post_json(self.webhook_url, payload, timeout=remaining)
        now = time.monotonic()
        RATE_LIMITS.learn(self._bucket_key, answer.headers, now)
        body = _json_object(answer.text)
        if answer.status == 429:
            retry_after = parse_retry_after(body.get("retry_after"))
            if retry_after is None:
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            wait = 1.0 if retry_after is None else retry_after
            if body.get("global") is True:
                RATE_LIMITS.pause_everything(wait, now)
            else:
                RATE_LIMITS.exhaust(self._bucket_key, wait, now)
            raise TransientDeliveryError("HTTP 429: rate limited" + (" (global)" if body.get("global") else ""),
                                         retry_after=retry_after)
        said = _discord_words(body, answer.text)
        if answer.status == 404 and body.get("code") == UNKNOWN_WEBHOOK:
            self._gone = "HTTP 404: Unknown Webhook (deleted in Discord? create a new one)"
            raise PermanentDeliveryError(self._gone)
        error = classify_status(answer.status, said, retry_after=parse_retry_after(answer.headers.get("Retry-After")))
        if error is not None:
            raise error
        return body

    def _wait_for_rate_limit(self, deadline: float) -> None:
        """Sleep until a slot is free, if that fits the deadline; else report the wait.
        Asked again after each sleep: a global pause may have begun meanwhile."""
        while True:
            now = time.monotonic()
            wait = RATE_LIMITS.reserve(self._bucket_key, now)
            if wait <= 0:
                return
            if now + wait >= deadline:
                raise TransientDeliveryError(f"rate limited for {wait:.2f} s more", retry_after=min(wait, MAX_RETRY_AFTER))
            time.sleep(wait)

    def send_batch(self, events: Iterable[NotificationEvent]) -> int:
        """Send events packed up to 10 embeds and 6000 characters a request; returns
        how many were delivered."""
        from afs_core.plugins import get_plugins

        plugins = get_plugins()
        delivered = 0
        for message, group in self._pack(plugins, events):
            if message is _ALONE:  # its formatter failed: send alone so the failure is reported
                outcome = deliver_event(plugins, self.name, self, group[0])
            else:
                outcome = deliver_message(plugins, self.name, self, message, group)
            if outcome.delivered:
                delivered += len(group)
        return delivered

    def _pack(self, plugins: Any, events: Iterable[NotificationEvent]) -> list[tuple[Any, list[NotificationEvent]]]:
        messages: list[tuple[Any, list[NotificationEvent]]] = []
        open_payload: dict[str, Any] | None = None
        for event in events:
            if not isinstance(event, NotificationEvent):
                continue
            try:
                message = render_message(plugins, self, enrich_event(plugins, event))
            except Filtered:
                continue
            except Exception:
                messages.append((_ALONE, [event]))
                open_payload = None
                continue
            embeds = message.get("embeds") if isinstance(message, Mapping) else None
            batchable = (
                isinstance(embeds, list) and len(embeds) == 1 and isinstance(embeds[0], Mapping)
                and set(message) <= {"embeds", "allowed_mentions", "username", "avatar_url"}
            )
            if not batchable:
                messages.append((message, [event]))  # a custom payload travels on its own
                open_payload = None
                continue
            size = embed_size(embeds[0])
            if (
                open_payload is not None
                and len(open_payload["embeds"]) < EMBEDS_PER_MESSAGE
                and open_payload["_size"] + size <= EMBEDS_TOTAL
            ):
                open_payload["embeds"].append(embeds[0])
                open_payload["_size"] += size
                messages[-1][1].append(event)
                continue
            open_payload = {**message, "embeds": [embeds[0]], "_size": size}
            messages.append((open_payload, [event]))
        for payload, _ in messages:
            if isinstance(payload, dict):
                payload.pop("_size", None)
        return messages

    # -- status -----------------------------------------------------------------------

    def describe(self) -> str:
        return "discord " + redact_url(self.webhook_url, keep_path_segments=self._public_segments)

    def secrets(self) -> Iterable[str]:
        return url_secrets(self.webhook_url, public_segments=self._public_segments)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def _json_object(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _discord_words(body: Mapping[str, Any], text: str) -> str:
    """Discord's own explanation: ``message (code N)``, or the start of the body."""
    if body.get("message"):
        said = str(body["message"]) + (f" (code {body['code']})" if "code" in body else "")
    else:
        said = text.strip() or "no body"
    return truncate(strip_control(said, keep=""), 300)
