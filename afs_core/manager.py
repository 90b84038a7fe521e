"""``NotificationManager``: what training code calls.

It builds events from the familiar ``notify_*`` calls, sends each to every
registered channel through the plugin hooks, and never raises into the caller:
every call returns a :class:`~afs_core.results.NotifyResult` instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from afs_core.channels.base import Channel
from afs_core.config import env_bool, env_float, env_int, load_env
from afs_core.delivery.dispatch import deliver_event, enrich_event
from afs_core.errors import ConfigurationError, TransientDeliveryError
from afs_core.events import EventType, NotificationEvent, NotificationLevel, as_metric_value
from afs_core.formatting import format_cost, format_duration, format_number, trim_traceback
from afs_core.delivery.engine import DeliveryEngine, apply_rank_policy, failure_key
from afs_core.plugins import PluginHost, get_plugins
from afs_core.delivery.policy import ChannelPolicy
from afs_core.results import ChannelOutcome, DeliveryStatus, NotifyResult
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store, open_store

logger = logging.getLogger("afs.manager")

RANK_WINDOW = 30.0  # seconds in which the same failure from several ranks is sent once
RANK_COLLECT = 2.0  # seconds the first report waits for the other ranks'

_F = TypeVar("_F", bound=Callable[..., NotifyResult])


def _never_raises(method: _F) -> _F:
    """Turn any exception in a notify method into a rejected result and a log line
    (SystemExit from a plugin included: only Ctrl-C may stop the caller)."""

    @functools.wraps(method)
    def guarded(self: NotificationManager, *args: Any, **kwargs: Any) -> NotifyResult:
        try:
            return method(self, *args, **kwargs)
        except (Exception, SystemExit) as exc:
            logger.error("afs: notification rejected by %s(): %s", method.__name__, exc)
            return NotifyResult(None, rejected=f"{type(exc).__name__}: {exc}")

    return guarded  # type: ignore[return-value]


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _usable_metrics(metrics: Mapping[Any, Any] | None) -> dict[str, Any]:
    """Metrics the event model accepts: one odd value must not cost the whole message,
    so ``None`` is dropped and anything else that is not a number is shown as text."""
    usable: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if value is None:
            continue
        try:
            usable[_safe_str(key)] = as_metric_value(_safe_str(key), value)
        except TypeError:
            usable[_safe_str(key)] = _safe_str(value)
    return usable


def _error_context(error: BaseException | str | None) -> tuple[str | None, dict[str, Any]]:
    """``(error_details, context)`` for an error given as text or as an exception."""
    if error is None:
        return None, {}
    if isinstance(error, BaseException):
        details = f"{type(error).__name__}: {_safe_str(error)}"
        context: dict[str, Any] = {"error_type": type(error).__name__}
        if error.__traceback__ is not None:
            try:
                import traceback

                lines = traceback.format_exception(type(error), error, error.__traceback__)
                context["traceback"] = trim_traceback("".join(lines))
            except Exception:  # an exception whose str() fails; keep what we have
                pass
        return details, context
    return _safe_str(error), {}


def _run_label(model_name: str | None, run_id: str | None) -> str:
    if model_name and run_id:
        return f"{model_name} ({run_id})"
    return model_name or run_id or "run"


class _LegacyHandler(Channel):
    """Adapts a handler that only has ``send(event) -> bool`` (the earlier handler API)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def format(self, event: NotificationEvent) -> NotificationEvent:
        return event

    def deliver(self, message: Any) -> None:
        if not self.handler.send(message):
            raise TransientDeliveryError(f"{type(self.handler).__name__}.send() reported failure")

    def describe(self) -> str:
        return type(self.handler).__name__


def _as_channel(handler: Any) -> Channel:
    if isinstance(handler, Channel):
        if type(handler).deliver is Channel.deliver and callable(getattr(handler, "send", None)):
            return _LegacyHandler(handler)  # a subclass that only overrides send()
        return handler
    if callable(getattr(handler, "send", None)):
        return _LegacyHandler(handler)
    raise TypeError(f"handler must be an afs_core.Channel or have send(event), got {type(handler).__name__}")


