"""``TelegramChannel``: sends events from a bot to one or several Telegram chats.

Rendering lives in :mod:`afs_telegram.message`; posting, deadlines and waits come
from :class:`~afs_core.channels.webhook.WebhookChannel`, and "each chat gets it
once, whatever fails" from :func:`~afs_core.channels.deliver_to_each`. This module
says what the Bot API's answers mean (its ``retry_after``, a group that became a
supergroup, a chat the bot cannot reach) and keeps the token, which sits in the URL
path, out of every log line, error and status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from afs_core.channels import (
    RateLimit,
    Setting,
    WebhookChannel,
    deliver_to_each,
    json_object,
    seconds,
    text_list,
)
from afs_core.channels.webhook import classify_status, is_loopback_host, parse_http_url, parse_retry_after
from afs_core.errors import ConfigurationError, PermanentDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import one_line
from afs_core.redaction import Secret
from afs_telegram.message import EVENT_KEY, fit, render

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

logger = logging.getLogger("afs.telegram")

DEFAULT_API = "https://api.telegram.org"
TOKEN = re.compile(r"^(\d{1,20}):([A-Za-z0-9_-]{35})$")
CHAT = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$")


def check_api_url(url: str) -> str:
    """The Bot API's base URL (no trailing slash), or a ConfigurationError that says why
    not: https on any host (a proxy, a Bot API server of your own), http only on
    loopback, since the token travels in every request's path."""
    parts = parse_http_url(url, setting="TELEGRAM_API_URL", example=DEFAULT_API)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigurationError("TELEGRAM_API_URL must use https:// (http:// only for a Bot API server on "
                                 "localhost: the bot token travels in every request)")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigurationError("TELEGRAM_API_URL must be the API's address only, "
                                 "without a login, ?query or #fragment")
    path = parts.path.rstrip("/")
    if _BOT_SEGMENT.search(_decoded(path)):
        raise ConfigurationError(_HOLDS_TOKEN)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


#: A path segment that is a bot's token, as a server reads it: ``/bot<id>:``, in any
#: case (``/BOT``), in any segment, after a ``;`` parameter or a backslash some read as ``/``.
_BOT_SEGMENT = re.compile(r"(?:^|[/\\;])bot\d+:", re.IGNORECASE)
_HOLDS_TOKEN = ("TELEGRAM_API_URL must be the API's address only, without /bot<token> "
                "(the token goes in TELEGRAM_BOT_TOKEN; the value is not shown)")


def _decoded(text: str, rounds: int = 4) -> str:
    """``text`` percent-decoded until it no longer changes (``%2562ot`` is ``%62ot`` is
    ``bot``), a few rounds at most."""
    for _ in range(rounds):
        once = urllib.parse.unquote(text)
        if once == text:
            break
        text = once
    return text


def check_chats(chats: str | Sequence[str]) -> tuple[str, ...]:
    """Chat ids (numbers, negative for groups) and ``@channel`` names, each once."""
    given = text_list(chats) if isinstance(chats, str) else [str(c).strip() for c in chats if str(c).strip()]
    if not given:
        raise ConfigurationError("TELEGRAM_CHAT_ID names no chat")
    wrong = [chat for chat in given if not CHAT.match(chat)]
    if wrong:  # shown, since a chat id is no secret; unless it looks like the bot token pasted there
        shown = ", ".join("a bot token?!" if TOKEN.match(w) else repr(one_line(w, 40)) for w in wrong)
        raise ConfigurationError(f"TELEGRAM_CHAT_ID must list chat ids (such as 123456789 or -1001234567890) "
                                 f"or @channel names, separated by commas; got {shown}")
    return tuple(dict.fromkeys(given))


