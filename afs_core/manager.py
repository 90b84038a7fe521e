"""``NotificationManager``: what training code calls.

A thin facade: each ``notify_*`` method builds its event with the matching
function of :mod:`afs_core.builders`, and :meth:`NotificationManager.send_event`
hands it to the engine (or, with ``AFS_SYNC=true``, delivers it now). Nothing
here raises into the caller: every call returns a
:class:`~afs_core.results.NotifyResult`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

from afs_core import builders, run_context
from afs_core.channels.base import Channel
from afs_core.clock import SYSTEM_CLOCK, Clock
from afs_core.config import env_bool, env_duration, env_float, env_int, load_env
from afs_core.delivery import progress, ranks
from afs_core.delivery.dispatch import deliver_event, enrich_event
from afs_core.delivery.engine import DeliveryEngine, JournalSource
from afs_core.delivery.metrics import MetricEntry
from afs_core.delivery.policy import ChannelPolicy
from afs_core.delivery.retry import RetryPolicy
from afs_core.delivery.store import Store, open_store
from afs_core.errors import ConfigurationError
from afs_core.events import NotificationEvent
from afs_core.plugins import PluginHost, get_plugins
from afs_core.results import ChannelOutcome, DeliveryStatus, NotifyResult

if TYPE_CHECKING:
    from afs_core.delivery.courier import CourierLink

logger = logging.getLogger("afs.manager")

# log_metrics records are told apart across processes sharing a store by this prefix.
_RECORDS_FROM = f"{os.urandom(6).hex()}-"
_records = itertools.count()

_P = ParamSpec("_P")


def _settings_failure(exc: BaseException, channel_class: type[Channel], env: Mapping[str, str]) -> str:
    """What went wrong reading a channel's settings, without the values of its secret ones."""
    from afs_core.redaction import scrub, url_secrets

    secrets = [env.get(s.env, "").strip() for s in getattr(channel_class, "settings", ()) if s.secret]
    found = [part for value in secrets if value for part in url_secrets(value, public_segments=0)]
    return scrub(f"{type(exc).__name__}: {exc}", found)


def _rejected(name: str, exc: BaseException) -> NotifyResult:
    logger.error("afs: notification rejected by %s(): %s", name, exc)
    return NotifyResult(None, rejected=f"{type(exc).__name__}: {exc}")


def _sends(build: Callable[_P, NotificationEvent]) -> Callable[Concatenate[NotificationManager, _P], NotifyResult]:
    """A ``notify_*`` method from a builder: build the event, send it, never raise
    (SystemExit from a plugin included: only Ctrl-C may stop the caller)."""
    name = "notify" if build is builders.custom else f"notify_{build.__name__}"

    @functools.wraps(build)
    def notify(self: NotificationManager, /, *args: _P.args, **kwargs: _P.kwargs) -> NotifyResult:
        try:
            event = build(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            return _rejected(name, exc)
        return self.send_event(event)

    notify.__name__ = notify.__qualname__ = name
    # help() and IDEs show the builder's parameters on the method, returning a NotifyResult.
    signature = inspect.signature(build)  # pluggy has imported inspect already
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    notify.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()], return_annotation="NotifyResult")
    return notify


