"""What one delivery costs the process: N events to one loopback webhook (afs-webhook),
from the first notify() to flush() returning; deliveries a second and the process's CPU
time per event (every thread: notify, ingest, delivery).

    python benchmarks/delivery_cost.py [--events 2000] [--runs 3]

The server (the one compare_apprise.py uses) runs in its own process, so its CPU is not
counted. Needs afs-core and afs-webhook installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_apprise  # noqa: E402  (its loopback server)

CHILD = r"""
import os, sys, time
from afs_core import NotificationManager
manager = NotificationManager.from_env()
count = int(sys.argv[1])
manager.notify_epoch_completed("bench", "run-1", 0, metrics={"loss": 1.0})  # connected, modules loaded
manager.flush(timeout=10)
cpu, started = time.process_time(), time.perf_counter()
for step in range(1, count + 1):
    manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
flushed = manager.flush(timeout=120)
elapsed, used = time.perf_counter() - started, time.process_time() - cpu
print(flushed, elapsed, used)
manager.close(timeout=5)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = compare_apprise.Server(delay=0.0)
    rates, costs = [], []
    try:
        for _ in range(args.runs):
            with compare_apprise.webhook_env(f"http://{server.base}/cost") as env:
                done = subprocess.run([sys.executable, "-c", CHILD, str(args.events)], env=env, capture_output=True,
                                      text=True, timeout=300, cwd=tempfile.gettempdir())
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            flushed, elapsed, used = done.stdout.split()
            if flushed != "True":
                raise SystemExit("not every event was delivered")
            rates.append(args.events / float(elapsed))
            costs.append(1e6 * float(used) / args.events)
            server.drain()
    finally:
        server.stop()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.events} events to one loopback webhook, "
          f"{args.runs} runs")
    print(f"deliveries a second: {min(rates):,.0f}-{max(rates):,.0f} (median {statistics.median(rates):,.0f})")
    print(f"process CPU per event: {min(costs):.0f}-{max(costs):.0f} us (median {statistics.median(costs):.0f} us)")


if __name__ == "__main__":
    main()