class NotificationManager:
    """Sends training events to every registered channel.

    By default ``notify*()`` only validates the event, writes it to the local
    outbox and returns; a background engine delivers it (see ``flush``/``close``).

    :param plugins: the plugin host whose hooks shape delivery; default: the
        process-wide one (installed plugins, filtered by ``AFS_LOAD_PLUGINS``).
    :param background: deliver on background threads from a durable outbox
        (default); ``False`` delivers on the caller's thread, now.
    :param store: the outbox and history; default ``AFS_HOME``/afs.db.
    :param retry: when to retry a failed delivery and when to give up.
    :param all_ranks: let every rank of a distributed job send everything; by
        default ranks other than 0 send ERROR and CRITICAL only.
    :param settings: where channel policies (``AFS_SLACK_MIN_LEVEL``...) are read;
        default the environment.
    :param retention: history kept: (seconds, events); finished deliveries beyond
        either are pruned hourly.
    """

    def __init__(
        self,
        *,
        plugins: PluginHost | None = None,
        background: bool = True,
        store: Store | None = None,
        retry: RetryPolicy | None = None,
        flush_timeout: float = 10.0,
        all_ranks: bool = False,
        settings: Mapping[str, str] | None = None,
        retention: tuple[float, int] = (30 * 86400.0, 10_000),
    ) -> None:
        self._plugins = plugins
        self._handlers: dict[str, Channel] = {}
        self._policies: dict[str, ChannelPolicy] = {}
        self._lock = threading.Lock()
        self._warned_empty = False
        self.background = background
        self.all_ranks = all_ranks
        self._store = store
        self._retry = retry
        self._flush_timeout = flush_timeout
        self._retention = retention
        self._settings = settings
        self._engine: DeliveryEngine | None = None

    # -- set-up -------------------------------------------------------------------

    @classmethod
    def from_env(
        cls, dotenv_path: str | os.PathLike[str] | None = None, *, plugins: PluginHost | None = None
    ) -> NotificationManager:
        """A manager with every installed channel whose settings are present.

        Reads ``.env`` (``dotenv_path`` or the nearest one), the real environment
        winning. With no channel configured it uses the console channel, unless
        ``AFS_CONSOLE=false``. Raises :class:`~afs_core.errors.ConfigurationError`
        when a channel's settings are present but wrong.
        """
        env = load_env(dotenv_path)
        plugins = plugins if plugins is not None else get_plugins(env)
        manager = cls(
            plugins=plugins,
            background=not env_bool(env, "AFS_SYNC", False),
            store=open_store(env),
            retry=RetryPolicy(max_attempts=env_int(env, "AFS_MAX_ATTEMPTS", 8, minimum=1)),
            flush_timeout=env_float(env, "AFS_FLUSH_TIMEOUT", 10.0),
            all_ranks=env_bool(env, "AFS_ALL_RANKS", False),
            settings=env,
            retention=(env_float(env, "AFS_HISTORY_DAYS", 30.0) * 86400, env_int(env, "AFS_HISTORY_MAX_EVENTS", 10_000)),
        )
        for spec in plugins.channels.values():
            try:
                channel = spec.channel_class.from_env(env)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{spec.name} channel: {exc}") from None
            except Exception as exc:
                if plugins.strict:
                    raise
                logger.warning("afs: %s channel could not read its settings: %r; skipped", spec.name, exc)
                continue
            if channel is not None:
                manager.register_handler(spec.name, channel)
        if not manager._handlers and env_bool(env, "AFS_CONSOLE", True) and "console" in plugins.channels:
            manager.register_handler("console", plugins.channels["console"].channel_class())
        return manager

    @property
    def plugins(self) -> PluginHost:
        if self._plugins is None:
            self._plugins = get_plugins()
        return self._plugins

    @property
    def handlers(self) -> Mapping[str, Channel]:
        """The registered channels by name (read-only view): ``manager.handlers.get("email")``."""
        return MappingProxyType(self._handlers)

    def register_handler(self, name: str, handler: Channel, *, policy: ChannelPolicy | None = None) -> None:
        """Send future events to ``handler`` under ``name``; replaces a handler of that name.

        ``policy`` (minimum level, event types, throttling) defaults to the
        ``AFS_<NAME>_...`` settings.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"handler name must be a non-empty string, got {name!r}")
        channel = _as_channel(handler)
        settings = self._settings if self._settings is not None else os.environ
        policy = policy or ChannelPolicy.from_env(settings, name, getattr(channel, "throttle_seconds", 600.0))
        with self._lock:
            self._handlers = {**self._handlers, name: channel}
            self._policies = {**self._policies, name: policy}
            if self._engine is not None:
                self._engine.attach(name, channel, policy)
        if self.background:
            # Start now, not at the first notify: what an earlier process left pending
            # for this channel is delivered even if this one never sends anything.
            self._get_engine()

    def unregister_handler(self, name: str) -> Channel | None:
        with self._lock:
            handlers = dict(self._handlers)
            removed = handlers.pop(name, None)
            self._handlers = handlers
            if self._engine is not None:
                self._engine.detach(name)
        return removed

    # -- the engine -----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store()
        return self._store

    def _get_engine(self) -> DeliveryEngine:
        with self._lock:
            if self._engine is None:
                self._engine = DeliveryEngine(self.store, self.plugins, retry=self._retry,
                                              flush_timeout=self._flush_timeout, retention=self._retention)
                for name, channel in self._handlers.items():
                    self._engine.attach(name, channel, self._policies[name])
            return self._engine

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver what is pending for this manager's channels and falls due within
        ``timeout`` seconds (retries, Retry-After waits, rank holds included).

        True when nothing is left pending; False when something is (the log says how
        many and when they fall due). Never raises.
        """
        if self._engine is None:
            return True
        try:
            return self._engine.flush(timeout)
        except Exception as exc:
            logger.error("afs: flush failed: %s", exc)
            return False

    def close(self, timeout: float | None = None) -> bool:
        """Flush for up to ``timeout`` (default ``AFS_FLUSH_TIMEOUT``) seconds and stop the
        background threads; undelivered events stay pending for the next process."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is None:
            return True
        try:
            return engine.close(timeout)
        except Exception as exc:
            logger.error("afs: close failed: %s", exc)
            return False

    def __enter__(self) -> NotificationManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def not_durable(self) -> str | None:
        """Why accepted events are not safe from a crash right now, or None when they are."""
        if self._engine is not None:
            return self._engine.not_durable
        if self._store is not None and not self._store.durable:
            return self._store.location.reason or "the store is in memory"
        return None

    def get_status(self) -> dict[str, Any]:
        """Registered channels with their redacted descriptions, and where the outbox is."""
        store = self._store
        return {
            "store": None if store is None or store.path is None else str(store.path),
            "not_durable": self.not_durable,
            "registered_handlers": list(self._handlers),
            "channel_status": {
                name: {
                    "configured": channel.is_configured(),
                    "handler_type": type(channel).__name__,
                    "target": channel.describe(),
                }
                for name, channel in self._handlers.items()
            },
        }

    # -- sending ------------------------------------------------------------------

    @_never_raises
    def send_event(self, event: NotificationEvent) -> NotifyResult:
        """Send a ready-made event to every registered channel."""
        if not isinstance(event, NotificationEvent):
            raise TypeError(f"send_event() needs a NotificationEvent, got {type(event).__name__}")
        plugins = self.plugins
        event = enrich_event(plugins, event)
        handlers, policies = self._handlers, self._policies  # replaced, never mutated: a snapshot
        if not handlers and not self._warned_empty:
            self._warned_empty = True
            logger.warning("afs: no notification channel is registered; events go nowhere")
        held = apply_rank_policy(event, self.all_ranks)
        if held is not None:
            return NotifyResult(event, {n: ChannelOutcome(n, DeliveryStatus.FILTERED, error=held) for n in handlers})
        if not self.background:
            return NotifyResult(event, {n: self._deliver_now(n, ch, policies[n], event) for n, ch in handlers.items()})
        engine = self._get_engine()
        key = failure_key(event)
        if key is not None:
            now = engine.clock.time()
            try:
                # Wait a moment before sending, so the other ranks' reports can join this one.
                merged = engine.submit_or_join(event, list(handlers), dedup_key=key,
                                               since=now - RANK_WINDOW, not_before=now + RANK_COLLECT)
            except sqlite3.Error as exc:  # the store is busy: send it alone rather than wait
                logger.info("afs: store busy (%s); this rank's failure is sent without merging", exc)
            else:
                if isinstance(merged, str):
                    note = f"sent once with the same failure from other ranks (event {merged})"
                    return NotifyResult(event, {n: ChannelOutcome(n, DeliveryStatus.FILTERED, error=note) for n in handlers})
                return NotifyResult(event, tracker=merged)
        return NotifyResult(event, tracker=engine.submit(event, list(handlers)))

    def _deliver_now(self, name: str, channel: Channel, policy: ChannelPolicy, event: NotificationEvent) -> ChannelOutcome:
        if not policy.admits(event):
            return ChannelOutcome(name, DeliveryStatus.FILTERED, error="held back by this channel's settings")
        return deliver_event(self.plugins, name, channel, event)

    @_never_raises
    def notify(
        self,
        title: str,
        message: str = "",
        event_type: EventType | str = EventType.ERROR_OCCURRED,
        level: NotificationLevel | str | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> NotifyResult:
        """Build an event and send it. ``level`` defaults to INFO as before.

        Known event fields in ``context`` (``epoch``, ``batch``, ``cost``, ``tags``,
        ``error_details``) set those fields; anything else lands in ``event.context``.
        """
        fields = {k: context.pop(k) for k in ("epoch", "batch", "cost", "tags", "error_details") if k in context}
        extra = context.pop("context", None) or {}
        event = NotificationEvent(
            event_type,
            title,
            message,
            level=NotificationLevel.INFO if level is None else level,
            model_name=model_name,
            run_id=run_id,
            metrics=_usable_metrics(metrics),
            context={**extra, **context},
            **fields,
        )
        return self.send_event(event)

    def _send(
        self,
        event_type: EventType,
        title: str,
        message: str,
        *,
        level: NotificationLevel | None = None,
        **fields: Any,
    ) -> NotifyResult:
        fields["context"] = {k: v for k, v in (fields.get("context") or {}).items() if v is not None}
        fields["metrics"] = _usable_metrics(fields.get("metrics"))
        event = NotificationEvent(
            event_type, title, message, level=level or event_type.default_level, **fields
        )
        return self.send_event(event)

    # -- one convenience method per event type -----------------------------------

    @_never_raises
    def notify_training_started(
        self, model_name: str, run_id: str, epochs: int | None = None, batch_size: int | None = None
    ) -> NotifyResult:
        plan = []
        if epochs is not None:
            plan.append(f"{epochs} epochs")
        if batch_size is not None:
            plan.append(f"batch size {batch_size}")
        message = f"Run {run_id} started" + (f": {', '.join(plan)}." if plan else ".")
        return self._send(
            EventType.TRAINING_STARTED,
            f"Training started: {model_name}",
            message,
            model_name=model_name,
            run_id=run_id,
            context={"epochs": epochs, "batch_size": batch_size},
        )

    @_never_raises
    def notify_training_completed(
        self,
        model_name: str,
        run_id: str,
        duration: float,
        final_loss: float | None = None,
        eval_metrics: Mapping[str, Any] | None = None,
    ) -> NotifyResult:
        message = f"Run {run_id} finished in {format_duration(duration)}"
        if final_loss is not None:
            message += f", final loss {format_number(final_loss)}"
        return self._send(
            EventType.TRAINING_COMPLETED,
            f"Training completed: {model_name}",
            message + ".",
            model_name=model_name,
            run_id=run_id,
            metrics=eval_metrics or {},
            context={"duration": float(duration), "final_loss": final_loss},
        )

    @_never_raises
    def notify_training_failed(
        self, model_name: str, run_id: str, error: BaseException | str
    ) -> NotifyResult:
        """``error`` may be text or the exception itself (its traceback is kept, trimmed)."""
        details, context = _error_context(error)
        return self._send(
            EventType.TRAINING_FAILED,
            f"Training failed: {model_name}",
            f"Run {run_id} failed: {details}",
            model_name=model_name,
            run_id=run_id,
            error_details=details,
            context=context,
        )

    @_never_raises
    def notify_training_paused(
        self, model_name: str, run_id: str, reason: str | None = None
    ) -> NotifyResult:
        return self._send(
            EventType.TRAINING_PAUSED,
            f"Training paused: {model_name}",
            f"Run {run_id} paused" + (f": {reason}" if reason else "."),
            model_name=model_name,
            run_id=run_id,
        )

    @_never_raises
    def notify_training_resumed(
        self, model_name: str, run_id: str, checkpoint_path: str | None = None
    ) -> NotifyResult:
        message = f"Run {run_id} resumed" + (f" from {checkpoint_path}." if checkpoint_path else ".")
        return self._send(
            EventType.TRAINING_RESUMED,
            f"Training resumed: {model_name}",
            message,
            model_name=model_name,
            run_id=run_id,
            context={"checkpoint_path": checkpoint_path},
        )

    @_never_raises
    def notify_checkpoint_saved(
        self,
        model_name: str,
        run_id: str,
        checkpoint_path: str | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> NotifyResult:
        where = f" to {checkpoint_path}" if checkpoint_path else ""
        return self._send(
            EventType.CHECKPOINT_SAVED,
            f"Checkpoint saved: {model_name}",
            f"Run {run_id} saved a checkpoint{where}.",
            model_name=model_name,
            run_id=run_id,
            epoch=epoch,
            context={"checkpoint_path": checkpoint_path, "step": step},
        )

    @_never_raises
    def notify_checkpoint_loading(
        self, model_name: str, run_id: str, checkpoint_path: str | None = None
    ) -> NotifyResult:
        where = f" from {checkpoint_path}" if checkpoint_path else ""
        return self._send(
            EventType.CHECKPOINT_LOADING,
            f"Loading checkpoint: {model_name}",
            f"Run {run_id} is loading a checkpoint{where}.",
            model_name=model_name,
            run_id=run_id,
            context={"checkpoint_path": checkpoint_path},
        )

    @_never_raises
    def notify_evaluation_started(self, model_name: str, run_id: str) -> NotifyResult:
        return self._send(
            EventType.EVALUATION_STARTED,
            f"Evaluation started: {model_name}",
            f"Run {run_id} started evaluation.",
            model_name=model_name,
            run_id=run_id,
        )

    @_never_raises
    def notify_evaluation_completed(
        self, model_name: str, run_id: str, metrics: Mapping[str, Any]
    ) -> NotifyResult:
        return self._send(
            EventType.EVALUATION_COMPLETED,
            f"Evaluation completed: {model_name}",
            f"Run {run_id} finished evaluation.",
            model_name=model_name,
            run_id=run_id,
            metrics=metrics,
        )

    @_never_raises
    def notify_evaluation_failed(
        self, model_name: str, run_id: str, error: BaseException | str
    ) -> NotifyResult:
        details, context = _error_context(error)
        return self._send(
            EventType.EVALUATION_FAILED,
            f"Evaluation failed: {model_name}",
            f"Run {run_id} evaluation failed: {details}",
            model_name=model_name,
            run_id=run_id,
            error_details=details,
            context=context,
        )

    @_never_raises
    def notify_epoch_completed(
        self,
        model_name: str,
        run_id: str,
        epoch: int,
        metrics: Mapping[str, Any] | None = None,
        total_epochs: int | None = None,
    ) -> NotifyResult:
        of = f"/{total_epochs}" if total_epochs else ""
        return self._send(
            EventType.EPOCH_COMPLETED,
            f"Epoch {epoch}{of} completed: {model_name}",
            f"Run {run_id} completed epoch {epoch}{of}.",
            model_name=model_name,
            run_id=run_id,
            epoch=epoch,
            metrics=metrics or {},
            context={"total_epochs": total_epochs},
        )

    @_never_raises
    def notify_batch_processed(
        self,
        model_name: str,
        run_id: str,
        batch: int,
        metrics: Mapping[str, Any] | None = None,
        epoch: int | None = None,
    ) -> NotifyResult:
        return self._send(
            EventType.BATCH_PROCESSED,
            f"Batch {batch} processed: {model_name}",
            f"Run {run_id} processed batch {batch}.",
            model_name=model_name,
            run_id=run_id,
            batch=batch,
            epoch=epoch,
            metrics=metrics or {},
        )

    def _loss_change(
        self,
        event_type: EventType,
        verb: str,
        model_name: str,
        run_id: str,
        loss: float,
        previous_loss: float | None,
        step: int | None,
    ) -> NotifyResult:
        message = f"Run {run_id}: loss {verb} to {format_number(loss)}"
        if previous_loss is not None:
            message += f" (was {format_number(previous_loss)})"
        return self._send(
            event_type,
            f"Loss {verb}: {model_name}",
            message + (f" at step {step}." if step is not None else "."),
            model_name=model_name,
            run_id=run_id,
            metrics={"loss": loss},
            context={"previous_loss": previous_loss, "step": step},
        )

    @_never_raises
    def notify_loss_improved(
        self,
        model_name: str,
        run_id: str,
        loss: float,
        previous_loss: float | None = None,
        step: int | None = None,
    ) -> NotifyResult:
        return self._loss_change(
            EventType.LOSS_IMPROVED, "improved", model_name, run_id, loss, previous_loss, step
        )

    @_never_raises
    def notify_loss_degraded(
        self,
        model_name: str,
        run_id: str,
        loss: float,
        previous_loss: float | None = None,
        step: int | None = None,
    ) -> NotifyResult:
        return self._loss_change(
            EventType.LOSS_DEGRADED, "degraded", model_name, run_id, loss, previous_loss, step
        )

    @_never_raises
    def notify_cost_alert(
        self, current_cost: float, threshold: float, model_name: str | None = None,
        run_id: str | None = None,
    ) -> NotifyResult:
        return self._send(
            EventType.COST_THRESHOLD_EXCEEDED,
            "Cost threshold exceeded" + (f": {model_name}" if model_name else ""),
            f"Cost reached {format_cost(current_cost)}, over the {format_cost(threshold)} threshold.",
            model_name=model_name,
            run_id=run_id,
            cost=current_cost,
            context={"threshold": float(threshold)},
        )

    @_never_raises
    def notify_gpu_memory_warning(
        self,
        memory_used: float,
        threshold: float | None = None,
        gpu: int | str | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
    ) -> NotifyResult:
        """``memory_used`` and ``threshold`` are fractions of the GPU's memory (0.95 = 95 %)."""
        return self._gpu_alert(EventType.GPU_MEMORY_WARNING, "memory high", "memory is {:.0%} used",
                               "gpu_memory_used", memory_used, threshold, gpu, model_name, run_id)

    @_never_raises
    def notify_gpu_utilization_low(
        self,
        utilization: float,
        threshold: float | None = None,
        gpu: int | str | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
    ) -> NotifyResult:
        """``utilization`` and ``threshold`` are fractions (0.05 = 5 %)."""
        return self._gpu_alert(EventType.GPU_UTILIZATION_LOW, "utilization low", "utilization is {:.0%}",
                               "gpu_utilization", utilization, threshold, gpu, model_name, run_id)

    def _gpu_alert(
        self, event_type: EventType, title: str, sentence: str, metric: str, value: float,
        threshold: float | None, gpu: int | str | None, model_name: str | None, run_id: str | None,
    ) -> NotifyResult:
        which = f"GPU {gpu}" if gpu is not None else "GPU"
        limit = f" (threshold {threshold:.0%})" if threshold is not None else ""
        return self._send(
            event_type,
            f"{which} {title}" + (f": {model_name}" if model_name else ""),
            f"{which} {sentence.format(value)}{limit}.",
            model_name=model_name,
            run_id=run_id,
            metrics={metric: value},
            context={"gpu": gpu, "threshold": None if threshold is None else f"{threshold:.0%}"},
        )

    @_never_raises
    def notify_disk_space_warning(
        self,
        path: str,
        usage: float,
        threshold: float | None = None,
        free_bytes: int | None = None,
        model_name: str | None = None,
        run_id: str | None = None,
    ) -> NotifyResult:
        """``usage`` and ``threshold`` are fractions of the disk (0.9 = 90 % used)."""
        free = f", {free_bytes / 2**30:.1f} GiB free" if free_bytes is not None else ""
        return self._send(
            EventType.DISK_SPACE_WARNING,
            "Disk space low" + (f": {model_name}" if model_name else ""),
            f"{path} is {usage:.0%} full{free}.",
            model_name=model_name,
            run_id=run_id,
            metrics={"disk_used": usage},
            context={"path": str(path), "threshold": None if threshold is None else f"{threshold:.0%}"},
        )

    @_never_raises
    def notify_out_of_memory(
        self, model_name: str, run_id: str, error: BaseException | str | None = None, *, memory: str | None = None
    ) -> NotifyResult:
        """``memory``: what the allocator said, e.g. "Tried to allocate 2.00 GiB"."""
        details, context = _error_context(error)
        if memory:
            context["memory"] = memory
        return self._send(
            EventType.OUT_OF_MEMORY,
            f"Out of memory: {model_name}",
            f"Run {run_id} ran out of memory" + (f": {details}" if details else "."),
            model_name=model_name,
            run_id=run_id,
            error_details=details,
            context=context,
        )

    @_never_raises
    def notify_nan_detected(
        self, model_name: str, run_id: str, metric: str = "loss", step: int | None = None
    ) -> NotifyResult:
        at = f" at step {step}" if step is not None else ""
        return self._send(
            EventType.NAN_DETECTED,
            f"NaN detected: {model_name}",
            f"Run {run_id}: {metric} became NaN or infinite{at}.",
            model_name=model_name,
            run_id=run_id,
            context={"metric": metric, "step": step},
        )

    @_never_raises
    def notify_error(
        self,
        error: BaseException | str,
        model_name: str | None = None,
        run_id: str | None = None,
    ) -> NotifyResult:
        details, context = _error_context(error)
        return self._send(
            EventType.ERROR_OCCURRED,
            "Error" + (f": {_run_label(model_name, run_id)}" if (model_name or run_id) else ""),
            details or "",
            model_name=model_name,
            run_id=run_id,
            error_details=details,
            context=context,
        )
