"""One "host" of the shared-store tests and benchmark: a process with its own AFS_HOME
and AFS_HOST on the store AFS_STORE_URL names, sending to a loopback webhook.

Settings (environment): NODE_URL the webhook, NODE_EVENTS how many events, NODE_MODE
``events`` (one each, numbered), ``ranks`` (NODE_RANKS ranks' reports of one failure)
or ``hang`` (a channel whose every send hangs: it claims and holds leases), NODE_RATE
"per_second,burst" for the channel, NODE_GO a file to wait for before sending,
NODE_SPACING seconds between events, NODE_FLUSH seconds to flush. Prints one JSON
line: notify() times, and whether the flush left nothing pending.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from afs_core import NotificationManager
from afs_core.channels.base import Channel, RateLimit
from afs_core.errors import TransientDeliveryError
from afs_core.events import EventType, NotificationEvent, NotificationLevel
from afs_core.plugins import PluginHost
from afs_core.source import Source


class Hook(Channel):
    """Posts each event's id, title and context to the loopback server, one connection each."""

    name = "hook"
    timeout = 5.0

    def __init__(self, url: str, rate: RateLimit | None, hang: bool) -> None:
        self.webhook_url, self.rate_limit, self.hang = url, rate, hang
        self.timeout = float(os.environ.get("NODE_TIMEOUT", "5"))  # a lease outlasts three of these

    def format(self, event: NotificationEvent) -> Any:
        return {"event_id": event.event_id, "title": event.title, "host": event.source.host,
                "context": {k: v for k, v in event.context.items() if isinstance(v, (str, int, float))}}

    def deliver(self, message: Any) -> None:
        if self.hang:
            time.sleep(600)
        request = urllib.request.Request(self.webhook_url, data=json.dumps(message).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
        except OSError as exc:
            raise TransientDeliveryError(str(exc)) from None


def main() -> None:
    env = os.environ
    rate = env.get("NODE_RATE")
    limit = RateLimit(float(rate.split(",")[0]), int(rate.split(",")[1])) if rate else None
    mode = env.get("NODE_MODE", "events")
    host = env["AFS_HOST"]
    plugins = PluginHost(load_entry_points=False, strict=True)
    manager = NotificationManager.from_env(plugins=plugins)
    manager.register_channel("hook", Hook(env["NODE_URL"], limit, hang=mode == "hang"))
    print(json.dumps({"ready": host}), flush=True)
    go = env.get("NODE_GO")
    deadline = time.monotonic() + 60
    while go and not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    spacing = float(env.get("NODE_SPACING", "0"))
    times = []
    count = int(env.get("NODE_EVENTS", "10"))
    for number in range(count):
        if mode == "ranks":
            ranks = int(env.get("NODE_RANKS", "8"))
            first = int(env.get("NODE_FIRST_RANK", "0"))
            event = NotificationEvent(EventType.TRAINING_FAILED, "Training failed", "NCCL timeout",
                                      level=NotificationLevel.ERROR, run_id="job-64", error_details="NCCL timeout",
                                      source=Source(host=host, pid=os.getpid(), rank=first + number % ranks,
                                                    world_size=int(env.get("NODE_WORLD", "64"))))
            started = time.perf_counter()
            manager.send_event(event)
        else:
            started = time.perf_counter()
            manager.notify(f"{host} event {number}", "shared store", run_id=f"run-{host}")
        times.append(time.perf_counter() - started)
        if spacing:
            time.sleep(spacing)
    flushed = manager.flush(float(env.get("NODE_FLUSH", "60")))
    times.sort()
    print(json.dumps({"host": host, "sent": count, "flushed": flushed,
                      "median": times[len(times) // 2] if times else 0.0,
                      "p99": times[min(len(times) - 1, int(len(times) * 0.99))] if times else 0.0}), flush=True)
    manager.close(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
