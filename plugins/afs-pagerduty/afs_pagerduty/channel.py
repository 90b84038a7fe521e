"""``PagerDutyChannel``: pages on a run's trouble, resolves the page when the run recovers.

Triggers go to the Events API v2 under a dedup key per run and kind of trouble
(:mod:`afs_pagerduty.keys`), so repeats fold into one incident; the keys PagerDuty
accepted are kept in the channel's memory (:mod:`afs_pagerduty.incidents`), and a
completed or resumed run, or a GPU back to normal, resolves them, even from another
process. Posting, deadlines and 429s come from
:class:`~afs_core.channels.webhook.WebhookChannel`; this module says what
PagerDuty's answers mean.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from afs_core.channels import Setting, WebhookChannel, deliver_to_each, json_object, read_settings, seconds
from afs_core.channels.webhook import classify_status, is_loopback_host, parse_retry_after, validate_webhook_url
from afs_core.errors import (
    ConfigurationError,
    DeliveryError,
    NothingToSend,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.formatting import one_line
from afs_core.redaction import Secret, scrub
from afs_pagerduty import keys, payload
from afs_pagerduty.incidents import ANY_GPU, OPEN, IncidentBook, RecentRecoveries

if TYPE_CHECKING:
    from afs_core.channels.http import HttpAnswer

US_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_HOSTS = ("events.pagerduty.com", "events.eu.pagerduty.com")
_ENQUEUE_PATH = re.compile(r"^/v2/enqueue/?$")
_ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
_ROUTING_KEY_WORDS = re.compile(r"routing[ _-]?key|integration key|service key", re.IGNORECASE)
_KEY_HELP = "the Integration Key of an Events API v2 integration on the service (32 letters and digits)"


def _routing_key(value: object) -> str:
    """The routing key, checked without ever quoting it."""
    if not isinstance(value, str):
        raise ConfigurationError(f"PAGERDUTY_ROUTING_KEY must be {_KEY_HELP}, got {type(value).__name__}")
    key = value.strip()
    if not _ROUTING_KEY.match(key):
        what = f"{len(key)} characters" if len(key) != 32 else "characters other than letters and digits"
        raise ConfigurationError(f"PAGERDUTY_ROUTING_KEY must be {_KEY_HELP}; got {what} "
                                 "(the value is secret, so not shown)")
    return key


def _events_url(value: object) -> str:
    """The Events API endpoint: PagerDuty's US or EU one over https, or a loopback test server."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("PAGERDUTY_EVENTS_URL must be a URL, e.g. " + US_EVENTS_URL)
    url = value.strip()
    try:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError as exc:
        raise ConfigurationError(f"PAGERDUTY_EVENTS_URL is not a valid URL ({exc})") from None
    loopback = is_loopback_host(host)
    if host and not loopback and host not in PAGERDUTY_HOSTS:
        raise ConfigurationError(f"PAGERDUTY_EVENTS_URL must point at {' or '.join(PAGERDUTY_HOSTS)} "
                                 f"(got host {one_line(host, 100)!r})")
    validate_webhook_url(url, setting="PAGERDUTY_EVENTS_URL", hosts=PAGERDUTY_HOSTS,
                         path_check=lambda path: loopback or _ENQUEUE_PATH.match(path) is not None,
                         path_hint="/v2/enqueue")
    return url


def _policy_level(env: Mapping[str, str]) -> NotificationLevel:
    """The least level the core's policy lets through to this channel, read from the
    same settings (``AFS_PAGERDUTY_MIN_LEVEL``, ``AFS_MIN_LEVEL``, ERROR by default)."""
    from afs_core.delivery.policy import ChannelPolicy

    return ChannelPolicy.from_env(env, "pagerduty", default_level=PagerDutyChannel.default_min_level).min_level


def _is_cli_test(event: NotificationEvent) -> bool:
    """The event ``afs test`` sends (a completed run named afs-test, tagged test)."""
    return event.run_id == "afs-test" and event.model_name == "afs-test" and "test" in event.tags


