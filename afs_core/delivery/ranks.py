"""Which rank of a distributed job sends what, and one message for a failure every rank saw.

Ranks other than the main one send ERROR and CRITICAL only: their start and finish
would repeat rank 0's. A failure the whole job meets (an NCCL timeout) is reported
by every rank; the first report is held for ``MERGE_HOLD`` seconds, later reports
of it within ``MERGE_WINDOW`` join it (the store keeps the merge), and the message
names the ranks. Which rank this process is comes from :mod:`afs_core.source`.
"""

from __future__ import annotations

from afs_core.events import NotificationEvent, NotificationLevel

MERGE_WINDOW = 30.0  # seconds in which the same failure from several ranks is sent once
MERGE_HOLD = 2.0  # seconds the first report waits for the other ranks'


def held_back(event: NotificationEvent, all_ranks: bool = False) -> str | None:
    """Why ``event`` is not sent from this rank, or ``None`` when it goes out."""
    if all_ranks or event.source.is_main_process or event.level >= NotificationLevel.ERROR:
        return None
    return f"held back on rank {event.source.rank}: only the main process sends below ERROR"


def merge_key(event: NotificationEvent) -> str | None:
    """What the same failure seen from several ranks of one run shares; None for an
    event that is not merged (one process, below ERROR, no run id)."""
    size = event.source.world_size or 0
    if size <= 1 or event.level < NotificationLevel.ERROR or not event.run_id:
        return None
    return f"{event.run_id}|{event.event_type.value}|{event.error_details or event.title}"