class TelegramChannel(WebhookChannel):
    """Telegram Bot API channel: one ``sendMessage`` per event and chat.

    Settings: ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID`` (one or several, comma
    separated), ``TELEGRAM_API_URL`` (default https://api.telegram.org),
    ``TELEGRAM_TIMEOUT`` (seconds, a total deadline per request).
    """

    name = "telegram"
    settings = (
        Setting("TELEGRAM_BOT_TOKEN", "token", required=True, secret=True,
                help="the bot's token from @BotFather: <digits>:<35 characters>"),
        Setting("TELEGRAM_CHAT_ID", "chat_ids", parse=text_list, required=True,
                help="chat ids or @channel names, separated by commas"),
        Setting("TELEGRAM_API_URL", "api_url", configures=True,
                help="the Bot API, default https://api.telegram.org; http:// only on localhost"),
        Setting("TELEGRAM_TIMEOUT", "timeout", parse=seconds, help="seconds, a total deadline per request"),
    )
    user_agent = "afs-telegram"
    # Telegram allows about one message a second per chat (short bursts pass); a 429
    # says how long to wait, and that wait is kept for that chat alone.
    rate_limit = RateLimit(per_second=1.0, burst=3)

    def __init__(
        self,
        token: str | Secret,
        chat_ids: str | Sequence[str],
        *,
        api_url: str = DEFAULT_API,
        timeout: float | None = None,
    ) -> None:
        token_text = (token.reveal() if isinstance(token, Secret) else token or "").strip()
        shape = TOKEN.match(token_text)
        if shape is None:
            raise ConfigurationError("TELEGRAM_BOT_TOKEN does not look like a bot token: @BotFather gives "
                                     "<digits>:<35 letters, digits, _ or -> (the value is secret, so not shown)")
        self.bot_id = shape[1]
        self.token = Secret(token_text)
        self._token_key = Secret(shape[2])
        self.chat_ids = check_chats(chat_ids)
        self.api_url = check_api_url(api_url or DEFAULT_API)
        if shape[2] in _decoded(self.api_url):  # the token pasted in anywhere else, /bot or not
            raise ConfigurationError(_HOLDS_TOKEN)
        super().__init__(f"{self.api_url}/bot{token_text}/sendMessage", timeout=timeout, allow_any_host=True)
        self._moved: dict[str, str] = {}  # chat id -> the supergroup it became, learnt in this process
        self._lock = threading.Lock()
        self._sending = threading.local()

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        return render(event)

    # -- sending --------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        """Send to every chat that does not have this message yet: a chat that fails does
        not stop the others, and a retry goes only to the chats left."""
        if isinstance(message, str):  # a plugin's plain-text message
            message = {"text": message}
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a Telegram message must be a JSON object or text, "
                                         f"got {type(message).__name__}")
        key = message.get(EVENT_KEY)
        if not isinstance(key, str):  # a plugin's own payload: known by its content
            key = hashlib.sha256(json.dumps(message, sort_keys=True, default=str).encode()).hexdigest()
        payload = fit(message)
        return deliver_to_each(self, key, self.chat_ids, lambda chat: self._send(chat, payload))

    def _send(self, chat: str, payload: Mapping[str, Any]) -> str:
        with self._lock:
            target = self._moved.get(chat, chat)
        answer = self._post(target, payload)
        moved_to = _parameters(answer).get("migrate_to_chat_id")
        if answer.status == 400 and isinstance(moved_to, int) and not isinstance(moved_to, bool):
            new = str(moved_to)
            with self._lock:
                self._moved[chat] = new
            logger.warning("afs: Telegram chat %s became supergroup %s; sending there from now on in this process. "
                           "Set TELEGRAM_CHAT_ID to %s instead of %s", target, new, new, chat)
            answer = self._post(new, payload)  # once: a second move is an error like any other
        receipt: str = self.read_answer(answer)
        return receipt

    def _post(self, chat: str, payload: Mapping[str, Any]) -> HttpAnswer:
        chat_id: int | str = int(chat) if chat.lstrip("-").isdigit() else chat
        self._sending.chat = chat
        try:
            return self.post(self.webhook_url, {"chat_id": chat_id, **payload}, hold_keys=(self._hold_key(chat),))
        finally:
            self._sending.chat = None

    def _hold_key(self, chat: str) -> str:
        return f"telegram:{self.api_url}:{self.bot_id}:{chat}"

    # -- what the Bot API says ------------------------------------------------------

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        """A 429 holds the chat it was for, as long as ``parameters.retry_after`` says."""
        wait = parse_retry_after(_parameters(answer).get("retry_after"))
        if wait is None:
            wait = parse_retry_after(answer.headers.get("Retry-After"))
        chat = getattr(self._sending, "chat", None) or "?"
        return wait, self._hold_key(chat), f"{self.words(answer)}"

    def words(self, answer: HttpAnswer) -> str:
        """The Bot API's ``description`` ("Bad Request: chat not found"), or the body's start."""
        description = json_object(answer.text).get("description")
        if isinstance(description, str) and description.strip():
            return one_line(description, 300)
        return super().words(answer)

    def read_answer(self, answer: HttpAnswer) -> Any:
        body = json_object(answer.text)
        said = self.words(answer)
        if 200 <= answer.status < 300 and body.get("ok") is True:
            result = body.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return f"message {message_id}" if message_id is not None else "ok"
        if answer.status == 401:
            raise PermanentDeliveryError(f"HTTP 401: {said}: TELEGRAM_BOT_TOKEN is wrong or was revoked "
                                         "(@BotFather gives the current one)")
        if answer.status == 400 and "chat not found" in said.lower():
            raise PermanentDeliveryError(f"HTTP 400: {said}: check TELEGRAM_CHAT_ID, and that the bot is in that "
                                         "group or channel, or that the user has started a chat with it")
        if answer.status == 403:
            raise PermanentDeliveryError(f"HTTP 403: {said}: {_forbidden_hint(said)}")
        if answer.status == 404:
            raise PermanentDeliveryError(f"HTTP 404: {said}: check TELEGRAM_API_URL and TELEGRAM_BOT_TOKEN")
        error = classify_status(answer.status, said, retry_after=parse_retry_after(_parameters(answer).get(
            "retry_after")))
        raise error if error is not None else PermanentDeliveryError(f"HTTP {answer.status}: {said}")

    # -- status ---------------------------------------------------------------------

    def describe(self) -> str:
        with self._lock:
            chats = [f"{chat} (now {self._moved[chat]})" if chat in self._moved else chat for chat in self.chat_ids]
        return f"telegram {self.api_url}/bot{self.bot_id}…/sendMessage to {', '.join(chats)}"

    def secrets(self) -> Iterable[str]:
        token = self.token.reveal()
        found = [self.webhook_url, f"bot{token}", token, self._token_key.reveal()]
        return [*found, *(s for s in super(WebhookChannel, self).secrets() if s not in found)]


def _forbidden_hint(said: str) -> str:
    lowered = said.lower()
    if "blocked" in lowered:
        return "the user blocked the bot; they must unblock it, or drop the chat from TELEGRAM_CHAT_ID"
    if "kicked" in lowered or "not a member" in lowered:
        return "add the bot back to the group or channel (as an admin that may post, for a channel)"
    if "deactivated" in lowered:
        return "the user's account is gone: drop the chat from TELEGRAM_CHAT_ID"
    return "the bot may not post in this chat"


def _parameters(answer: HttpAnswer) -> dict[str, Any]:
    parameters = json_object(answer.text).get("parameters")
    return parameters if isinstance(parameters, dict) else {}
