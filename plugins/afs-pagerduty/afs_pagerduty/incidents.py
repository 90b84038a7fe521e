"""Which incidents this channel opened and has not resolved yet, kept in its memory,
and when runs recovered, as far as this process saw.

The engine keeps a channel's memory in the store, so the process that resumes a
run knows the incident the crashed one opened. One entry per dedup key (no index
to rewrite, so processes cannot overwrite each other's keys):

- ``triggering``: a trigger was sent but PagerDuty has not accepted it yet (it may
  be waiting for a retry); a recovery then waits for it instead of finding nothing.
- ``open``: PagerDuty answered 202; a recovery of the run resolves it. A GPU alert
  also records which GPUs it is for, so it is resolved once all of them recovered.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs

from afs_core.channels.memory import ChannelMemory

TRIGGERING, OPEN = "triggering", "open"
#: A trigger not accepted within this long was given up by the engine (its retry
#: policy stops after a day): a recovery stops waiting for it.
TRIGGER_PATIENCE = 24 * 3600.0
ANY_GPU = "*"  # a GPU alert that named no GPU


@attrs.frozen
class Incident:
    key: str
    state: str
    since: float
    gpus: frozenset[str] = frozenset()


class IncidentBook:
    """Open and triggering incidents by dedup key, in a channel's memory."""

    def __init__(self, memory: ChannelMemory) -> None:
        self.memory = memory

    def get(self, key: str) -> Incident | None:
        data = _read(self.memory.get(_entry(key)))
        if data.get("state") not in (TRIGGERING, OPEN):
            return None
        since = data.get("since")
        gpus = data.get("gpus")
        return Incident(key, data["state"], float(since) if isinstance(since, (int, float)) else 0.0,
                        frozenset(str(g) for g in gpus) if isinstance(gpus, list) else frozenset())

    def triggering(self, key: str) -> bool:
        """Note a trigger about to be sent; True when the key was not known before (so a
        refused trigger may forget it again)."""
        if self.get(key) is not None:
            return False
        self._put(Incident(key, TRIGGERING, time.time()))
        return True

    def opened(self, key: str, gpu: str | None = None) -> None:
        """PagerDuty accepted the trigger for ``key`` (for ``gpu``, for a GPU alert)."""
        known = self.get(key)
        gpus = known.gpus if known is not None else frozenset()
        if gpu is not None:
            gpus = gpus | {gpu}
        self._put(Incident(key, OPEN, known.since if known is not None else time.time(), gpus))

    def recovered_gpu(self, incident: Incident, gpu: str) -> frozenset[str]:
        """GPU ``gpu`` of ``incident`` recovered: the GPUs still alerting (kept)."""
        left = incident.gpus - {gpu, ANY_GPU}
        if left:
            self._put(attrs.evolve(incident, gpus=left))
        return left

    def forget(self, key: str) -> None:
        self.memory.set(_entry(key), None)

    def stale(self, incident: Incident) -> bool:
        return incident.state == TRIGGERING and time.time() - incident.since > TRIGGER_PATIENCE

    def known(self, keys: Iterable[str]) -> list[Incident]:
        return [incident for incident in map(self.get, keys) if incident is not None]

    def _put(self, incident: Incident) -> None:
        data: dict[str, Any] = {"state": incident.state, "since": incident.since}
        if incident.gpus:
            data["gpus"] = sorted(incident.gpus)
        self.memory.set(_entry(incident.key), json.dumps(data))


class RecentRecoveries:
    """When the runs of dedup keys last completed or resumed, as this process saw it
    (the newest ``size`` keys): a trigger for trouble older than that is not paged.

    A crashed process's trigger is taken from its journal by the next process, which
    may deliver its own "resumed" first (the core stores a process's own events before
    a stopped one's); paging then would wake someone for trouble the run is past, and
    no later recovery would resolve it.
    """

    def __init__(self, size: int = 5000) -> None:
        self._lock = threading.Lock()  # AFS_SYNC sends on the callers' threads
        self._size = size
        self._when: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()

    def saw(self, keys: Iterable[str], when: dt.datetime) -> None:
        with self._lock:
            for key in keys:
                known = self._when.get(key)
                if known is None or when > known:
                    self._when[key] = when
                    self._when.move_to_end(key)
            while len(self._when) > self._size:
                self._when.popitem(last=False)

    def after(self, key: str, happened: dt.datetime) -> dt.datetime | None:
        """When ``key``'s run recovered, if that was after ``happened``."""
        with self._lock:
            recovered = self._when.get(key)
        return recovered if recovered is not None and happened < recovered else None


def _entry(key: str) -> str:
    return f"incident:{key}"


def _read(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
