"""``NtfyChannel``: publishes events to an ntfy topic, on ntfy.sh or a server of your own.

Rendering lives in :mod:`afs_ntfy.message`; posting, deadlines and 429 holds come
from :class:`~afs_core.channels.webhook.WebhookChannel`. This module says which
servers may be reached how, how to log in, and what ntfy's answers mean.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core.channels import RateLimit, Setting, WebhookChannel, json_object, seconds
from afs_core.channels.webhook import is_loopback_host, parse_http_url
from afs_core.errors import ConfigurationError, PermanentDeliveryError
from afs_core.events import NotificationEvent
from afs_core.formatting import one_line
from afs_core.redaction import Secret
from afs_ntfy.message import fit, render

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

DEFAULT_SERVER = "https://ntfy.sh"
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Plain http is accepted on these (and on loopback): the traffic stays inside the
# user's own network, where a self-hosted ntfy often has no certificate.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT, as Tailscale uses it
    "169.254.0.0/16", "fc00::/7", "fe80::/10",  # link-local; IPv6 unique local
))
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")


def is_private_address(host: str) -> bool:
    """Whether ``host`` is an IP address of a private network (names are not resolved:
    where a name points can change after it was checked)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in PRIVATE_NETWORKS if network.version == address.version)


def check_server(url: str) -> str:
    """The server's base URL (no trailing slash), or a ConfigurationError that says why not.

    https on any host; http only on loopback and private network addresses. No
    credentials in the URL, and no topic: publishing as JSON goes to the server root.
    """
    parts = parse_http_url(url, setting="NTFY_URL", names="the server", example=DEFAULT_SERVER)
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("NTFY_URL must not hold a user or password: set NTFY_USER and NTFY_PASSWORD, "
                                 "or NTFY_TOKEN")
    if parts.query or parts.fragment:
        raise ConfigurationError("NTFY_URL must be the server's address only, without ?query or #fragment")
    if parts.scheme == "http" and not (is_loopback_host(host) or is_private_address(host)):
        raise ConfigurationError(
            "NTFY_URL must use https:// (plain http:// is accepted only for localhost and private network "
            "addresses such as 192.168.1.10, since the topic and any login would cross the internet in clear)")
    path = parts.path.rstrip("/")
    if path and host == "ntfy.sh":
        raise ConfigurationError("NTFY_URL must be https://ntfy.sh without a path: put the topic in NTFY_TOPIC")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class NtfyChannel(WebhookChannel):
    """ntfy channel: one push notification per event.

    Settings: ``NTFY_URL`` (default https://ntfy.sh), ``NTFY_TOPIC``, ``NTFY_TOKEN`` or
    ``NTFY_USER`` and ``NTFY_PASSWORD``, ``NTFY_TIMEOUT`` (seconds, a total deadline
    per request). The topic counts as a secret: on a public server, whoever knows it
    can read every message.
    """

    name = "ntfy"
    settings = (
        Setting("NTFY_URL", "server", configures=True,
                help="the ntfy server, default https://ntfy.sh; http:// only for localhost and private addresses"),
        Setting("NTFY_TOPIC", "topic", required=True, secret=True,
                help="the topic name: 1 to 64 letters, digits, '_' or '-'"),
        Setting("NTFY_TOKEN", "token", secret=True, configures=True, help="an access token (tk_...), sent as Bearer"),
        Setting("NTFY_USER", "user", configures=True, help="user for basic auth, with NTFY_PASSWORD"),
        Setting("NTFY_PASSWORD", "password", secret=True, configures=True, help="password for basic auth"),
        Setting("NTFY_TIMEOUT", "timeout", parse=seconds, help="seconds, a total deadline per request"),
    )
    user_agent = "afs-ntfy"
    # ntfy.sh's default allowance per client: a burst of 60 requests, then one every 5 s.
    rate_limit = RateLimit(per_second=0.2, burst=60)

    def __init__(
        self,
        topic: str | Secret,
        server: str = DEFAULT_SERVER,
        *,
        token: str | Secret | None = None,
        user: str | None = None,
        password: str | Secret | None = None,
        timeout: float | None = None,
    ) -> None:
        self.topic = Secret(_check_topic(_reveal(topic)))
        base = check_server(server or DEFAULT_SERVER)
        token_text, password_text = _reveal(token).strip(), _reveal(password)
        if token_text and (user or password_text):
            raise ConfigurationError("set NTFY_TOKEN or NTFY_USER and NTFY_PASSWORD, not both")
        if bool(user) != bool(password_text):
            raise ConfigurationError("NTFY_USER and NTFY_PASSWORD go together: set both, or NTFY_TOKEN instead")
        if token_text and not _HEADER_SAFE.match(token_text):
            raise ConfigurationError("NTFY_TOKEN has spaces or characters an HTTP header cannot carry "
                                     "(the value is secret, so not shown)")
        if user and ":" in user:
            raise ConfigurationError("NTFY_USER must not contain ':'")
        if base.rsplit("/", 1)[-1] == self.topic.reveal() and urllib.parse.urlsplit(base).path:
            raise ConfigurationError("NTFY_URL ends with the topic: set NTFY_URL to the server's address only")
        super().__init__(base + "/", timeout=timeout, allow_any_host=True)
        self.server = base
        self.token = Secret(token_text) if token_text else None
        self.user = user or None
        self.password = Secret(password_text) if password_text else None
        self._authorization: Secret | None = None
        if self.token is not None:
            self._authorization = Secret(f"Bearer {token_text}")
        elif self.user and self.password is not None:
            pair = f"{self.user}:{password_text}".encode()
            self._authorization = Secret(f"Basic {base64.b64encode(pair).decode('ascii')}")

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        return render(event)

    # -- sending --------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        if isinstance(message, str):  # a plugin's plain-text message
            message = {"message": message}
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"an ntfy message must be a JSON object or text, got {type(message).__name__}")
        payload = {**fit(message), "topic": self.topic.reveal()}  # always the configured topic
        headers = {"Authorization": self._authorization.reveal()} if self._authorization is not None else None
        return self.read_answer(self.post(self.webhook_url, payload, headers=headers))

    # -- what ntfy says -------------------------------------------------------------

    def words(self, answer: HttpAnswer) -> str:
        """ntfy's error JSON as ``forbidden (code 40301)``, or the start of the body."""
        body = json_object(answer.text)
        if body.get("error"):
            code = f" (code {body['code']})" if isinstance(body.get("code"), int) else ""
            return one_line(f"{body['error']}{code}", 300)
        return super().words(answer)

    def read_answer(self, answer: HttpAnswer) -> Any:
        if answer.status in (401, 403):
            raise PermanentDeliveryError(f"HTTP {answer.status}: {self.words(answer)}: {self._refused()}")
        if answer.status == 404:  # ntfy publishes at its root: a path in NTFY_URL is not ntfy's
            raise PermanentDeliveryError(f"HTTP 404: {self.words(answer)}: is NTFY_URL the ntfy server's address?")
        said = super().read_answer(answer)  # 408, 429 and 5xx transient; other 4xx permanent
        message_id = json_object(answer.text).get("id")
        return f"message {message_id}" if isinstance(message_id, str) else said

    def _refused(self) -> str:
        if self.token is not None:
            return "NTFY_TOKEN was refused: it is wrong or expired, or its user may not publish to this topic"
        if self.user is not None:
            return (f"NTFY_USER {self.user!r} was refused: the password is wrong, "
                    "or the user may not publish to this topic")
        return "this topic needs a login: set NTFY_TOKEN (or NTFY_USER and NTFY_PASSWORD) of a user who may publish"

    # -- status ---------------------------------------------------------------------

    def describe(self) -> str:
        if self.token is not None:
            login = "token"
        elif self.user is not None:
            login = f"user {self.user}"
        else:
            login = "no login"
        return f"ntfy {self.server} topic *** ({login})"

    def secrets(self) -> Iterable[str]:
        found = [value.reveal() for value in (self.topic, self.token, self.password, self._authorization)
                 if value is not None]
        if self._authorization is not None and self.token is None:
            found.append(self._authorization.reveal().split(" ", 1)[1])  # the base64 of user:password
        return [*found, *(s for s in super(WebhookChannel, self).secrets() if s not in found)]


def _reveal(value: str | Secret | None) -> str:
    if isinstance(value, Secret):
        return value.reveal()
    return value or ""


def _check_topic(topic: str) -> str:
    topic = topic.strip()
    if not topic:
        raise ConfigurationError("NTFY_TOPIC is empty")
    if TOPIC.match(topic):
        return topic
    if "/" in topic or ":" in topic:
        raise ConfigurationError("NTFY_TOPIC must be the topic's name only, not a URL (the server goes in NTFY_URL)")
    problem = f"it has {len(topic)} characters" if len(topic) > 64 else "it has a character that is not allowed"
    raise ConfigurationError(f"NTFY_TOPIC must be 1 to 64 letters, digits, '_' or '-'; {problem} "
                             "(the value is secret, so not shown)")