class NotificationManager:
    """Sends training events to every registered channel.

    By default ``notify*()`` only validates the event, writes it to the local
    outbox and returns; a background engine delivers it (see ``flush``/``close``).

    :param plugins: the plugin host whose hooks shape delivery; default: the
        process-wide one (installed plugins, filtered by ``AFS_LOAD_PLUGINS``).
    :param background: deliver on background threads from a durable outbox
        (default); ``False`` delivers on the caller's thread, now.
    :param store: the outbox and history; default ``afs.db`` in ``AFS_HOME`` or the
        first per-user data directory that can hold it (``afs status`` says where).
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
        self._channels: dict[str, Channel] = {}
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
        self._engine: DeliveryEngine | CourierLink | None = None
        self._source: JournalSource | None = None  # a courier's: the training process's journal
        self._starting = False  # from_env() registering channels: no engine yet
        #: The run ``afs run`` started this process for, if it did.
        self._run = run_context.RunContext.from_env()

    # -- set-up -------------------------------------------------------------------

    @classmethod
    def from_env(
        cls, dotenv_path: str | os.PathLike[str] | None = None, *, plugins: PluginHost | None = None
    ) -> NotificationManager:
        """A manager with every installed channel whose settings are present.

        Reads ``.env`` (``dotenv_path`` or the nearest one), the real environment
        winning. With no channel configured it uses the console channel, unless
        ``AFS_CONSOLE=false``. Raises :class:`~afs_core.errors.ConfigurationError`
        when a channel's settings are present but wrong. Delivery runs in a courier
        process where one can do the same work (``AFS_DELIVERY``; see
        :mod:`afs_core.delivery.courier`), else on this process's threads.
        """
        env = load_env(dotenv_path)
        stall_after = env_duration(env, "AFS_STALL_AFTER")
        manager = cls._from_settings(env, plugins, courier=plugins is None)
        if stall_after is not None:
            manager.watch_progress(stall_after)
        return manager

    @classmethod
    def _from_settings(
        cls, env: Mapping[str, str], plugins: PluginHost | None = None, *, courier: bool = False,
        only: Sequence[str] | None = None, source: JournalSource | None = None,
    ) -> NotificationManager:
        """:meth:`from_env`'s manager from settings read already. ``courier``: deliver from
        a courier process where one can (see :mod:`afs_core.delivery.courier`). A courier
        builds its own with ``only`` the channels the training process has, reading its
        journal as ``source``."""
        plugins = plugins if plugins is not None else get_plugins(env)
        manager = cls(
            plugins=plugins,
            background=not env_bool(env, "AFS_SYNC", False),
            store=open_store(env),
            retry=RetryPolicy(max_attempts=env_int(env, "AFS_MAX_ATTEMPTS", 8, minimum=1)),
            flush_timeout=env_float(env, "AFS_FLUSH_TIMEOUT", 10.0),
            all_ranks=env_bool(env, "AFS_ALL_RANKS", False),
            settings=env,
            retention=(env_float(env, "AFS_HISTORY_DAYS", 30.0) * 86400,
                       env_int(env, "AFS_HISTORY_MAX_EVENTS", 10_000)),
        )
        manager._source = source
        manager._starting = courier  # the engine waits until the channels are known
        for spec in plugins.channels.values():
            if only is not None and spec.name not in only:
                continue
            try:
                channel = spec.channel_class.from_env(env)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{spec.name} channel: {exc}") from None
            except Exception as exc:
                if plugins.strict:
                    raise
                logger.warning("afs: %s channel could not read its settings: %s; skipped", spec.name,
                               _settings_failure(exc, spec.channel_class, env))
                continue
            if channel is not None:
                manager.register_channel(spec.name, channel)
        if (not manager._channels and env_bool(env, "AFS_CONSOLE", True) and "console" in plugins.channels
                and (only is None or "console" in only)):
            manager.register_channel("console", plugins.channels["console"].channel_class())
        manager._starting = False
        if courier and manager.background:
            manager._start(env)
        return manager

    def _start(self, env: Mapping[str, str]) -> None:
        """The engine, or a courier delivering for it where one can (said in the log at
        debug level when not, with why)."""
        from afs_core.delivery import courier

        why = courier.wanted(env, self.store, self._channels, self.plugins, all_ranks=self.all_ranks)
        if why is None:
            try:
                with self._lock:
                    self._engine = courier.CourierLink(
                        self.store, env, list(self._channels), make_local=self._new_engine,
                        flush_timeout=self._flush_timeout)
                return
            except OSError as exc:
                why = f"it could not be started ({exc})"
        logger.debug("afs: no courier: %s; this process delivers", why)
        if self._channels:
            self._get_engine()

    @property
    def plugins(self) -> PluginHost:
        if self._plugins is None:
            self._plugins = get_plugins()
        return self._plugins

    @property
    def channels(self) -> Mapping[str, Channel]:
        """The registered channels by name (read-only view): ``manager.channels.get("email")``.
        ``handlers`` is the same, by its seed-era name."""
        return MappingProxyType(self._channels)

    handlers = channels

    def register_channel(self, name: str, channel: Channel, *, policy: ChannelPolicy | None = None) -> None:
        """Send future events to ``channel`` under ``name``; replaces a channel of that name.

        ``policy`` (minimum level, event types, throttling) defaults to the
        ``AFS_<NAME>_...`` settings. ``register_handler`` is the seed-era name.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"channel name must be a non-empty string, got {name!r}")
        from afs_core.channels.legacy import as_channel  # seed-era handlers: rare, loaded when met

        channel = as_channel(channel)
        settings = self._settings if self._settings is not None else os.environ
        policy = policy or ChannelPolicy.from_env(
            settings, name, getattr(channel, "throttle_seconds", 600.0),
            default_level=getattr(channel, "default_min_level", None),
            below_level=frozenset(getattr(channel, "wanted_below_level", ())))
        with self._lock:
            self._channels = {**self._channels, name: channel}
            self._policies = {**self._policies, name: policy}
            if self._engine is not None:
                self._engine.attach(name, channel, policy)
        if self.background and not self._starting:
            # Start now, not at the first notify: what an earlier process left pending
            # for this channel is delivered even if this one never sends anything.
            self._get_engine()

    def unregister_channel(self, name: str) -> Channel | None:
        """Stop sending to ``name``; returns the channel (``unregister_handler``: seed-era name)."""
        with self._lock:
            channels = dict(self._channels)
            removed = channels.pop(name, None)
            self._channels = channels
            if self._engine is not None:
                self._engine.detach(name)
        return removed

    def register_handler(self, name: str, handler: Channel, *, policy: ChannelPolicy | None = None) -> None:
        """:meth:`register_channel` by its seed-era name (and keyword)."""
        self.register_channel(name, handler, policy=policy)

    unregister_handler = unregister_channel

    # -- the engine -----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store()
        return self._store

    def _get_engine(self) -> DeliveryEngine | CourierLink:
        engine = self._engine
        if engine is not None:  # every notify() after the first: no lock
            return engine
        with self._lock:
            if self._engine is None:
                self._engine = self._new_engine()
            return self._engine

    def _new_engine(self) -> DeliveryEngine:
        """An engine in this process for the channels registered now."""
        engine = DeliveryEngine(self.store, self.plugins, retry=self._retry, flush_timeout=self._flush_timeout,
                                retention=self._retention, source=self._source)
        channels, policies = self._channels, self._policies  # replaced, never mutated: a snapshot
        for name, channel in channels.items():
            engine.attach(name, channel, policies[name])
        return engine

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
        self.stop_watching(timeout)
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
            "registered_handlers": list(self._channels),
            "channel_status": {
                name: {
                    "configured": channel.is_configured(),
                    "handler_type": type(channel).__name__,
                    "target": channel.describe(),
                }
                for name, channel in self._channels.items()
            },
        }

    # -- sending ------------------------------------------------------------------

    def send_event(self, event: NotificationEvent) -> NotifyResult:
        """Send a ready-made event to every registered channel; never raises."""
        try:
            return self._send(event)
        except (Exception, SystemExit) as exc:
            return _rejected("send_event", exc)

    def _send(self, event: NotificationEvent) -> NotifyResult:
        if not isinstance(event, NotificationEvent):
            raise TypeError(f"send_event() needs a NotificationEvent, got {type(event).__name__}")
        event = enrich_event(self.plugins, event)
        self._progress_from(event)
        channels, policies = self._channels, self._policies  # replaced, never mutated: a snapshot
        if not channels and not self._warned_empty:
            self._warned_empty = True
            logger.warning("afs: no notification channel is registered; events go nowhere")
        held = ranks.held_back(event, self.all_ranks)
        if held is None and event.event_type.value in run_context.WATCHED:
            held = self._said_under_afs_run(event)
        if held is not None:
            return NotifyResult(event, {n: ChannelOutcome(n, DeliveryStatus.FILTERED, error=held) for n in channels})
        if not self.background:
            return NotifyResult(event, {n: self._deliver_now(n, ch, policies[n], event) for n, ch in channels.items()})
        return self._get_engine().accept(event, list(channels))

    def _said_under_afs_run(self, event: NotificationEvent) -> str | None:
        """Under ``afs run``: tell the wrapper what this code says about its run; why the
        event is not sent (the wrapper says it), or None."""
        run = self._run
        if run is None or not run.report:
            return None
        entry = {"model_name": event.model_name, "metrics": dict(event.metrics),
                 "final_loss": event.context.get("final_loss"), "title": event.title, "at": time.time()}
        return run_context.report_from_training(run.report, event.event_type.value, event.run_id, entry)

    def _deliver_now(
        self, name: str, channel: Channel, policy: ChannelPolicy, event: NotificationEvent
    ) -> ChannelOutcome:
        if not policy.admits(event):
            return ChannelOutcome(name, DeliveryStatus.FILTERED, error="held back by this channel's settings")
        return deliver_event(self.plugins, name, channel, event)

    # -- progress, and runs that stop making it ------------------------------------------

    _watchdog: progress.ProgressWatchdog | None = None
    _watched: tuple[str | None, str | None] = (None, None)  # (model, run) given to watch_progress
    _progress_run: tuple[str | None, str | None] = (None, None)  # the last run seen making progress
    _stalled_run: tuple[str | None, str | None] = (None, None)  # the run the last stall was told for

    def mark_progress(self, run_id: str | None = None, model_name: str | None = None) -> None:
        """The run made progress (a step, a batch). Cheap enough for every step: it stores
        the time, and takes no lock. Every event of the run sent here counts as progress
        too, except what monitors observe of the machine (cost, GPU, disk)."""
        if run_id is not None:
            known_model, known_run = self._progress_run
            if run_id != known_run or (model_name is not None and model_name != known_model):
                self._progress_run = (model_name or (known_model if run_id == known_run else None), run_id)
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.mark()
        if self._run is not None:
            self._tell_afs_run()

    def _tell_afs_run(self) -> None:
        """Under ``afs run``: say this code makes progress (at most once a second), so that
        ``--stall-after`` sees progress even when nothing is printed."""
        run, now = self._run, time.monotonic()
        if run is not None and run.report and now - self._told_afs_run >= 1.0:
            self._told_afs_run = now
            run_context.touch_alive(run.report)

    _told_afs_run = -1e9

    def log_metrics(
        self, step: int | None = None, run_id: str | None = None, model_name: str | None = None, **metrics: Any
    ) -> None:
        """Record a step's metrics for the run's curves; nothing is sent. Cheap enough for
        every step: the values wait in memory for the engine's ingest thread, which
        records the numeric ones (others are skipped) in the store's history, where
        ``afs dashboard`` draws them and an end-of-run message takes its loss curve from.
        The run is ``run_id``, else the last run seen, else the one ``afs run`` named.
        It marks progress too (:meth:`mark_progress`). Never raises."""
        self.mark_progress(run_id, model_name)
        if not metrics or not self.background:
            return
        try:
            if run_id is None:
                model_name, run_id = model_name or self._progress_run[0], self._progress_run[1]
                if run_id is None and self._run is not None:
                    model_name, run_id = model_name or self._run.model_name, self._run.run_id
            engine = self._engine or self._get_engine()
            engine.record_metrics(MetricEntry(f"{_RECORDS_FROM}{next(_records)}", run_id, model_name, step, metrics,
                                              time.time()))
        except Exception as exc:  # never into the training loop
            logger.debug("afs: metrics not recorded: %s", exc)

    def watch_progress(
        self,
        stall_after: float | str = 1800.0,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> progress.ProgressWatchdog:
        """Tell TRAINING_STALLED once when the run made no progress for ``stall_after``
        seconds (or ``"30m"``, ``"2h"``, ``"1h30m"``), naming where its main thread is and
        carrying that thread's stack, and TRAINING_PROGRESS_RESUMED once when progress comes
        again; then a new stall can be told. ``AFS_STALL_AFTER`` starts this in :meth:`from_env`.

        Progress is any event of the run sent through this manager, :meth:`mark_progress`,
        :meth:`log_metrics` and the framework callbacks' step hooks; after the run completed,
        failed or paused, nothing is told until progress comes again. The stall names the
        last run seen in an event, else ``model_name`` and ``run_id``, else the run ``afs run``
        named. One watchdog thread; watching again replaces it; :meth:`close` stops it; a
        forked child does not inherit it. Raises ValueError for a threshold that is not a
        positive duration.
        """
        if isinstance(stall_after, str):
            from afs_core.config import parse_duration

            stall_after = parse_duration(stall_after)
        clock = clock or (self._store.clock if self._store is not None else SYSTEM_CLOCK)
        watchdog = progress.ProgressWatchdog(stall_after, functools.partial(self._report_stall, clock),
                                             self._report_progress_resumed, clock=clock)
        with self._lock:
            old, self._watchdog = self._watchdog, watchdog
            self._watched = (model_name, run_id)
        if old is not None:
            old.stop(timeout=0)
        return watchdog.start()

    def _progress_from(self, event: NotificationEvent) -> None:
        """An event being sent: progress of its run, or the end of it."""
        if not progress.counts_as_progress(event):
            return
        if event.run_id:
            self._progress_run = (event.model_name, event.run_id)
        watchdog = self._watchdog
        if watchdog is not None:
            if event.event_type in progress.RUN_ENDED:
                watchdog.rest()
            else:
                watchdog.mark()
        if self._run is not None:
            self._tell_afs_run()

    def stop_watching(self, timeout: float | None = None) -> None:
        """Stop the progress watchdog, if one runs (a recovery already marked is still told,
        waiting up to ``timeout`` seconds, at most 2)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop(timeout=min(self._flush_timeout if timeout is None else timeout, 2.0))

    def _stall_subject(self) -> tuple[str | None, str | None]:
        """(model, run) a stall is told for: the last run seen, else the watched one, else afs run's."""
        seen_model, seen_run = self._progress_run
        given_model, given_run = self._watched
        named = self._run
        run = seen_run or given_run or (named.run_id if named is not None else None)
        model = (seen_model if seen_run else None) or given_model or (named.model_name if named is not None else None)
        return model, run

    def _report_stall(self, clock: Clock, silent_for: float) -> None:
        """On the watchdog's thread: the stall, with the main thread's stack, sent (from the
        main process; other ranks hold it back like any warning) and logged on every rank."""
        import datetime as dt

        model, run = self._stalled_run = self._stall_subject()
        since = dt.datetime.fromtimestamp(clock.time() - silent_for, dt.timezone.utc)
        result = self.notify_training_stalled(model, run, silent_for, stack=progress.main_thread_stack(),
                                              last_progress=since)
        if result.event is not None:
            held = ranks.held_back(result.event, self.all_ranks)
            logger.log(logging.WARNING if held else logging.INFO, "afs: %s%s", result.event.message,
                       f" (not sent: {held})" if held else "")

    def _report_progress_resumed(self, stalled_for: float) -> None:
        model, run = self._stalled_run
        result = self.notify_training_progress_resumed(model, run, stalled_for)
        if result.event is not None:
            logger.info("afs: %s", result.event.message)

    # -- one method per kind of event (signatures and texts: afs_core.builders) ------------

    notify = _sends(builders.custom)
    notify_training_started = _sends(builders.training_started)
    notify_training_completed = _sends(builders.training_completed)
    notify_training_failed = _sends(builders.training_failed)
    notify_training_paused = _sends(builders.training_paused)
    notify_training_resumed = _sends(builders.training_resumed)
    notify_training_stalled = _sends(builders.training_stalled)
    notify_training_progress_resumed = _sends(builders.training_progress_resumed)
    notify_checkpoint_saved = _sends(builders.checkpoint_saved)
    notify_checkpoint_loading = _sends(builders.checkpoint_loading)
    notify_evaluation_started = _sends(builders.evaluation_started)
    notify_evaluation_completed = _sends(builders.evaluation_completed)
    notify_evaluation_failed = _sends(builders.evaluation_failed)
    notify_epoch_completed = _sends(builders.epoch_completed)
    notify_batch_processed = _sends(builders.batch_processed)
    notify_loss_improved = _sends(builders.loss_improved)
    notify_loss_degraded = _sends(builders.loss_degraded)
    notify_cost_alert = _sends(builders.cost_alert)
    notify_gpu_memory_warning = _sends(builders.gpu_memory_warning)
    notify_gpu_utilization_low = _sends(builders.gpu_utilization_low)
    notify_disk_space_warning = _sends(builders.disk_space_warning)
    notify_out_of_memory = _sends(builders.out_of_memory)
    notify_nan_detected = _sends(builders.nan_detected)
    notify_error = _sends(builders.error)
