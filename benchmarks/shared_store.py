"""Several processes on one store, SQLite and PostgreSQL: deliveries per second,
notify() on the caller's thread, and how long a dead host's deliveries wait.

Each process is tests/pg_node.py (its own AFS_HOST) sending to one loopback webhook
(in this process); SQLite is one afs.db under one AFS_HOME on this machine, PostgreSQL
a private server started as tests/pg_server.py starts it (PostgreSQL 15 server
binaries and the [postgres] extra needed; as root the server runs as ``postgres``):

    .venv/bin/pip install -q ".[postgres]"
    .venv/bin/python benchmarks/shared_store.py --processes 8 --events 500
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "tests" / "pg_node.py"

from afs_core.testing import WebhookServer  # noqa: E402


def _pg_server_module() -> Any:
    spec = importlib.util.spec_from_file_location("afs_pg_server", ROOT / "tests" / "pg_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start(base: Path, store_url: str | None, host: str, hook: str, shared_home: bool, **settings: str
           ) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFS_", "NODE_"))}
    env.update(AFS_HOST=host, AFS_HOME=str(base / ("home" if shared_home else host)), AFS_CONSOLE="false",
               NODE_URL=hook, NODE_GO=str(base / "go"), **settings)
    if store_url:
        env["AFS_STORE_URL"] = store_url
    return subprocess.Popen([sys.executable, str(NODE)], env=env, stdout=subprocess.PIPE, text=True)


def throughput(base: Path, store_url: str | None, processes: int, events: int) -> dict[str, float]:
    server = WebhookServer().start()
    try:
        sqlite = store_url is None
        procs = [_start(base, store_url, "bench" if sqlite else f"node-{n}", server.url + "/hook", sqlite,
                        NODE_EVENTS=str(events), NODE_FLUSH="300") for n in range(processes)]
        for proc in procs:
            assert proc.stdout is not None and '"ready"' in proc.stdout.readline()
        started = time.monotonic()
        (base / "go").touch()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            results.extend(json.loads(line) for line in out.splitlines() if line.startswith('{"host"'))
        wall = time.monotonic() - started
        seen = collections.Counter(r.json["event_id"] for r in server.received)
        total = processes * events
        assert len(seen) == total and max(seen.values()) == 1, (len(seen), max(seen.values(), default=0))
        return {"deliveries_per_s": total / wall, "wall_s": wall,
                "notify_median_us": 1e6 * sorted(r["median"] for r in results)[len(results) // 2],
                "notify_p99_us": 1e6 * max(r["p99"] for r in results)}
    finally:
        server.stop()
        (base / "go").unlink(missing_ok=True)


def takeover(base: Path, store_url: str | None, lease: float) -> float:
    """Seconds from SIGKILL of a process holding leases to its deliveries arriving."""
    server = WebhookServer().start()
    sqlite = store_url is None
    settings = {"AFS_LEASE_SECONDS": str(lease), "NODE_TIMEOUT": "1"}
    try:
        dying = _start(base, store_url, "bench" if sqlite else "node-dead", server.url + "/hook", sqlite,
                       NODE_EVENTS="20", NODE_MODE="hang", NODE_FLUSH="600", **settings)
        assert dying.stdout is not None and '"ready"' in dying.stdout.readline()
        (base / "go").touch()
        time.sleep(2.0)  # it has taken its events in and claimed them; its first send hangs
        dying.send_signal(signal.SIGKILL)
        dying.wait(timeout=10)
        killed = time.monotonic()
        taker = _start(base, store_url, "bench" if sqlite else "node-taker", server.url + "/hook", sqlite,
                       NODE_EVENTS="0", NODE_FLUSH="120", **settings)
        deadline = time.monotonic() + 120
        while len(server.received) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = time.monotonic() - killed
        taker.communicate(timeout=120)
        return taken
    finally:
        server.stop()
        (base / "go").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--lease", type=float, default=5.0, help="AFS_LEASE_SECONDS for the takeover")
    args = parser.parse_args()
    pg = _pg_server_module()
    binaries = pg._binaries()
    if binaries is None:
        sys.exit("no PostgreSQL server binaries (apt-get install postgresql)")
    server = pg.PostgresServer(binaries, pg._server_user())
    server.init()
    server.start()
    try:
        for name in ("sqlite", "postgresql"):
            with tempfile.TemporaryDirectory(prefix="afs-bench-") as tmp:
                url = None if name == "sqlite" else server.create_database()
                figures = throughput(Path(tmp), url, args.processes, args.events)
            with tempfile.TemporaryDirectory(prefix="afs-bench-") as tmp:
                url = None if name == "sqlite" else server.create_database()
                figures["takeover_s"] = takeover(Path(tmp), url, args.lease)
            print(f"{name:<11} {args.processes} processes x {args.events} events: "
                  f"{figures['deliveries_per_s']:.0f} deliveries/s ({figures['wall_s']:.1f} s), notify() median "
                  f"{figures['notify_median_us']:.0f} us, p99 {figures['notify_p99_us']:.0f} us; a killed process's "
                  f"deliveries out {figures['takeover_s']:.1f} s after its death (lease {args.lease:g} s)", flush=True)
    finally:
        server.remove()


if __name__ == "__main__":
    main()
