"""Which incidents this channel opened and has not resolved yet, kept in its memory,
and when runs recovered, as far as this process saw.

The engine keeps a channel's memory in the store, so the process that resumes a
run knows the incident the crashed one opened. One entry per dedup key (no index
to rewrite, so processes cannot overwrite each other's keys):

- ``triggering``: a trigger was sent but PagerDuty has not accepted it yet (it may
  be waiting for a retry); a recovery then waits for it instead of finding nothing.
- ``open``: PagerDuty answered 202; a recovery of the run resolves it. A GPU alert
  also records which GPUs it is for, so it is resolved once all of them recovered.

Each entry also keeps ``last``, when the newest trouble triggered under the key
happened (the trigger's own event time), and for a GPU alert the same per GPU
(``gpu_last``). A recovery ends only trouble older than itself: a resolve (re)tried
after a newer trigger of its key (the run failed again while the resolve waited for a
retry, in this process or another) leaves that key open.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from afs_core.channels.memory import ChannelMemory
from afs_core.channels.webhook import json_object

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
    #: When the newest trouble triggered under this key happened (epoch seconds; 0: not
    #: known, an entry written before this was kept).
    last: float = 0.0
    #: The same per GPU, for a GPU alert.
    gpu_last: Mapping[str, float] = attrs.field(factory=dict, eq=False, hash=False)

    def opened_again_after(self, when: float, gpu: str | None = None) -> bool:
        """Whether trouble newer than ``when`` (a recovery's time) was triggered under
        this key, or, given ``gpu``, for that GPU."""
        if gpu is None:
            return self.last > when
        return self.gpu_last.get(gpu, 0.0) > when

    def retriggered(self, when: float, gpu: str | None = None) -> Incident:
        """This entry with trouble at ``when`` (for ``gpu``) noted as its newest, if newer."""
        gpu_last = dict(self.gpu_last)
        if gpu is not None:
            gpu_last[gpu] = max(gpu_last.get(gpu, 0.0), when)
        return attrs.evolve(self, last=max(self.last, when), gpu_last=gpu_last)


class IncidentBook:
    """Open and triggering incidents by dedup key, in a channel's memory."""

    def __init__(self, memory: ChannelMemory) -> None:
        self.memory = memory

    def get(self, key: str) -> Incident | None:
        data = json_object(self.memory.get(_entry(key)))
        if data.get("state") not in (TRIGGERING, OPEN):
            return None
        gpus = data.get("gpus")
        gpu_last = data.get("gpu_last")
        return Incident(key, data["state"], _number(data.get("since")),
                        frozenset(str(g) for g in gpus) if isinstance(gpus, list) else frozenset(),
                        _number(data.get("last")),
                        {str(g): _number(t) for g, t in gpu_last.items()} if isinstance(gpu_last, dict) else {})

    def triggering(self, key: str, when: float, gpu: str | None = None) -> Incident | None:
        """Note a trigger about to be sent, for trouble that happened at ``when`` (for
        ``gpu``): noted before it is sent, so a recovery older than it, retried while it
        is on its way, leaves the key alone. Returns the entry as it was (None: the key
        was not known), for :meth:`refused`."""
        known = self.get(key)
        base = known if known is not None else Incident(key, TRIGGERING, time.time())
        self._put(base.retriggered(when, gpu))
        return known

    def refused(self, key: str, before: Incident | None, when: float, gpu: str | None = None) -> None:
        """PagerDuty refused for good the trigger :meth:`triggering` noted: a key not known
        before is forgotten (there is nothing to wait for or resolve); a known one gets
        back its times, unless a newer trigger was noted since."""
        if before is None:
            self.forget(key)
            return
        now = self.get(key)
        if now is None or now.last != max(before.last, when):
            return
        gpu_last = dict(now.gpu_last)
        if gpu is not None:
            if gpu in before.gpu_last:
                gpu_last[gpu] = before.gpu_last[gpu]
            else:
                gpu_last.pop(gpu, None)
        self._put(attrs.evolve(now, last=before.last, gpu_last=gpu_last))

    def opened(self, key: str, when: float, gpu: str | None = None) -> None:
        """PagerDuty accepted the trigger for ``key``, for trouble at ``when`` (for
        ``gpu``, for a GPU alert)."""
        known = self.get(key)
        base = known if known is not None else Incident(key, OPEN, time.time())
        gpus = base.gpus | {gpu} if gpu is not None else base.gpus
        self._put(attrs.evolve(base.retriggered(when, gpu), state=OPEN, gpus=gpus))

    def recovered_gpu(self, incident: Incident, gpu: str, when: float | None = None) -> frozenset[str]:
        """GPU ``gpu`` of ``incident`` recovered (at ``when``): the GPUs still alerting
        (kept). An alert that named no GPU ends with it, unless it came after ``when``."""
        current = self.get(incident.key) or incident
        ended = {gpu, ANY_GPU}
        if when is not None:
            ended = {g for g in ended if not current.opened_again_after(when, g)}
        left = current.gpus - ended
        if left:
            self._put(attrs.evolve(current, gpus=left))
        return left

    def resolved(self, key: str, when: float | None) -> None:
        """PagerDuty accepted the resolve of a recovery at ``when``: the key is forgotten,
        unless trouble newer than the recovery was triggered under it meanwhile."""
        now = self.get(key)
        if now is not None and when is not None and now.opened_again_after(when):
            return
        self.forget(key)

    def forget(self, key: str) -> None:
        self.memory.set(_entry(key), None)

    def stale(self, incident: Incident) -> bool:
        return incident.state == TRIGGERING and time.time() - incident.since > TRIGGER_PATIENCE

    def known(self, keys: Iterable[str]) -> list[Incident]:
        return [incident for incident in map(self.get, keys) if incident is not None]

    def _put(self, incident: Incident) -> None:
        data: dict[str, Any] = {"state": incident.state, "since": incident.since, "last": incident.last}
        if incident.gpus:
            data["gpus"] = sorted(incident.gpus)
        if incident.gpu_last:
            data["gpu_last"] = dict(sorted(incident.gpu_last.items()))
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


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
