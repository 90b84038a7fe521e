"""What one delivery costs: N events to one loopback webhook (afs-webhook), from the
first notify() to flush() returning; deliveries a second and the CPU time per event of
the training process (every thread) and of its courier process, where one delivers
(``--delivery thread``: the training process's threads deliver, as before the courier).

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
courier = getattr(manager._engine, "process", None)

def courier_cpu():  # its user and system time so far (Linux), 0 without a courier
    if courier is None:
        return 0.0
    with open(f"/proc/{courier.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

cpu, other, started = time.process_time(), courier_cpu(), time.perf_counter()
for step in range(1, count + 1):
    manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
flushed = manager.flush(timeout=120)
elapsed, used, courier_used = time.perf_counter() - started, time.process_time() - cpu, courier_cpu() - other
print(flushed, elapsed, used, courier_used)
manager.close(timeout=5)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--delivery", choices=("process", "thread"), default="process",
                        help="AFS_DELIVERY: a courier process delivers (the default), or the process's threads")
    args = parser.parse_args()
    server = compare_apprise.Server(delay=0.0)
    rates, costs, courier_costs = [], [], []
    try:
        for _ in range(args.runs):
            with compare_apprise.webhook_env(f"http://{server.base}/cost") as env:
                env["AFS_DELIVERY"] = args.delivery
                done = subprocess.run([sys.executable, "-c", CHILD, str(args.events)], env=env, capture_output=True,
                                      text=True, timeout=300, cwd=tempfile.gettempdir())
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            flushed, elapsed, used, courier_used = done.stdout.split()
            if flushed != "True":
                raise SystemExit("not every event was delivered")
            rates.append(args.events / float(elapsed))
            costs.append(1e6 * float(used) / args.events)
            courier_costs.append(1e6 * float(courier_used) / args.events)
            server.drain()
    finally:
        server.stop()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.events} events to one loopback webhook, "
          f"{args.runs} runs, AFS_DELIVERY={args.delivery}")
    print(f"deliveries a second: {min(rates):,.0f}-{max(rates):,.0f} (median {statistics.median(rates):,.0f})")
    print(f"the training process's CPU per event: {min(costs):.0f}-{max(costs):.0f} us "
          f"(median {statistics.median(costs):.0f} us)")
    if args.delivery == "process":
        print(f"its courier's CPU per event: {min(courier_costs):.0f}-{max(courier_costs):.0f} us "
              f"(median {statistics.median(courier_costs):.0f} us)")


if __name__ == "__main__":
    main()
