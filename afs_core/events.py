"""The event model: what happened in a training run, as one immutable value.

Every channel, hook and store sees the same `NotificationEvent`, so it validates
its input once, here, and carries the context a reader needs (model, run, host).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, Union, cast

from afs_core.source import Source

MetricValue = Union[int, float, str]  # noqa: UP007 (a runtime alias: Python 3.10 has no "int | float" value)


class _TextEnum(enum.Enum):
    """An enum that also accepts its members' names and values in any case, as
    they arrive from .env files and command lines ("WARNING", " loss_improved ")."""

    @classmethod
    def _missing_(cls, value: object) -> _TextEnum | None:
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if member.value == wanted:
                    return member
        return None


@functools.total_ordering
class NotificationLevel(_TextEnum):
    """How loud an event is. Levels are ordered: ``level >= NotificationLevel.ERROR``."""

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        """Position in the order INFO < SUCCESS < WARNING < ERROR < CRITICAL."""
        return _SEVERITY[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, NotificationLevel):
            return NotImplemented
        return self.severity < other.severity


_SEVERITY = {level: index for index, level in enumerate(NotificationLevel)}


class EventCategory(enum.Enum):
    """The family an event type belongs to, for filtering and routing."""

    TRAINING = "training"
    CHECKPOINT = "checkpoint"
    EVALUATION = "evaluation"
    MILESTONE = "milestone"
    RESOURCE = "resource"
    ERROR = "error"


_C, _L = EventCategory, NotificationLevel
_EVENT_TYPE_TABLE: dict[str, tuple[EventCategory, NotificationLevel]] = {
    "training_started": (_C.TRAINING, _L.INFO),
    "training_completed": (_C.TRAINING, _L.SUCCESS),
    "training_failed": (_C.TRAINING, _L.ERROR),
    "training_paused": (_C.TRAINING, _L.WARNING),
    "training_resumed": (_C.TRAINING, _L.INFO),
    "training_stalled": (_C.TRAINING, _L.WARNING),
    "training_progress_resumed": (_C.TRAINING, _L.INFO),
    "checkpoint_saved": (_C.CHECKPOINT, _L.INFO),
    "checkpoint_loading": (_C.CHECKPOINT, _L.INFO),
    "evaluation_started": (_C.EVALUATION, _L.INFO),
    "evaluation_completed": (_C.EVALUATION, _L.SUCCESS),
    "evaluation_failed": (_C.EVALUATION, _L.ERROR),
    "epoch_completed": (_C.MILESTONE, _L.INFO),
    "batch_processed": (_C.MILESTONE, _L.INFO),
    "loss_improved": (_C.MILESTONE, _L.SUCCESS),
    "loss_degraded": (_C.MILESTONE, _L.WARNING),
    "cost_threshold_exceeded": (_C.RESOURCE, _L.WARNING),
    "gpu_memory_warning": (_C.RESOURCE, _L.WARNING),
    "gpu_utilization_low": (_C.RESOURCE, _L.WARNING),
    "disk_space_warning": (_C.RESOURCE, _L.WARNING),
    "error_occurred": (_C.ERROR, _L.ERROR),
    "out_of_memory": (_C.ERROR, _L.CRITICAL),
    "nan_detected": (_C.ERROR, _L.ERROR),
}


class EventType(_TextEnum):
    """What happened. Each type knows its category and its default level."""

    TRAINING_STARTED = "training_started"
    TRAINING_COMPLETED = "training_completed"
    TRAINING_FAILED = "training_failed"
    TRAINING_PAUSED = "training_paused"
    TRAINING_RESUMED = "training_resumed"
    TRAINING_STALLED = "training_stalled"
    TRAINING_PROGRESS_RESUMED = "training_progress_resumed"
    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_LOADING = "checkpoint_loading"
    EVALUATION_STARTED = "evaluation_started"
    EVALUATION_COMPLETED = "evaluation_completed"
    EVALUATION_FAILED = "evaluation_failed"
    EPOCH_COMPLETED = "epoch_completed"
    BATCH_PROCESSED = "batch_processed"
    LOSS_IMPROVED = "loss_improved"
    LOSS_DEGRADED = "loss_degraded"
    COST_THRESHOLD_EXCEEDED = "cost_threshold_exceeded"
    GPU_MEMORY_WARNING = "gpu_memory_warning"
    GPU_UTILIZATION_LOW = "gpu_utilization_low"
    DISK_SPACE_WARNING = "disk_space_warning"
    ERROR_OCCURRED = "error_occurred"
    OUT_OF_MEMORY = "out_of_memory"
    NAN_DETECTED = "nan_detected"

    # _value_ is the member's value as a plain attribute: .value goes through a descriptor
    # written in Python, and these run on notify()'s path.
    @property
    def category(self) -> EventCategory:
        return _EVENT_TYPE_TABLE[self._value_][0]

    @property
    def default_level(self) -> NotificationLevel:
        return _EVENT_TYPE_TABLE[self._value_][1]



_E = TypeVar("_E", bound=enum.Enum)


def _as_member(enum_cls: type[_E], field_name: str, value: object) -> _E:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        try:
            return enum_cls(value)
        except ValueError:
            choices = ", ".join(m.name for m in enum_cls)
            raise ValueError(
                f"{field_name}: unknown {enum_cls.__name__} {value!r}; expected one of {choices}"
            ) from None
    raise TypeError(
        f"{field_name} must be a {enum_cls.__name__} or its name, got {type(value).__name__}"
    )


def _to_event_type(value: object) -> EventType:
    return _as_member(EventType, "event_type", value)


def _to_level(value: object) -> NotificationLevel:
    return _as_member(NotificationLevel, "level", value)


#: Metric values kept as they are, told apart by their type alone (nearly every value).
_METRIC_TYPES = frozenset({float, int, str})


def as_metric_value(key: str, value: object) -> MetricValue:
    if type(value) in _METRIC_TYPES:  # no ABC checks
        return value  # type: ignore[return-value]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) or hasattr(value, "__float__"):
        # numpy and torch scalars arrive here; keep plain floats only.
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"metrics[{key!r}] must be a number or a string, got {type(value).__name__}"
    )


class FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes: events stay immutable, yet pickle and copy like a dict."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("event mappings are read-only; use event.evolve(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self  # immutable all the way down (see _convert_context)

    def __copy__(self) -> FrozenDict:
        return self


#: Values kept as they are, told apart without the Mapping ABC's slower isinstance check
#: (every event's context and metrics go through here on the caller's thread).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _frozen(value: object) -> Any:
    """A deep, read-only copy of plain containers; other values are kept as they are."""
    if type(value) in _PLAIN:
        return value
    if type(value) is dict or isinstance(value, Mapping):
        return FrozenDict({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_frozen(item) for item in value)
    return value


def _convert_metrics(value: object) -> Mapping[str, MetricValue]:
    if value is None:
        return FrozenDict()
    if type(value) is not dict and not isinstance(value, Mapping):
        raise TypeError(f"metrics must be a mapping of name to number, got {type(value).__name__}")
    metrics: dict[str, MetricValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"metrics keys must be strings, got {key!r}")
        metrics[key] = item if type(item) in _METRIC_TYPES else as_metric_value(key, item)
    return FrozenDict(metrics)


def _convert_context(value: object) -> Mapping[str, Any]:
    if value is None:
        return FrozenDict()
    if type(value) is not dict and not isinstance(value, Mapping):
        raise TypeError(f"context must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"context keys must be strings, got {key!r}")
    return cast(Mapping[str, Any], _frozen(value))


def _convert_tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) and (isinstance(value, str) or not isinstance(value, Iterable)):
        raise TypeError(f"tags must be a list of strings, got {type(value).__name__}")
    tags = tuple(value)
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, got {tag!r}")
    return tags


def _check(name: str, value: Any, kind: type, *, optional: bool = False) -> None:
    """The field's type, in an error that names the field and the types involved, nothing more."""
    if isinstance(value, kind) or (optional and value is None):
        return
    wanted = kind.__name__ + (" or None" if optional else "")
    raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r:.60}")


