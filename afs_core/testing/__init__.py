"""Test helpers for channel and plugin authors, loaded by pytest automatically.

Installed as a pytest plugin (``pytest11`` entry point), so any project that has
afs-core installed gets these fixtures:

- ``afs_plugins``: a clean :class:`~afs_core.plugins.PluginHost` (the core's own
  plugins only) that is also the process default for the test, so
  ``send_now(channel, event)`` runs through it. Register the plugin under test on it.
- ``recording_channel``: a :class:`RecordingChannel` that keeps what it is sent.
- ``afs_manager``: a synchronous manager on ``afs_plugins`` with ``recording_channel``.
- ``webhook_server``: a :class:`~afs_core.testing.loopback.WebhookServer` on 127.0.0.1 that
  records requests and plays scripted answers, for testing HTTP channels for real.
- ``make_event``: builds a valid :class:`~afs_core.events.NotificationEvent` with overrides.
- ``manual_clock``: a :class:`ManualClock` for stores and engines, moved by
  ``clock.advance(seconds)``, so backoff, holds and leases are tested without sleeping.
- ``without_matplotlib``: matplotlib cannot be imported during the test, as where the
  ``[plots]`` extra is missing, so the text-only path is tested wherever it runs.
- ``afs_isolated_env``: removes AFS, channel and rank settings from the environment,
  points ``AFS_HOME`` at a temporary directory, moves to an empty working directory
  and forgets the waits services asked for, so no developer ``.env`` or earlier test
  leaks into a test (``usefixtures = afs_isolated_env`` applies it everywhere).

and :func:`would_send`, which shows what a channel would send for an event,
:func:`sample_events` (one fixed event per category) and :func:`assert_matches_snapshot`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_core.channels.base import Channel
from afs_core.channels.webhook import HOLDS
from afs_core.clock import Clock
from afs_core.delivery.dispatch import Filtered, enrich_event, render_message
from afs_core.errors import DeliveryError
from afs_core.events import EventType, NotificationEvent
from afs_core.hookspecs import hookimpl
from afs_core.manager import NotificationManager
from afs_core.plugins import PluginHost, get_plugins, use_plugins
from afs_core.source import Source, forget_current_source
from afs_core.testing.loopback import Scripted, WebhookServer

__all__ = [
    "ManualClock",
    "RecordingChannel",
    "Scripted",
    "WebhookServer",
    "assert_matches_snapshot",
    "make_event",
    "sample_events",
    "would_send",
]


class RecordingChannel(Channel):
    """A channel that delivers into a list; set ``fail_with`` to make it fail."""

    name = "recording"

    def __init__(self, fail_with: DeliveryError | None = None) -> None:
        self.messages: list[Any] = []
        self.fail_with = fail_with

    def deliver(self, message: Any) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.messages.append(message)


class ManualClock(Clock):
    """A clock that moves only when told to: ``clock.advance(30)``.

    Give it to a store (``Store(path, clock=clock)``); the engine on that store then
    schedules retries, holds, leases, pacing and flush deadlines by it. A wait on it
    ends when its event is set or the clock was moved past its deadline; it also
    returns after ``real_slice`` real seconds (its callers look again), so nothing
    waits for ever on a clock no one moves.
    """

    def __init__(self, start: float = 1_800_000_000.0, real_slice: float = 0.5) -> None:
        self._wall = start
        self._mono = 1_000.0
        self._lock = threading.Lock()
        self.real_slice = real_slice

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        deadline = None if timeout is None else self.monotonic() + timeout
        give_up = time.monotonic() + self.real_slice
        while not event.wait(0.002):
            if (deadline is not None and self.monotonic() >= deadline) or time.monotonic() >= give_up:
                return event.is_set()
        return True


class _RecordingPlugin:
    """Registers :class:`RecordingChannel` as the ``recording`` channel."""

    @hookimpl
    def afs_register_channels(self, register: Callable[..., None]) -> None:
        register("recording", RecordingChannel)


def make_event(
    event_type: EventType | str = EventType.TRAINING_COMPLETED,
    title: str = "Training completed: tiny-model",
    message: str = "Run run-1 finished.",
    **fields: Any,
) -> NotificationEvent:
    """A valid event with sensible defaults; any field can be overridden."""
    fields.setdefault("model_name", "tiny-model")
    fields.setdefault("run_id", "run-1")
    return NotificationEvent(event_type, title, message, **fields)


def sample_events() -> dict[str, NotificationEvent]:
    """One realistic event per category (and a few more), with a fixed time, id and
    source, so channel payloads can be compared against stored snapshots."""
    fixed: dict[str, Any] = dict(
        timestamp=dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc),
        event_id="0" * 32,
        source=Source(host="gpu-01", pid=4242, rank=0, world_size=8),
        model_name="m",
        run_id="r",
    )
    return {
        "training_completed": NotificationEvent(
            EventType.TRAINING_COMPLETED, "Training completed: m", "Run r finished in 1h 00m, final loss 0.1234.",
            metrics={"accuracy": 0.95}, context={"duration": 3600.0, "final_loss": 0.1234}, tags=["nightly"], **fixed),
        "training_failed": NotificationEvent(
            EventType.TRAINING_FAILED, "Training failed: m", "Run r failed: RuntimeError: CUDA out of memory",
            error_details="RuntimeError: CUDA out of memory",
            context={"traceback": 'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\n'
                                  "RuntimeError: CUDA out of memory"},
            **fixed),
        "checkpoint_saved": NotificationEvent(
            EventType.CHECKPOINT_SAVED, "Checkpoint saved: m", "Run r saved a checkpoint.",
            epoch=3, context={"checkpoint_path": "ckpt/epoch-3"}, **fixed),
        "evaluation_completed": NotificationEvent(
            EventType.EVALUATION_COMPLETED, "Evaluation completed: m", "Run r finished evaluation.",
            metrics={"accuracy": 0.954321, "f1": 0.92}, **fixed),
        "milestone_loss_improved": NotificationEvent(
            EventType.LOSS_IMPROVED, "Loss improved: m", "Loss improved to 0.2.",
            metrics={"loss": 0.2}, context={"previous_loss": 0.3, "step": 100}, **fixed),
        "resource_cost": NotificationEvent(
            EventType.COST_THRESHOLD_EXCEEDED, "Cost threshold exceeded: m",
            "Cost reached $12.50, over the $10.00 threshold.", cost=12.5, context={"threshold": 10.0}, **fixed),
        "error_nan": NotificationEvent(
            EventType.NAN_DETECTED, "NaN detected: m", "Run r: loss became NaN.",
            context={"metric": "loss", "step": 12}, **fixed),
    }


def assert_matches_snapshot(payload: Any, path: Path) -> None:
    """``payload`` as pretty JSON equals the file at ``path``.

    A missing snapshot (or ``UPDATE_SNAPSHOTS=1``) writes the file and fails the
    test, so a snapshot is only ever accepted after someone has read it.
    """
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        pytest.fail(f"snapshot {path.name} written; review it and run again")
    assert text == path.read_text(encoding="utf-8"), f"payload differs from snapshot {path.name}"


def would_send(
    channel: Channel, event: NotificationEvent, plugins: PluginHost | None = None
) -> Any:
    """The message ``channel`` would send for ``event`` after the enrich, filter and
    format hooks ran, without delivering it; ``None`` when a filter holds it back."""
    plugins = plugins or get_plugins()
    try:
        return render_message(plugins, channel, enrich_event(plugins, event))
    except Filtered:
        return None


# Settings that from_env() reads, for the core and the first-party channels, and
# the launcher variables that decide the rank.
ISOLATED_PREFIXES = (
    "AFS_", "SLACK_", "DISCORD_", "SMTP_", "DESKTOP_NOTIFICATIONS_", "WEBHOOK_", "PAGERDUTY_", "NTFY_", "TELEGRAM_",
    "TWILIO_",
)
ISOLATED_NAMES = frozenset(
    {"FROM_EMAIL", "TO_EMAILS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
     "LOCAL_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK",
     "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "SLURM_PROCID", "SLURM_NTASKS",
     "JSM_NAMESPACE_RANK", "KERAS_DISTRIBUTION_PROCESS_ID"}
)


@pytest.fixture
def afs_isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AFS, channel or rank settings, and an empty working directory (returned)."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AFS_HOME", str(tmp_path / "afs-home"))  # never the user's real outbox
    forget_current_source()  # the rank is read once per process: read it for this test
    HOLDS.clear()  # a 429 an earlier test provoked holds nothing here
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture
def afs_plugins() -> Iterator[PluginHost]:
    """A plugin host with only the core's plugins and the ``recording`` channel."""
    host = PluginHost(load_entry_points=False, strict=True)
    host.register(_RecordingPlugin(), name="afs.testing.recording")
    with use_plugins(host):
        yield host


@pytest.fixture
def recording_channel() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def afs_manager(afs_plugins: PluginHost, recording_channel: RecordingChannel) -> NotificationManager:
    """Delivers on the caller's thread, so a test sees the result at once."""
    manager = NotificationManager(plugins=afs_plugins, background=False)
    manager.register_channel("recording", recording_channel)
    return manager


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib cannot be imported during the test, installed or not, as where the
    ``afs-core[plots]`` extra is missing: channels must send their text alone."""
    for name in [name for name in sys.modules if name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "cannot import"
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture(name="make_event")
def make_event_fixture() -> Callable[..., NotificationEvent]:
    return make_event
