"""How often notify() wakes the courier on the socket, and what one notify() costs the
caller, at three rates: a burst, 2 ms of Python work between events (the training loop
of compare_apprise.py), and 20 ms between events. Each rate in a fresh process posting
to one loopback webhook (afs-webhook), after a flush (the courier started and idle).

    python benchmarks/wake_ups.py [--events 2000] [--runs 2]

While the courier takes in events it reads how far the journal goes from the bell
(afs_core/delivery/bell.py), and notify() sends nothing; a wake-up is a system call and,
on a virtual machine, an interrupt to another CPU. Counts the wake-ups by wrapping the
link's private ``_say``: a diagnostic, not an API. Needs afs-core and afs-webhook installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_apprise  # noqa: E402  (its loopback server)

CHILD = r"""
import json, os, statistics, sys, time
from afs_core import NotificationManager
count, gap = int(sys.argv[1]), float(sys.argv[2])
manager = NotificationManager.from_env()
manager.notify_epoch_completed("bench", "run-1", 0, metrics={"loss": 1.0})
manager.flush(timeout=10)
link = manager._engine
wake_ups = 0
say = link._say

def counting(line):
    global wake_ups
    if line.startswith(b"P "):
        wake_ups += 1
    return say(line)

link._say = counting
costs = []
for step in range(1, count + 1):
    started = time.perf_counter_ns()
    manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
    costs.append(time.perf_counter_ns() - started)
    until = time.perf_counter() + gap
    while time.perf_counter() < until:  # Python work, as a training step's
        pass
flushed = manager.flush(timeout=120)
print(json.dumps({"wake_ups": wake_ups, "caller_us": statistics.median(costs) / 1000, "flushed": flushed}))
manager.close(timeout=10)
"""

RATES = (("a burst", 0.0, 1.0), ("2 ms of work between events", 0.002, 1.0), ("20 ms between events", 0.02, 0.05))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    server = compare_apprise.Server(delay=0.0)
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; one loopback webhook at {server.base}",
              flush=True)
        for label, gap, share in RATES:
            count = max(int(args.events * share), 10)
            found = []
            for _ in range(args.runs):
                with compare_apprise.webhook_env(f"http://{server.base}/wake") as env:  # a store of its own
                    done = subprocess.run([sys.executable, "-c", CHILD, str(count), str(gap)], env=env,
                                          cwd=env["AFS_HOME"], capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    raise SystemExit(f"the run exited with {done.returncode}:\n{done.stderr[-3000:]}")
                found.append(json.loads(done.stdout.strip().splitlines()[-1]))
            wake_ups = ", ".join(str(f["wake_ups"]) for f in found)
            caller = statistics.median(f["caller_us"] for f in found)
            print(f"{label:<30} {count:>5} events: wake-ups {wake_ups} (one per event without the bell); "
                  f"caller median {caller:.1f} us; all flushed: {all(f['flushed'] for f in found)}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
