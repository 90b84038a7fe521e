"""``DiscordNotifier``: posts events to a Discord webhook as colour-coded embeds.

Rendering and limits live in :mod:`afs_discord.embeds`; posting and deadlines come
from :class:`~afs_core.channels.webhook.WebhookChannel`. This module says what
Discord's answers mean: its rate-limit headers and fractional, possibly global
429s, its error words, a deleted webhook; it packs batches of embeds, and sends a
message with a picture (the loss curve) as multipart/form-data.
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core import PermanentDeliveryError, SendsDirectly
from afs_core.channels import HOLDS, Setting, WebhookChannel, json_object, seconds
from afs_core.channels.webhook import encode_json, parse_retry_after, validate_webhook_url
from afs_core.errors import NotSent
from afs_core.events import NotificationEvent
from afs_core.formatting import loss_curve, one_line
from afs_core.plots import FILE_NAME, loss_curve_png
from afs_discord.embeds import (
    EMBEDS_PER_MESSAGE,
    EMBEDS_TOTAL,
    NO_MENTIONS,
    FittedPayload,
    embed_size,
    fit_payload,
    render,
)

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com",
                 "ptb.discordapp.com", "canary.discordapp.com")
_WEBHOOK_PATH = re.compile(r"^/api(/v\d+)?/webhooks/\d+/[A-Za-z0-9_.-]+/?$")
UNKNOWN_WEBHOOK = 10015
GLOBAL_HOLD = "discord:global"  # a global 429 holds every Discord webhook of the process


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


class DiscordNotifier(SendsDirectly, WebhookChannel):
    """Discord webhook channel.

    Settings: ``DISCORD_WEBHOOK_URL``, ``DISCORD_USERNAME``, ``DISCORD_AVATAR_URL``,
    ``DISCORD_TIMEOUT`` (seconds, a total deadline per request, waits included).
    """

    name = "discord"
    settings = (
        Setting("DISCORD_WEBHOOK_URL", "webhook_url", required=True, secret=True),
        Setting("DISCORD_USERNAME", "username"),
        Setting("DISCORD_AVATAR_URL", "avatar_url"),
        Setting("DISCORD_TIMEOUT", "timeout", parse=seconds),
    )
    hosts = DISCORD_HOSTS
    url_path = _WEBHOOK_PATH
    url_hint = "/api/webhooks/ID/TOKEN"
    user_agent = "afs-discord"

    def __init__(
        self,
        webhook_url: str | None = None,
        username: str | None = None,
        avatar_url: str | None = None,
        timeout: float | None = None,
        *,
        allow_any_host: bool = False,
    ) -> None:
        if webhook_url is None:  # DiscordNotifier(), as before: from .env and the environment
            given = self.settings_from_env({"username": username, "avatar_url": avatar_url, "timeout": timeout})
            webhook_url, username, avatar_url = given["webhook_url"], given.get("username"), given.get("avatar_url")
            timeout = given.get("timeout")
        super().__init__(webhook_url, timeout=timeout, allow_any_host=allow_any_host)
        if avatar_url is not None:
            validate_webhook_url(avatar_url, setting="DISCORD_AVATAR_URL", hosts=(), allow_any_host=True)
        self.username = username or None
        self.avatar_url = avatar_url or None
        self._bucket = urllib.parse.urlsplit(self.webhook_url).path
        self._gone: str | None = None

    def normalise_url(self, url: str) -> str:
        return normalise_url(url)

    def public_segments(self, path: str) -> int:
        # Up to ".../webhooks" is public; the id and token after it are not (all of a relay's path is).
        segments = [s for s in path.split("/") if s]
        return segments.index("webhooks") + 1 if "webhooks" in segments else 0

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        # The loss curve as a picture in the embed where matplotlib is installed; else a line of text.
        picture = loss_curve_png(loss_curve(event), title=event.title)
        image = FILE_NAME if picture is not None else None
        payload: dict[str, Any] = {"embeds": [render(event, image=image)], "allowed_mentions": NO_MENTIONS}
        if self.username:
            payload["username"] = one_line(self.username, 80)
        if self.avatar_url:
            payload["avatar_url"] = self.avatar_url
        if picture is not None:
            payload["attachments"] = [{"id": 0, "filename": FILE_NAME, "description": "Loss curve"}]
        fitted = fit_payload(payload)
        if picture is not None:
            fitted.files = ((FILE_NAME, "image/png", picture),)
        return fitted

    # -- what Discord says ----------------------------------------------------------

    def hold_keys(self) -> tuple[str, ...]:
        return (self._bucket, GLOBAL_HOLD)

    def learn(self, answer: HttpAnswer) -> None:
        """How many sends the webhook's bucket has left, and for how long: an empty
        bucket is waited for instead of provoking a 429."""
        remaining = answer.headers.get("X-RateLimit-Remaining")
        reset_after = parse_retry_after(answer.headers.get("X-RateLimit-Reset-After"))
        if remaining is None or reset_after is None:
            return
        try:
            HOLDS.limit(self._bucket, int(float(remaining)), reset_after)
        except ValueError:
            pass

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        body = json_object(answer.text)
        wait = parse_retry_after(body.get("retry_after"))  # fractional seconds, unlike the header
        if wait is None:
            wait = parse_retry_after(answer.headers.get("Retry-After"))
        if body.get("global") is True:  # every webhook of this process waits
            return wait, GLOBAL_HOLD, "rate limited (global)"
        return wait, self._bucket, "rate limited"

    def words(self, answer: HttpAnswer) -> str:
        return self.quote(_discord_words(json_object(answer.text), answer.text), 300)

    def read_answer(self, answer: HttpAnswer) -> Any:
        body = json_object(answer.text)
        if answer.status == 404 and body.get("code") == UNKNOWN_WEBHOOK:
            self._gone = "HTTP 404: Unknown Webhook (deleted in Discord? create a new one)"
            raise PermanentDeliveryError(self._gone)
        super().read_answer(answer)
        return body

    def deliver(self, message: Any) -> Any:
        if self._gone is not None:  # Discord said this webhook no longer exists: stop calling it
            raise PermanentDeliveryError(self._gone)
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a Discord message must be a JSON object, got {type(message).__name__}")
        payload = fit_payload(message)
        if not isinstance(payload, FittedPayload) or not payload.files:
            return super().deliver(payload)
        body, content_type = form_data(payload, payload.files)
        return self.read_answer(self.post(self.webhook_url, body=body, headers={"Content-Type": content_type}))

    # -- batches --------------------------------------------------------------------

    batch_size = 30  # the engine hands over up to this many due messages at once
    #: A batch's requests, one after another, within three timeouts (three requests of
    #: ten embeds): a claim's lease is made for that, not for thirty requests.
    batch_timeouts = 3

    def deliver_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Several messages packed up to 10 embeds and 6000 characters a request; each
        message gets the result of the request that carried it. A request that could
        end past the batch's time (``batch_timeouts`` timeouts: waits for Discord's
        rate limits, slow answers) is not sent; its messages go with the next batch."""
        results: list[Any] = [None] * len(messages)
        ends = time.monotonic() + self.batch_timeouts * self.timeout
        for payload, carried in _pack(messages):
            receipt: Any
            if time.monotonic() + self.timeout > ends:
                receipt = NotSent("not sent: the batch's time ran out before its turn")
            else:
                try:
                    receipt = self.deliver(payload)
                except Exception as exc:  # classified by the core, as from deliver()
                    receipt = exc
            for index in carried:
                results[index] = receipt
        return results