def _to_float_or_none(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError("cost is too large: over 1e308") from None
    return value


def _utc_timestamp(value: object) -> _dt.datetime:
    if not isinstance(value, _dt.datetime):
        raise TypeError(f"timestamp must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.astimezone(_dt.timezone.utc)


def _now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


try:  # the C generator random.Random wraps: importing random costs ~2 ms of every start
    from _random import Random as _Generator
except ImportError:  # an interpreter without it
    from random import Random as _Generator  # type: ignore[assignment]

_id_source: tuple[int, _Generator] | None = None


def _new_id() -> str:
    """128 random bits as 32 hex digits, like uuid4().hex, without a system call per event:
    a generator seeded from the OS once per process (and again after a fork)."""
    global _id_source
    pid = os.getpid()
    if _id_source is None or _id_source[0] != pid:
        _id_source = (pid, _Generator(int.from_bytes(os.urandom(32), "big")))
    return f"{_id_source[1].getrandbits(128):032x}"


def _count(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int or None, got {type(value).__name__} {value!r:.60}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


#: A keyword left out (None is a value some fields refuse, as they did before).
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class NotificationEvent:
    """One thing that happened in a run, ready for any channel.

    Immutable: hooks and channels can share it across threads. ``metrics`` and
    ``context`` are read-only mappings; use :meth:`evolve` for a changed copy.

    A dataclass whose ``__init__`` is written out: every field is converted and then
    checked on the caller's thread at each ``notify()``, in one pass.
    """

    event_type: EventType
    title: str
    message: str = ""
    level: NotificationLevel = dataclasses.field(kw_only=True)  # the event type's own level when left out
    model_name: str | None = dataclasses.field(default=None, kw_only=True)
    run_id: str | None = dataclasses.field(default=None, kw_only=True)
    epoch: int | None = dataclasses.field(default=None, kw_only=True)
    batch: int | None = dataclasses.field(default=None, kw_only=True)
    cost: float | None = dataclasses.field(default=None, kw_only=True)
    metrics: Mapping[str, MetricValue] = dataclasses.field(default_factory=FrozenDict, kw_only=True, hash=False)
    error_details: str | None = dataclasses.field(default=None, kw_only=True)
    tags: tuple[str, ...] = dataclasses.field(default=(), kw_only=True)
    context: Mapping[str, Any] = dataclasses.field(default_factory=FrozenDict, kw_only=True, hash=False)
    timestamp: _dt.datetime = dataclasses.field(default_factory=_now_utc, kw_only=True)
    event_id: str = dataclasses.field(default_factory=_new_id, kw_only=True)
    source: Source = dataclasses.field(default_factory=Source.current, kw_only=True)

    def __init__(
        self,
        event_type: EventType | str,
        title: str,
        message: str = "",
        *,
        level: NotificationLevel | str = _UNSET,
        model_name: str | None = None,
        run_id: str | None = None,
        epoch: int | None = None,
        batch: int | None = None,
        cost: float | None = None,
        metrics: Mapping[str, Any] | None = _UNSET,
        error_details: str | None = None,
        tags: Iterable[str] | None = _UNSET,
        context: Mapping[str, Any] | None = _UNSET,
        timestamp: _dt.datetime = _UNSET,
        event_id: str = _UNSET,
        source: Source = _UNSET,
    ) -> None:
        # Every field converted first, then each checked in field order, as before.
        kind = _to_event_type(event_type)
        rank = kind.default_level if level is _UNSET else _to_level(level)
        price = _to_float_or_none(cost)
        measured = FrozenDict() if metrics is _UNSET else _convert_metrics(metrics)
        labels = () if tags is _UNSET else _convert_tags(tags)
        extra = FrozenDict() if context is _UNSET else _convert_context(context)
        moment = _now_utc() if timestamp is _UNSET else _utc_timestamp(timestamp)
        ident = _new_id() if event_id is _UNSET else event_id
        origin = Source.current() if source is _UNSET else source
        # The usual values pass in one test; any other is checked field by field, in order.
        # This test only admits what the checks below admit: a rule added there goes here too.
        if not (
            type(title) is str and type(message) is str
            and (model_name is None or type(model_name) is str) and (run_id is None or type(run_id) is str)
            and (epoch is None or (type(epoch) is int and epoch >= 0))
            and (batch is None or (type(batch) is int and batch >= 0))
            and (price is None or (type(price) is float and math.isfinite(price)))
            and (error_details is None or type(error_details) is str)
            and type(ident) is str and type(origin) is Source
        ):
            _check("title", title, str)
            _check("message", message, str)
            _check("model_name", model_name, str, optional=True)
            _check("run_id", run_id, str, optional=True)
            _count("epoch", epoch)
            _count("batch", batch)
            _check("cost", price, float, optional=True)
            if price is not None and not math.isfinite(price):  # type: ignore[arg-type]
                raise ValueError(f"cost must be a finite number, got {price!r}")
            _check("error_details", error_details, str, optional=True)
            _check("event_id", ident, str)
            _check("source", origin, Source)
        put = object.__setattr__
        put(self, "event_type", kind)
        put(self, "title", title)
        put(self, "message", message)
        put(self, "level", rank)
        put(self, "model_name", model_name)
        put(self, "run_id", run_id)
        put(self, "epoch", epoch)
        put(self, "batch", batch)
        put(self, "cost", price)
        put(self, "metrics", measured)
        put(self, "error_details", error_details)
        put(self, "tags", labels)
        put(self, "context", extra)
        put(self, "timestamp", moment)
        put(self, "event_id", ident)
        put(self, "source", origin)

    @property
    def category(self) -> EventCategory:
        return self.event_type.category

    def __str__(self) -> str:
        return f"[{self.level.name}] {self.title}: {self.message}"

    def evolve(self, **changes: Any) -> NotificationEvent:
        """A copy with some fields changed (the id and timestamp are kept)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for stores and logs; :meth:`from_dict` reverses it."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type._value_,  # (see EventType.category)
            "level": self.level._value_,
            "title": self.title,
            "message": self.message,
            "model_name": self.model_name,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "batch": self.batch,
            "cost": self.cost,
            "error_details": self.error_details,
            "metrics": dict(self.metrics),
            "tags": list(self.tags),
            "context": dict(self.context),
            "timestamp": self.timestamp.isoformat(),
            "source": self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotificationEvent:
        return cls(
            data["event_type"],
            data["title"],
            data.get("message", ""),
            level=data["level"],
            model_name=data.get("model_name"),
            run_id=data.get("run_id"),
            epoch=data.get("epoch"),
            batch=data.get("batch"),
            cost=data.get("cost"),
            error_details=data.get("error_details"),
            metrics=data.get("metrics") or {},
            tags=data.get("tags") or (),
            context=data.get("context") or {},
            timestamp=_dt.datetime.fromisoformat(data["timestamp"]),
            event_id=data["event_id"],
            source=Source.from_dict(data.get("source") or {}),
        )
