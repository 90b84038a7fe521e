"""The contract every channel implements, ours and third parties' alike.

A channel only knows how to render an event for its service (``format``) and how
to send one rendered message (``deliver``). Everything around that — hooks,
filtering, error handling, never raising, retrying — is done once, in the core's
delivery layer; a channel never reaches up to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

from afs_core.channels.memory import ChannelMemory, LocalMemory
from afs_core.channels.settings import Setting, read_settings
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.redaction import Secret

_C = TypeVar("_C", bound="Channel")


class RateLimit(NamedTuple):
    """How fast a channel may send: ``per_second`` sustained, ``burst`` at once."""

    per_second: float
    burst: int = 1


class Channel:
    """Base class of every channel (console, desktop, email, Slack, Discord, yours).

    Subclasses override :meth:`deliver`, usually :meth:`format`, and declare their
    ``settings``: ``from_env`` and ``secrets`` are made from that declaration.
    """

    #: The channel's registered name ("slack"); set by the registry when empty.
    name: ClassVar[str] = ""
    #: How fast the engine may send through this channel (None: no limit of ours).
    rate_limit: ClassVar[RateLimit | None] = None
    #: How many due messages the engine may hand to :meth:`deliver_batch` at once.
    batch_size: ClassVar[int] = 1
    #: How many of the channel's timeouts one :meth:`deliver_batch` call lasts at most
    #: (None: one for each message), or one :meth:`deliver` where messages go one at a
    #: time. A claim's lease is made to outlast that: a batch that stops in time
    #: (:class:`~afs_core.errors.NotSent` for the rest) keeps a dead process's
    #: deliveries from waiting long for another to take them.
    batch_timeouts: int | None = None  # (an instance may say its own: one per URL it posts to)
    #: Seconds in which repeats of a repetitive event are held back (0: never).
    throttle_seconds: ClassVar[float] = 600.0
    #: The settings this channel reads; ``from_env``, ``afs status`` and ``secrets()``
    #: work from this declaration (see :class:`~afs_core.channels.settings.Setting`).
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: Settings it cannot work without, named by ``afs status`` when the channel is off;
    #: derived from ``settings`` when those are declared.
    required_settings: ClassVar[tuple[str, ...]] = ()
    #: The least level sent when the user set none for this channel (``AFS_<NAME>_MIN_LEVEL``):
    #: ERROR for a channel that wakes people up. None: ``AFS_MIN_LEVEL``, or every level.
    default_min_level: ClassVar[NotificationLevel | None] = None
    #: Event types this channel is given below its minimum level, because they end
    #: something it sent (a completed run resolves its incident).
    wanted_below_level: ClassVar[frozenset[EventType]] = frozenset()

    @property
    def memory(self) -> ChannelMemory:
        """What this channel remembers between sends: kept in the store (so across
        processes) when the engine runs it, in this process otherwise."""
        kept = self.__dict__.get("_afs_memory")
        if kept is None:
            kept = self.__dict__["_afs_memory"] = LocalMemory()
        return kept

    @memory.setter
    def memory(self, memory: ChannelMemory) -> None:
        self.__dict__["_afs_memory"] = memory

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "settings" in vars(cls) and "required_settings" not in vars(cls):
            cls.required_settings = tuple(s.env for s in cls.settings if s.required)

    def format(self, event: NotificationEvent) -> Any:
        """Render ``event`` as this channel's message. Default: plain text."""
        from afs_core.formatting import render_text

        return render_text(event)

    def deliver(self, message: Any) -> Any:
        """Send one rendered message; raise a :class:`~afs_core.errors.DeliveryError` on failure.

        May block for up to the channel's timeout. Returns an optional receipt.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement deliver()")

    def deliver_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Send several rendered messages at once (set ``batch_size`` above one to be
        given them); one entry per message, in order: its receipt, or the
        :class:`~afs_core.errors.DeliveryError` it met (:class:`~afs_core.errors.NotSent`
        for one it did not get to in time: sent again at once, no attempt counted). By
        default, one ``deliver`` each."""
        results: list[Any] = []
        for message in messages:
            try:
                results.append(self.deliver(message))
            except Exception as exc:  # classified by the core, as from deliver()
                results.append(exc)
        return results

    @classmethod
    def from_env(cls: type[_C], env: Mapping[str, str]) -> _C | None:
        """A configured instance from settings, or ``None`` when its settings are absent.

        Raises :class:`~afs_core.errors.ConfigurationError` when settings are
        present but wrong, so the mistake shows at start-up, not at the first send.
        By default the declared ``settings`` are read and passed to the constructor.
        """
        values = read_settings(cls.settings, env) if cls.settings else None
        if values is None:
            return None
        channel = cls(**values)
        # Known as secrets whatever attribute the constructor keeps them in.
        kept = (values.get(s.param) for s in cls.settings if s.secret)
        with contextlib.suppress(AttributeError, TypeError):
            channel._declared_secrets = tuple(  # type: ignore[attr-defined]
                Secret(v) for v in (k.reveal() if isinstance(k, Secret) else k for k in kept)
                if isinstance(v, str) and v)
        return channel

    @classmethod
    def settings_from_env(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """For a constructor called without its settings, as the seed-era notifiers were
        (``SlackNotifier()``): the keywords ``given`` (None: not given) completed from
        ``.env`` and the environment, read by the declaration like ``from_env``."""
        from afs_core.config import load_env
        from afs_core.errors import ConfigurationError

        values = read_settings(cls.settings, load_env())
        if values is None:
            needed = cls.required_settings[0] if cls.required_settings else "its settings"
            raise ConfigurationError(f"{needed} is not set (in the environment or .env)")
        return {**values, **{key: value for key, value in given.items() if value is not None}}

    def is_configured(self) -> bool:
        """Whether this instance has what it needs to deliver."""
        return True

    def describe(self) -> str:
        """A one-line description for status output, with every secret redacted."""
        return self.name or type(self).__name__

    def close(self) -> None:
        """Release connections or other resources; the channel may be used again after."""

    def secrets(self) -> Iterable[str]:
        """Strings that must never appear in logs, errors or history (tokens, passwords):
        by default the values of the settings declared secret (as ``from_env`` read
        them, or as kept in the attribute named after their ``param``)."""
        found = [k.reveal() if isinstance(k, Secret) else k for k in getattr(self, "_declared_secrets", ())]
        for setting in type(self).settings:
            value = getattr(self, setting.param, None) if setting.secret else None
            value = value.reveal() if isinstance(value, Secret) else value
            if isinstance(value, str) and value and value not in found:
                found.append(value)
        return found

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
