"""Where a pure-Python training loop's overhead goes, part by part of the engine.

The loop of compare_apprise.py (3,000 steps of ~0.2 ms, notify() every 10 steps to a
loopback afs-webhook), each run a fresh process, the variants in alternating order:

    none      no AFS
    idle      a manager and no events, the loop begun 2 s after from_env(): an idle engine
    notify    notify() only: the engine's threads stopped, nothing ingested or delivered
    ingest    the ingest thread on, the channel's worker off: stored, not delivered
    all       the engine as it runs

For each: the median wall-time overhead against ``none`` of its round, how many times
the training thread gave up the CPU while the loop ran (its voluntary context switches
on Linux: each time it had to hand the GIL to an engine thread and wait for it back),
and how many requests reached the server before the loop ended. Reaches into the
engine's private parts to switch them off: a diagnostic, not an API.

    python benchmarks/loop_parts.py [--rounds 9] [--step c]

``--step c`` makes each step's work C code that lets go of the GIL (SHA-256 of a
buffer), as a real step spends its time in a framework's kernels: the engine's
threads then run in the gaps instead of taking the GIL from the loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_apprise  # noqa: E402  (its loopback server)

LOOP = r"""
import json, os, sys, threading, time
variant, work = sys.argv[1], int(sys.argv[2])
if variant != "none":
    from afs_core import NotificationManager
    manager = NotificationManager.from_env()
    engine = manager._get_engine()
    if variant in ("notify", "ingest"):
        engine.detach("webhook")
    if variant == "notify":
        engine._stopping.set()
        engine._ingest_wake.set()
    if variant == "idle":
        time.sleep(2.0)  # past the engine's start (store check, first looks): its idle state

def switches():
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    except (OSError, StopIteration):
        return -1

if sys.argv[3] == "python":
    def step_work(n=work):
        total = 0
        for i in range(n):
            total += i * i
        return total
else:  # work in C that lets go of the GIL, as a framework's kernels and copies do
    import hashlib
    data = bytes(work)
    def step_work():
        return hashlib.sha256(data).digest()

before, started, wall_start = switches(), time.perf_counter(), time.time()
for step in range(3000):
    step_work()
    if variant not in ("none", "idle") and step % 10 == 0:
        manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
print(json.dumps({"seconds": time.perf_counter() - started, "switches": switches() - before,
                  "from": wall_start, "to": time.time()}), flush=True)
os._exit(0)
"""

VARIANTS = ("none", "idle", "notify", "ingest", "all")


def calibrate_c(target: float = 0.0002) -> int:
    """Bytes whose SHA-256 takes about ``target`` seconds here (hashlib lets go of the
    GIL for the whole digest of a buffer this large)."""
    size = 1 << 16
    for _ in range(3):
        data = bytes(size)
        trials = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(50):
                hashlib.sha256(data).digest()
            trials.append((time.perf_counter() - started) / 50)
        size = max(4096, round(size * target / min(trials)))
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--step", choices=("python", "c"), default="python",
                        help="the step's work: pure Python (holds the GIL throughout), or C that lets go of it")
    args = parser.parse_args()
    server = compare_apprise.Server(delay=0.0)
    work = compare_apprise.calibrate() if args.step == "python" else calibrate_c()
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    try:
        for round_ in range(args.rounds):
            for variant in (VARIANTS if round_ % 2 else VARIANTS[::-1]):
                with compare_apprise.webhook_env(f"http://{server.base}/parts") as env:
                    done = subprocess.run([sys.executable, "-c", LOOP, variant, str(work), args.step], env=env,
                                          capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-2000:])
                out = json.loads(done.stdout.strip().splitlines()[-1])
                time.sleep(0.5)  # what the run sent has reached the server
                arrivals = []
                while not server.arrivals.empty():
                    arrivals.append(server.arrivals.get_nowait()[0])
                out["requests"] = sum(1 for at in arrivals if out["from"] <= at <= out["to"])
                results[variant].append(out)
    finally:
        server.stop()
    step = f"{work} iterations of pure Python" if args.step == "python" else f"SHA-256 of {work:,} bytes, in C"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; 3,000 steps (each {step}), "
          f"notify() every 10 steps, {args.rounds} alternating rounds")
    for variant in VARIANTS:
        runs = results[variant]
        overhead = statistics.median(100 * (r["seconds"] / n["seconds"] - 1)
                                     for r, n in zip(runs, results["none"], strict=True))
        print(f"    {variant:<7} {statistics.median(r['seconds'] for r in runs):.3f} s  overhead {overhead:+6.2f} %  "
              f"training thread gave up the CPU {statistics.median(r['switches'] for r in runs):.0f} times  "
              f"requests during the loop {statistics.median(r['requests'] for r in runs):.0f}")


if __name__ == "__main__":
    main()