def _pack(messages: Sequence[Any]) -> list[tuple[Any, list[int]]]:
    """(payload, indexes of the messages it carries): single-embed messages that look
    alike share a request; anything else (a custom payload, text) travels alone."""
    packed: list[tuple[Any, list[int]]] = []
    open_payload: dict[str, Any] | None = None
    size = 0
    for index, message in enumerate(messages):
        embeds = message.get("embeds") if isinstance(message, Mapping) else None
        batchable = (
            isinstance(embeds, list) and len(embeds) == 1 and isinstance(embeds[0], Mapping)
            and set(message) <= {"embeds", "allowed_mentions", "username", "avatar_url"}
        )
        if not batchable:
            packed.append((message, [index]))
            open_payload = None
            continue
        embed_chars = embed_size(embeds[0])
        same_sender = open_payload is not None and all(
            open_payload.get(key) == message.get(key) for key in ("username", "avatar_url"))
        if (open_payload is not None and same_sender and len(open_payload["embeds"]) < EMBEDS_PER_MESSAGE
                and size + embed_chars <= EMBEDS_TOTAL):
            open_payload["embeds"].append(embeds[0])
            size += embed_chars
            packed[-1][1].append(index)
            continue
        open_payload = {**message, "embeds": [embeds[0]]}
        size = embed_chars
        packed.append((open_payload, [index]))
    return packed


def form_data(payload: Mapping[str, Any], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """The multipart/form-data body of a message with files, and its Content-Type, as
    Discord's docs ask: the JSON as ``payload_json``, file ``n`` as ``files[n]`` (its
    ``attachments`` entry has ``id`` n)."""
    boundary = f"afs-{os.urandom(16).hex()}"  # 128 random bits: no file will hold it by chance
    parts = [(b'name="payload_json"', "application/json", encode_json(payload))]
    for index, (name, content_type, data) in enumerate(files):
        parts.append((f'name="files[{index}]"; filename="{name}"'.encode("ascii"), content_type, data))
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; %s\r\nContent-Type: %s\r\n\r\n%s\r\n"
        % (boundary.encode("ascii"), disposition, content_type.encode("ascii"), data)
        for disposition, content_type, data in parts
    )
    return body + b"--%s--\r\n" % boundary.encode("ascii"), f"multipart/form-data; boundary={boundary}"


def _discord_words(body: Mapping[str, Any], text: str) -> str:
    """Discord's own explanation: ``message (code N)``, or the body."""
    if body.get("message"):
        said = str(body["message"]) + (f" (code {body['code']})" if "code" in body else "")
    else:
        said = text.strip() or "no body"
    return said