class PagerDutyChannel(WebhookChannel):
    """PagerDuty Events API v2 channel: one incident per run and kind of trouble,
    resolved when the run completes, resumes or its GPU recovers.

    Settings: ``PAGERDUTY_ROUTING_KEY`` (secret), ``PAGERDUTY_EVENTS_URL`` (default the
    US endpoint; the EU one or a loopback server), ``PAGERDUTY_TIMEOUT`` (seconds, a
    total deadline per request). Only ERROR and CRITICAL page unless
    ``AFS_PAGERDUTY_MIN_LEVEL`` says otherwise.
    """

    name = "pagerduty"
    settings = (
        Setting("PAGERDUTY_ROUTING_KEY", "routing_key", required=True, secret=True,
                help="Integration Key of an Events API v2 integration"),
        Setting("PAGERDUTY_EVENTS_URL", "events_url", configures=True,
                help=f"Events API endpoint (default {US_EVENTS_URL}; EU: https://events.eu.pagerduty.com/v2/enqueue)"),
        Setting("PAGERDUTY_TIMEOUT", "timeout", parse=seconds, help="seconds per request, waits included"),
    )
    hosts = PAGERDUTY_HOSTS
    url_path = _ENQUEUE_PATH
    url_hint = "/v2/enqueue"
    loopback_any_path = True
    user_agent = "afs-pagerduty"
    default_min_level = NotificationLevel.ERROR
    # Recoveries are SUCCESS or INFO: let through below ERROR, they resolve what was paged.
    wanted_below_level = keys.RECOVERY_TYPES | keys.GPU_TYPES | keys.STALL_RECOVERY_TYPES

    def __init__(
        self,
        routing_key: str,
        events_url: str = US_EVENTS_URL,
        timeout: float | None = None,
        *,
        min_level: NotificationLevel | str | None = None,
    ) -> None:
        key = _routing_key(routing_key)
        super().__init__(_events_url(events_url), timeout=timeout)
        self.routing_key = Secret(key)
        if min_level is None:
            self.min_level = _policy_level(os.environ)
        else:
            self.min_level = NotificationLevel(min_level)
        self._hold_key = "pagerduty:" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self._recovered = RecentRecoveries()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PagerDutyChannel | None:
        values = read_settings(cls.settings, env)
        if values is None:
            return None
        return cls(**values, min_level=_policy_level(env))

    @property
    def incidents(self) -> IncidentBook:
        """The incidents this channel opened and has not resolved, in its memory."""
        return IncidentBook(self.memory)

    # -- rendering ------------------------------------------------------------------

    def format(self, event: NotificationEvent) -> dict[str, Any]:
        """A trigger (the Events API body, routing key left out), or for a recovery the
        dedup keys it may resolve; ``afs test``'s event becomes a test alert."""
        if _is_cli_test(event):
            return {"event_action": "test", "trigger": payload.trigger(event, f"afs/afs-test/test/{event.event_id}")}
        kinds = keys.recovery_kinds(event)
        if kinds is not None:
            message: dict[str, Any] = {
                "event_action": "resolve",
                "dedup_keys": [keys.dedup_key(event, kind) for kind in kinds],
                "about": f"run {event.run_id}" if event.run_id else f"host {event.source.host or 'unknown-host'}",
                "event_id": event.event_id,
                "timestamp": event.timestamp.isoformat(timespec="microseconds"),
            }
            if event.event_type in keys.GPU_TYPES:
                gpu = event.context.get("gpu")
                message["gpu"] = None if gpu is None else str(gpu)
            return message
        if event.event_type in self.wanted_below_level and event.level < self.min_level:
            # Let through for its recovery only; the alert itself is below what pages.
            raise NothingToSend(f"{event.level.value} is below this channel's minimum level "
                                f"({self.min_level.value})")
        return payload.trigger(event, keys.dedup_key(event))

    # -- sending --------------------------------------------------------------------

    def deliver(self, message: Any) -> Any:
        if not isinstance(message, Mapping):
            raise PermanentDeliveryError(f"a PagerDuty message must be a JSON object, got {type(message).__name__}")
        action = message.get("event_action")
        if action == "trigger":
            return self._trigger(message)
        if action == "resolve" and "dedup_keys" in message:
            return self._resolve(message)
        if action == "test":
            return self._test(message)
        if action in ("acknowledge", "resolve"):  # a formatter's own event: sent as it is
            return self._send(message)
        raise PermanentDeliveryError(f"unknown event_action {one_line(str(action), 40)!r}")

    def _send(self, message: Mapping[str, Any]) -> Any:
        """POST one Events API request; the receipt of a 202, else the typed error."""
        body = {"routing_key": self.routing_key.reveal(), **{k: v for k, v in message.items() if k != "routing_key"}}
        return self.read_answer(self.post(self.webhook_url, body))

    def _trigger(self, message: Mapping[str, Any]) -> Any:
        key = message.get("dedup_key")
        if not isinstance(key, str) or not key:  # a formatter's own trigger: PagerDuty keys it
            return self._send(message)
        happened = self._too_late(key, message)
        # When the trouble happened (when it is sent, for a trigger that does not say):
        # a recovery older than that does not resolve what this trigger opens.
        when = happened.timestamp() if happened is not None else time.time()
        gpu = _gpu_of(message) if key.endswith(_GPU_SUFFIXES) else None
        book = self.incidents
        before = book.triggering(key, when, gpu)
        try:
            receipt = self._send(message)
        except Exception as exc:
            if not isinstance(exc, (TransientDeliveryError, OSError)):
                book.refused(key, before, when, gpu)  # refused for good: nothing to wait for
            raise
        book.opened(key, when, gpu)
        return receipt

    def _too_late(self, key: str, message: Mapping[str, Any]) -> dt.datetime | None:
        """Refuse a trigger for trouble older than its run's completion or resume seen
        here (see :class:`~afs_pagerduty.incidents.RecentRecoveries`); else when the
        trouble happened, if the trigger says."""
        sent = message.get("payload")
        happened = _when(sent.get("timestamp")) if isinstance(sent, Mapping) else None
        recovered = None if happened is None else self._recovered.after(key, happened)
        if recovered is not None and happened is not None:
            raise NothingToSend(f"not paged: the run completed or resumed at {recovered.isoformat()}, "
                                f"after this happened ({happened.isoformat()})")
        return happened

    def _resolve(self, message: Mapping[str, Any]) -> Any:
        """Resolve what a recovery ends: each open key with its own request (a retry sends
        only those left), after waiting for triggers PagerDuty has not accepted yet.

        A recovery ends only trouble older than itself: a key triggered again after the
        recovery happened (the run failed anew while this resolve waited for a retry, here
        or in another process) is left open, as is a GPU that alerted again."""
        book = self.incidents
        gpu = message.get("gpu")
        when = _when(message.get("timestamp"))
        recovered_at = when.timestamp() if when is not None else None
        targets: list[str] = []
        waiting: list[str] = []
        still_open: list[str] = []
        reopened: list[str] = []
        for incident in book.known(str(k) for k in message.get("dedup_keys") or ()):
            per_gpu = isinstance(gpu, str) and bool(incident.gpus)
            if recovered_at is not None and incident.opened_again_after(recovered_at, gpu if per_gpu else None):
                reopened.append(incident.key)
                continue
            if incident.state != OPEN:
                if book.stale(incident):
                    book.forget(incident.key)  # its trigger was given up long ago
                else:
                    waiting.append(incident.key)
                continue
            if per_gpu:
                left = book.recovered_gpu(incident, str(gpu), recovered_at)
                if left:
                    still_open.append(f"{incident.key} stays open for GPU {', '.join(sorted(left))}")
                    continue
            targets.append(incident.key)
        if when is not None and "gpu" not in message:  # a GPU recovery ends one alert, not the run's trouble
            self._recovered.saw([key for key in map(str, message.get("dedup_keys") or ()) if key not in waiting], when)
        if not targets and not waiting:
            about = one_line(str(message.get("about") or "this run"), 300)
            said = []
            if reopened:
                said.append(f"the incident was opened again after this recovery ({', '.join(reopened)} stays open)")
            if still_open:
                said.append(f"GPU {one_line(str(gpu), 40)} recovered; {'; '.join(still_open)}")
            raise NothingToSend("; ".join(said) if said else f"no open incident for {about}")
        receipts = {}
        if targets:
            receipts = deliver_to_each(self, f"resolve:{message.get('event_id')}", targets,
                                       lambda key: self._resolve_one(key, recovered_at))
        if waiting:
            raise TransientDeliveryError(f"PagerDuty has not accepted the trigger of {', '.join(waiting)} yet; "
                                         "it is resolved once it has")
        return receipts

    def _resolve_one(self, key: str, recovered_at: float | None = None) -> Any:
        receipt = self._send({"event_action": "resolve", "dedup_key": key})
        self.incidents.resolved(key, recovered_at)  # kept if triggered again while this was on its way
        return receipt

    def _test(self, message: Mapping[str, Any]) -> Any:
        """``afs test``: an info alert, resolved at once, so no incident stays open."""
        trigger = message.get("trigger")
        if not isinstance(trigger, Mapping) or not isinstance(trigger.get("dedup_key"), str):
            raise PermanentDeliveryError("a test message needs a trigger with a dedup_key")
        key = trigger["dedup_key"]
        triggered = self._send(trigger)
        try:
            resolved = self._send({"event_action": "resolve", "dedup_key": key})
        except DeliveryError as exc:
            kind = PermanentDeliveryError if exc.permanent else TransientDeliveryError
            raise kind(f"the test alert was triggered but not resolved, resolve {key} in PagerDuty: {exc.reason}",
                       retry_after=exc.retry_after) from None
        return {"dedup_key": key, "triggered": triggered, "resolved": resolved}

    # -- what PagerDuty says --------------------------------------------------------

    def public_segments(self, path: str) -> int:
        return len([s for s in path.split("/") if s])  # the endpoint holds no secret

    def hold_keys(self) -> tuple[str, ...]:
        return (self._hold_key,)  # PagerDuty throttles per routing key

    def rate_limited(self, answer: HttpAnswer) -> tuple[float | None, str, str]:
        return parse_retry_after(answer.headers.get("Retry-After")), self._hold_key, "throttled by PagerDuty"

    def words(self, answer: HttpAnswer) -> str:
        """PagerDuty's ``message`` and its ``errors`` list, or the start of the body."""
        body = json_object(answer.text)
        errors = body.get("errors")
        said = str(body.get("message") or body.get("status") or "")
        if isinstance(errors, list) and errors:
            said = f"{said}: {'; '.join(str(e) for e in errors)}" if said else "; ".join(str(e) for e in errors)
        return one_line(scrub(said or answer.text.strip() or "no body", self.secrets()), 300)

    def read_answer(self, answer: HttpAnswer) -> Any:
        """202 is accepted; a 400 about the routing key, and 401/403/404, name the
        settings to fix; every other answer is classified by status (5xx retried)."""
        if answer.status == 202:
            body = json_object(answer.text)
            return body or one_line(answer.text, 200)
        said = self.words(answer)
        if 200 <= answer.status < 300:
            raise PermanentDeliveryError(f"HTTP {answer.status}: {said} (PagerDuty accepts an event with 202; "
                                         "is PAGERDUTY_EVENTS_URL the Events API v2?)")
        if answer.status == 400 and _ROUTING_KEY_WORDS.search(said):
            raise PermanentDeliveryError(f"HTTP 400: {said} (check PAGERDUTY_ROUTING_KEY: {_KEY_HELP})")
        if answer.status in (401, 403, 404):
            raise PermanentDeliveryError(f"HTTP {answer.status}: {said} "
                                         "(check PAGERDUTY_ROUTING_KEY and PAGERDUTY_EVENTS_URL)")
        error = classify_status(answer.status, said, retry_after=parse_retry_after(answer.headers.get("Retry-After")))
        raise error if error is not None else PermanentDeliveryError(f"HTTP {answer.status}: {said}")

    # -- status ---------------------------------------------------------------------

    def secrets(self) -> Iterable[str]:
        return [self.routing_key.reveal()]


_GPU_SUFFIXES = tuple(f"/{keys.kind_of(t)}" for t in (EventType.GPU_MEMORY_WARNING, EventType.GPU_UTILIZATION_LOW))


def _gpu_of(message: Mapping[str, Any]) -> str:
    """The GPU a GPU alert's trigger is about (from its details), or :data:`ANY_GPU`."""
    sent = message.get("payload")
    details = sent.get("custom_details") if isinstance(sent, Mapping) else None
    context = details.get("context") if isinstance(details, Mapping) else None
    gpu = context.get("gpu") if isinstance(context, Mapping) else None
    return ANY_GPU if gpu is None else str(gpu)


def _when(text: object) -> dt.datetime | None:
    """An RFC 3339 time from a message, or None."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None
