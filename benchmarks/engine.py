"""The delivery engine measured: caller cost, throughput, and a burst against a dead channel.

Runs against loopback webhook servers in their own processes (so they do not
share this interpreter's GIL), with the durable store on, in a temporary AFS_HOME.
Needs afs-core, afs-slack and afs-discord installed:

    .venv/bin/pip install -q . plugins/afs-slack plugins/afs-discord
    .venv/bin/python benchmarks/engine.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = """
import sys, time
from afs_core.testing.loopback import WebhookServer, Scripted
server = WebhookServer()
server.default = Scripted(status=200, body=sys.argv[1], delay=float(sys.argv[2]))
server.start()
print(server.url, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
server.stop()
"""


# For the throughput figure: a minimal asyncio HTTP/1.1 keep-alive responder, so the
# figure measures the engine rather than http.server's header parsing.
FAST_SERVER = """
import asyncio, os, sys, time
STAMPS = sys.argv[2:] == ["stamps"]

async def handle(reader, writer):
    body = sys.argv[1].encode()
    head = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
    answer = head + body
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if STAMPS:  # when each request arrived, for the latency figure
                print(repr(time.time()), flush=True)
            writer.write(answer)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("http://127.0.0.1:%d" % server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    os._exit(0)  # the benchmark is done; open keep-alive connections need no goodbye

asyncio.run(main())
"""


def start_server(body: str = "ok", delay: float = 0.0, fast: bool = False,
                 stamps: bool = False) -> tuple[subprocess.Popen[str], str]:
    argv = ([sys.executable, "-c", FAST_SERVER, body, *(["stamps"] if stamps else [])] if fast
            else [sys.executable, "-c", SERVER, body, str(delay)])
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="afs-bench-", ignore_cleanup_errors=True) as home:  # removed afterwards
        os.environ["AFS_HOME"] = home
        os.environ["AFS_LOAD_PLUGINS"] = "slack,discord"
        measure(args)


def measure(args: argparse.Namespace) -> None:

    from afs_core import NotificationManager
    from afs_core.delivery.policy import ChannelPolicy
    from afs_core.delivery.store import open_store
    from afs_core.plugins import get_plugins
    from afs_discord import DiscordNotifier
    from afs_slack import SlackNotifier

    servers = [start_server(), start_server(), start_server('{"id": "1"}'), start_server('{"id": "1"}')]
    loud = ChannelPolicy(throttle_window=0)
    plugins = get_plugins()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; store in {os.environ['AFS_HOME']}")

    # 1. Caller-side cost of notify() with four channels and the durable store.
    manager = NotificationManager(plugins=plugins, store=open_store())
    for index, (_, url) in enumerate(servers):
        channel = (SlackNotifier(webhook_url=f"{url}/services/T/B/{index}") if index < 2
                   else DiscordNotifier(webhook_url=f"{url}/api/webhooks/{index}/token"))
        manager.register_handler(f"channel{index}", channel, policy=loud)
    costs = []
    for step in range(args.events):
        started = time.perf_counter()
        manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
        costs.append((time.perf_counter() - started) * 1e6)
    print(f"notify() caller cost, {args.events} events x 4 channels: median {statistics.median(costs):.1f} us, "
          f"p99 {percentile(costs, 0.99):.1f} us")
    # 1a. A step's metrics recorded (log_metrics), while those deliveries go on.
    metric_costs = []
    for step in range(args.events):
        started = time.perf_counter()
        manager.log_metrics(step=step, run_id="run-1", loss=1.0 / (step + 1), lr=1e-4)
        metric_costs.append((time.perf_counter() - started) * 1e6)
    print(f"log_metrics() caller cost, {args.events} steps of 2 metrics: median "
          f"{statistics.median(metric_costs):.1f} us, p99 {percentile(metric_costs, 0.99):.1f} us")
    manager.close(timeout=1)

    # 1b. Side by side: a synchronous send to a webhook that answers after 200 ms.
    slow, slow_url = start_server(delay=0.2)
    sync = NotificationManager(plugins=plugins, background=False)
    sync.register_handler("slow", SlackNotifier(webhook_url=f"{slow_url}/services/T/B/slow"), policy=loud)
    sync_costs = []
    for step in range(10):
        started = time.perf_counter()
        sync.notify_epoch_completed("bench", "run-1", step)
        sync_costs.append((time.perf_counter() - started) * 1e6)
    print(f"synchronous send to a 200 ms webhook: median {statistics.median(sync_costs) / 1000:.1f} ms per call")
    background = NotificationManager(plugins=plugins, store=open_store())
    background.register_handler("slow", SlackNotifier(webhook_url=f"{slow_url}/services/T/B/slow2"), policy=loud)
    bg_costs = []
    for step in range(10):
        started = time.perf_counter()
        background.notify_epoch_completed("bench", "run-2", step)
        bg_costs.append((time.perf_counter() - started) * 1e6)
    print(f"the same through the engine: median {statistics.median(bg_costs):.1f} us per call")
    background.close(timeout=0.5)

    # 2. Throughput to one channel with no rate limit of ours, connections reused.
    quick, quick_url = start_server('{"id": "1"}', fast=True)
    servers.append((quick, quick_url))
    fast = DiscordNotifier(webhook_url=f"{quick_url}/api/webhooks/9/throughput")
    throughput = NotificationManager(plugins=plugins, store=open_store())
    throughput.register_handler("fast", fast, policy=loud)
    count = 3000
    started = time.perf_counter()
    results = [throughput.notify_epoch_completed("bench", "run-3", step) for step in range(count)]
    throughput.flush(timeout=120)
    elapsed = time.perf_counter() - started
    delivered = sum(1 for r in results if r.delivered)
    print(f"throughput, one channel: {delivered} deliveries in {elapsed:.2f} s = {delivered / elapsed:.0f}/s "
          f"(from the first notify() to the last delivery, submission included)")
    throughput.close(timeout=1)

    # 2b. Latency: notify() on an idle engine to the request reaching the server.
    stamped, stamped_url = start_server('{"id": "1"}', fast=True, stamps=True)
    servers.append((stamped, stamped_url))
    idle = NotificationManager(plugins=plugins, store=open_store())
    idle.register_handler("idle", DiscordNotifier(webhook_url=f"{stamped_url}/api/webhooks/8/latency"), policy=loud)
    assert stamped.stdout is not None
    delays = []
    for step in range(args.latency_samples):
        time.sleep(0.1)  # idle between events
        sent = time.time()
        idle.notify_epoch_completed("bench", "run-5", step)
        delays.append((float(stamped.stdout.readline()) - sent) * 1000)
    print(f"notify() to the request on the wire, idle engine, {args.latency_samples} events: median "
          f"{statistics.median(delays):.1f} ms, p90 {percentile(delays, 0.9):.1f} ms")
    idle.close(timeout=1)

    # 3. A burst of 10,000 events against a dead channel.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = NotificationManager(plugins=plugins, store=open_store())
    dead.register_handler("dead", SlackNotifier(webhook_url=f"http://127.0.0.1:{dead_port}/services/T/B/dead",
                                                timeout=1), policy=loud)
    before = rss_kib()
    burst_costs = []
    for step in range(10_000):
        started = time.perf_counter()
        dead.notify_epoch_completed("bench", "run-4", step)
        burst_costs.append((time.perf_counter() - started) * 1e6)
    dead.flush(timeout=5)
    after = rss_kib()
    pending = dead.store.pending(["dead"]).total
    print(f"burst of 10,000 to a dead channel: caller median {statistics.median(burst_costs):.1f} us, "
          f"p99 {percentile(burst_costs, 0.99):.1f} us; RSS +{(after - before) / 1024:.1f} MiB; "
          f"{pending} pending in the store, none lost")
    dead.close(timeout=1)

    for child, _ in [*servers, (slow, slow_url)]:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
