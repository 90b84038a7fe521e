"""AFS and Apprise measured side by side in one run, against the same loopback server.

AFS runs from this interpreter (the project installed: afs-core and afs-webhook);
Apprise from a throwaway virtual environment made here on first use
(``benchmarks/.venv-apprise``, or ``--apprise-venv``) with ``pip install apprise``:
Apprise is a benchmark-only tool, never a dependency of ours. Each side runs in its
own fresh subprocess, so start-up and imports are measured honestly and the two never
share a GIL; the server (asyncio, HTTP/1.1 keep-alive, each response written in one
piece, an optional delay, the arrival time of each request reported) is a process of
its own.

The pair: AFS's generic JSON webhook channel (``afs-webhook``: one signed JSON POST
per event, a burst's requests written back to back on one connection and answered in
order; ``AFS_THROTTLE_SECONDS=0`` so no repeated event is held back) against Apprise's
JSON notifier (``json://127.0.0.1:PORT/path``: one JSON POST per call). The server
counts a request as it reads it, whichever way it came.

Then a training loop (3,000 steps of ~0.2 ms of pure-Python work) without AFS, with
a manager and no events (begun at once after from_env(), and 2 s later, once the
engine's start is over), with a notify() every 10 steps, with log_metrics() every
step, and with Apprise's notify() every 10 steps, in alternating rounds of fresh
processes.

    python benchmarks/compare_apprise.py            # the full run (about 2 minutes on 2 cores)
    python benchmarks/compare_apprise.py --quick    # a smoke run (about 30 s)

It measures the afs_core this interpreter imports; to measure a commit whatever the
working tree holds: ``git archive HEAD | tar -x -C /tmp/afs-head`` and run with
``PYTHONPATH=/tmp/afs-head:/tmp/afs-head/plugins/afs-webhook``.
The ratios are the claims; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / ".venv-apprise"

# One loopback server for every figure: a minimal asyncio HTTP/1.1 keep-alive
# responder (see FAST_SERVER in engine.py) that answers a path starting with /slow
# after argv[1] seconds, writes head and body with one write, and prints
# "<time.time()> <path>" for each request as it arrives.
SERVER = """
import asyncio, os, sys, time
DELAY = float(sys.argv[1])
BODY = b'{"ok": true}'
ANSWER = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(BODY)) + BODY

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            arrived = time.time()
            lines = head.split(b"\\r\\n")
            path = lines[0].split(b" ")[1].decode()
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            sys.stdout.write("%r %s\\n" % (arrived, path))
            sys.stdout.flush()
            if path.startswith("/slow"):
                await asyncio.sleep(DELAY)
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    os._exit(0)  # the benchmark is done; open keep-alive connections need no goodbye

asyncio.run(main())
"""

# The sending side, run by either interpreter: argv[1] is a JSON job. It prints one
# JSON line of results. Only the side's own library is imported.
WORKER = r"""
import json, os, sys, time
job = json.loads(sys.argv[1])
side, what, url = job["side"], job["what"], job["url"]

if side == "afs":
    from afs_core import NotificationManager
    manager = NotificationManager.from_env()  # WEBHOOK_URL, WEBHOOK_SECRET, AFS_THROTTLE_SECONDS=0 in env
    assert "webhook" in manager.channels, manager.channels
    def send(step):
        manager.notify_epoch_completed("bench", "run-1", step, metrics={"loss": 1.0 / (step + 1)})
    def finish(timeout):
        courier = getattr(manager._engine, "process", None)  # AFS's courier process, where one delivers
        closed = manager.close(timeout=timeout)
        if courier is not None:  # gone before the next run starts: it must not share its CPU time
            courier.wait(timeout)
        return closed
    def warm():
        manager.flush(30)  # the engine (or its courier) started, the first request delivered
elif side == "apprise":
    import apprise
    notifier = apprise.Apprise()
    assert notifier.add(url)
    def send(step):
        notifier.notify(title="Epoch %d completed" % step, body="bench run-1: loss=%.6f" % (1.0 / (step + 1)))
    def finish(timeout):
        return True
    def warm():
        pass
else:  # neither: the training loop without notifications
    def finish(timeout):
        return True

out = {}
if what == "caller":  # figure 1: caller time against a webhook answering after the delay
    costs = []
    for step in range(job["count"]):
        started = time.perf_counter()
        send(step)
        costs.append(time.perf_counter() - started)
    out["costs"] = costs
    finish(job["count"] * 0.5)
elif what == "throughput":  # figure 3: count notify() calls (AFS: then flush)
    out["first"] = time.time()
    for step in range(job["count"]):
        send(step)
    out["submitted"] = time.time()
    if side == "afs":
        out["flushed"] = manager.flush(timeout=job["flush_timeout"])
    out["returned"] = time.time()
    finish(5)
elif what == "latency":  # figure 4: notify() on an idle sender to the request on the wire
    send(10**6)  # the connection made, the engine started: the idle sender is a warm one
    warm()
    time.sleep(0.2)
    sent = []
    for step in range(job["count"]):
        time.sleep(job["gap"])
        sent.append(time.time())
        send(step)
    out["sent"] = sent
    finish(5)
elif what == "loop":  # the training loop: 3,000 steps of pure-Python work
    variant, steps, work = job["variant"], job["steps"], job["work"]
    def step_work(n=work):
        total = 0
        for i in range(n):
            total += i * i
        return total
    if variant == "b2":
        time.sleep(2.0)  # past the engine's start (its store opened and checked, its first looks)
    warmed = time.perf_counter() + 0.3
    while time.perf_counter() < warmed:  # every variant starts its loop on a CPU already busy (its clock up)
        step_work()
    started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    if variant in ("a", "b", "b2"):
        for step in range(steps):
            step_work()
    elif variant in ("c", "e"):
        for step in range(steps):
            step_work()
            if step % 10 == 0:
                send(step)
    elif variant == "d":
        for step in range(steps):
            step_work()
            manager.log_metrics(step=step, run_id="run-1", loss=1.0 / (step + 1))
    out["seconds"] = time.perf_counter() - started
    out["cpu"] = time.process_time() - cpu  # every thread of the process, the engine's too
    out["own"] = time.thread_time() - own  # the training thread's alone
    finish(30)
elif what == "paired":  # the loop without and with notify() every 10 steps, in turns, in one process
    steps, work = job["steps"], job["work"]
    def step_work(n=work):
        total = 0
        for i in range(n):
            total += i * i
        return total
    warm()  # the engine (or its courier) started and idle before the first block
    held = None
    if job.get("hold"):  # the courier stopped while a block runs: what the training process pays by itself
        import signal
        held = manager._engine.process
    warmed = time.perf_counter() + 0.3
    while time.perf_counter() < warmed:
        step_work()
    pairs = []
    for block in range(job["rounds"]):
        took, inside = {}, 0.0
        for kind in (("plain", "notify") if block % 2 == 0 else ("notify", "plain")):
            if held is not None:
                os.kill(held.pid, signal.SIGSTOP)
            started = time.perf_counter()
            for step in range(steps):
                step_work()
                if kind == "notify" and step % 10 == 0:
                    called = time.perf_counter()
                    send(step)
                    inside += time.perf_counter() - called
            took[kind] = time.perf_counter() - started
            if held is not None:
                os.kill(held.pid, signal.SIGCONT)
            if kind == "notify" and side == "afs":
                manager.flush(30)  # what it accepted is delivered before the next block starts
        pairs.append([took["plain"], took["notify"], inside])
    out["pairs"] = pairs
    finish(30)
print(json.dumps(out), flush=True)
"""

# Figure 2: a fresh interpreter from start to the first notify() returning; the child
# says so on stdout, the parent takes the time when it reads that line.
STARTUP = {
    "afs": ("from afs_core import NotificationManager\n"
            "manager = NotificationManager.from_env()\n"
            "manager.notify_training_started(model_name='bench', run_id='r1', epochs=1)\n"
            "print('returned', flush=True)\n"),
    "apprise": ("import apprise\n"
                "notifier = apprise.Apprise()\n"
                "notifier.add({url!r})\n"
                "notifier.notify(title='Training started', body='bench r1: 1 epoch')\n"
                "print('returned', flush=True)\n"),
    "base": "print('returned', flush=True)\n",  # `python -c pass`, with the same one line out
}


class Server:
    """The loopback server's process, and the arrival times it reports."""

    def __init__(self, delay: float) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", SERVER, str(delay)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self.arrivals: queue.Queue[tuple[float, str]] = queue.Queue()
        assert self.child.stdout is not None
        port = self.child.stdout.readline().strip()
        if not port:
            raise SystemExit("the loopback server did not start")
        self.base = f"127.0.0.1:{port}"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            stamp, _, path = line.strip().partition(" ")
            self.arrivals.put((float(stamp), path))

    def drain(self) -> None:
        while True:
            try:
                self.arrivals.get_nowait()
            except queue.Empty:
                return

    def collect(self, count: int, timeout: float) -> list[float]:
        """The arrival times of the next ``count`` requests, waiting ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        stamps = []
        while len(stamps) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"only {len(stamps)} of {count} requests reached the server in {timeout:.0f} s")
            try:
                stamps.append(self.arrivals.get(timeout=left)[0])
            except queue.Empty:
                continue
        return stamps

    def stop(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        try:
            self.child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait(timeout=5)


@contextlib.contextmanager
def webhook_env(url: str) -> Iterator[dict[str, str]]:
    """This environment for an AFS process posting to ``url`` with afs-webhook alone: a
    store of its own (removed afterwards), no repeated event held back (for the scripts
    beside this one)."""
    home = tempfile.mkdtemp(prefix="afs-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFS_", "WEBHOOK_", "APPRISE_"))}
    env.update(AFS_HOME=home, AFS_LOAD_PLUGINS="webhook", AFS_THROTTLE_SECONDS="0",
               WEBHOOK_URL=url, WEBHOOK_SECRET="whsec_" + base64.b64encode(os.urandom(32)).decode())
    try:
        yield env
    finally:
        shutil.rmtree(home, ignore_errors=True)


class Bench:
    def __init__(self, apprise_python: str, server: Server, quick: bool) -> None:
        self.python = {"afs": sys.executable, "apprise": apprise_python}
        self.server = server
        self.quick = quick
        self.root = tempfile.mkdtemp(prefix="afs-vs-apprise-")
        self.cwd = os.path.join(self.root, "cwd")  # no .env, no source tree on sys.path
        os.mkdir(self.cwd)
        self.secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        self.runs = 0
        self.delivery = "process"  # AFS_DELIVERY for figures 1-5

    def url(self, side: str, path: str) -> str:
        return (f"http://{self.server.base}{path}" if side == "afs"
                else f"json://{self.server.base}{path}")

    def env(self, side: str, path: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AFS_", "WEBHOOK_", "APPRISE_"))}
        if side == "afs":
            self.runs += 1
            home = os.path.join(self.root, f"home-{self.runs}")  # each process its own store
            env.update(AFS_HOME=home, AFS_LOAD_PLUGINS="webhook", AFS_THROTTLE_SECONDS="0",
                       WEBHOOK_URL=self.url(side, path), WEBHOOK_SECRET=self.secret, AFS_DELIVERY=self.delivery)
        return env

    def work(self, side: str, what: str, path: str, timeout: float, *, settings: dict[str, str] | None = None,
             **job: object) -> dict[str, object]:
        """One worker process; its JSON results. Bounded by ``timeout`` (killed past it)."""
        spec = json.dumps({"side": side, "what": what, "url": self.url(side, path), **job})
        env = {**self.env(side, path), **(settings or {})}
        try:
            done = subprocess.run([self.python[side], "-c", WORKER, spec], env=env, cwd=self.cwd,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{side} {what} took longer than {timeout:.0f} s")
        if done.returncode != 0:
            raise SystemExit(f"{side} {what} exited with {done.returncode}:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def startup_ms(self, side: str, code_side: str) -> float:
        """Milliseconds from starting ``python -c`` to its first line (the notify() returned)."""
        code = STARTUP[code_side].format(url=self.url("apprise", "/start/apprise"))
        return first_line_ms(self.python[side], code, self.env(side, "/start/afs"), self.cwd)


def first_line_ms(python: str, code: str, env: dict[str, str], cwd: str) -> float:
    """Milliseconds from starting ``python -c code`` to its first line, which must say
    ``returned``; the child is then waited for (bounded)."""
    started = time.perf_counter()
    child = subprocess.Popen([python, "-c", code], env=env, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(60, child.kill)  # a blocking read, bounded
    watchdog.start()
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        elapsed = (time.perf_counter() - started) * 1000
        child.stdout.read()
        returncode = child.wait(timeout=30)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
    if line.strip() != "returned" or returncode != 0:
        raise SystemExit(f"a start-up run failed ({returncode}): {code.splitlines()[0]!r}")
    return elapsed


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def ensure_apprise(venv: Path, spec: str) -> str:
    """The Python of a virtual environment holding Apprise, made (bounded) if missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import apprise; print(apprise.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return str(python)
    print(f"making {venv} with {spec} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True, timeout=600)
    return str(python)


def ratio(afs: float, apprise: float) -> str:
    if afs <= 0:
        return "—"
    value = apprise / afs
    return f"Apprise/AFS = {value:,.1f}×" if value >= 10 else f"Apprise/AFS = {value:.2f}×"


def report(label: str, afs: str, apprise: str, relation: str) -> None:
    print(f"{label}\n    AFS {afs:<44} Apprise {apprise:<38} {relation}", flush=True)


def compare(bench: Bench, quick: bool) -> None:
    server = bench.server

    # 1. Caller time against a webhook answering after 200 ms.
    calls = 5 if quick else 20
    medians = {}
    for side in ("afs", "apprise"):
        costs = bench.work(side, "caller", f"/slow/{side}", 120, count=calls)["costs"]
        assert isinstance(costs, list)
        medians[side] = statistics.median(costs) * 1000
    report(f"1. caller time of one notify(), webhook answering after 200 ms (median of {calls})",
           f"{medians['afs']:.3f} ms", f"{medians['apprise']:.1f} ms", ratio(medians["afs"], medians["apprise"]))

    # 2. Start-up to the first notify() returning, over `python -c pass`; interleaved.
    runs = 5 if quick else 20
    times: dict[str, list[float]] = {"base-afs": [], "base-apprise": [], "afs": [], "apprise": []}
    for side in ("afs", "apprise"):  # warm the file cache
        bench.startup_ms(side, side)
    for run in range(runs):
        for side in ("afs", "apprise") if run % 2 else ("apprise", "afs"):
            times[f"base-{side}"].append(bench.startup_ms(side, "base"))
            times[side].append(bench.startup_ms(side, side))
    # each run over the `pass` just before it: the machine's load changes less in between
    over = {side: statistics.median(t - b for t, b in zip(times[side], times[f"base-{side}"], strict=True))
            for side in ("afs", "apprise")}
    report(f"2. start-up to the first notify() returning, over `python -c pass` (median of {runs} paired runs;"
           f" pass: {statistics.median(times['base-afs']):.1f} ms)",
           f"+{over['afs']:.1f} ms", f"+{over['apprise']:.1f} ms", ratio(over["afs"], over["apprise"]))

    # 3. Deliveries to one endpoint: first notify() to the last request received.
    count = 200 if quick else 1000
    repeats = 1 if quick else 3
    spans: dict[str, list[float]] = {"afs": [], "apprise": []}
    submitted: list[float] = []
    for _ in range(repeats):
        for side in ("afs", "apprise"):
            server.drain()
            out = bench.work(side, "throughput", f"/bulk/{side}", 300, count=count, flush_timeout=240)
            last = max(server.collect(count, 60))
            first, calls = out["first"], out["submitted"]
            assert isinstance(first, float) and isinstance(calls, float)
            spans[side].append(last - first)
            if side == "afs":
                submitted.append(calls - first)
    span = {side: statistics.median(values) for side, values in spans.items()}
    report(f"3. {count:,} deliveries to one JSON endpoint, first notify() to the last request received"
           f" (median of {repeats})",
           f"{span['afs']:.2f} s = {count / span['afs']:,.0f}/s",
           f"{span['apprise']:.2f} s = {count / span['apprise']:,.0f}/s", ratio(span["afs"], span["apprise"]))
    print(f"    (AFS's {count:,} notify() calls themselves: {statistics.median(submitted):.2f} s; then delivery)",
          flush=True)

    # 4. notify() on an idle sender to the request on the wire.
    events = 10 if quick else 30
    delays = {}
    for side in ("afs", "apprise"):
        server.drain()
        out = bench.work(side, "latency", f"/idle/{side}", 120, count=events, gap=0.1)
        stamps = server.collect(events + 1, 30)[1:]  # the first was the warm-up
        sent = out["sent"]
        assert isinstance(sent, list)
        delays[side] = [(arrived - at) * 1000 for arrived, at in zip(stamps, sent, strict=True)]
    report(f"4. notify() to the request on the wire, idle sender ({events} events 100 ms apart; median, p90)",
           f"{statistics.median(delays['afs']):.2f} ms, p90 {percentile(delays['afs'], 0.9):.2f} ms",
           f"{statistics.median(delays['apprise']):.2f} ms, p90 {percentile(delays['apprise'], 0.9):.2f} ms",
           ratio(statistics.median(delays["afs"]), statistics.median(delays["apprise"])))


def calibrate(target: float = 0.0002) -> int:
    """The loop count of the step's pure-Python work that takes about ``target`` seconds here."""
    def step_work(n: int) -> int:
        total = 0
        for i in range(n):
            total += i * i
        return total

    n = 1000
    for _ in range(3):
        trials = []
        for _ in range(5):  # the least of five: what the work costs when nothing else runs
            started = time.perf_counter()
            for _ in range(50):
                step_work(n)
            trials.append((time.perf_counter() - started) / 50)
        n = max(1, round(n * target / min(trials)))
    return n


LOOP_VARIANTS = {
    "a": ("afs", "no AFS"),
    "b": ("afs", "a manager (webhook channel, engine started), no events"),
    "b2": ("afs", "the same, the loop begun 2 s after from_env(): the engine idle"),
    "c": ("afs", "notify() every 10 steps, the engine delivering to the loopback webhook"),
    "d": ("afs", "log_metrics(step=..., loss=...) every step"),
    "e": ("apprise", "Apprise notify() every 10 steps (for comparison)"),
}


def training_loop(bench: Bench, quick: bool) -> None:
    steps = 3000
    work = calibrate()
    repeats = 3 if quick else 11
    seconds: dict[str, list[float]] = {variant: [] for variant in LOOP_VARIANTS}
    cpu: dict[str, list[float]] = {variant: [] for variant in LOOP_VARIANTS}
    background: dict[str, list[float]] = {variant: [] for variant in LOOP_VARIANTS}
    for repeat in range(repeats):
        order = list(LOOP_VARIANTS)
        if repeat % 2:  # alternate the order too, so that drift cancels
            order.reverse()
        for variant in order:
            side = LOOP_VARIANTS[variant][0]
            if variant == "a":
                # no AFS: the same worker, as a side that imports nothing
                out = bench.work("loop-a", "loop", "/loop/a", 120, variant="a", steps=steps, work=work)
            else:
                out = bench.work(side, "loop", f"/loop/{variant}", 120, variant=variant, steps=steps, work=work)
            value, used, own = out["seconds"], out["cpu"], out["own"]
            assert isinstance(value, float) and isinstance(used, float) and isinstance(own, float)
            seconds[variant].append(value)
            cpu[variant].append(used)
            background[variant].append(max(used - own, 0.0))
    base = statistics.median(seconds["a"])  # the step time printed
    print(f"5. training loop: {steps:,} steps of pure-Python work ({work} iterations: "
          f"{1000 * base / steps:.3f} ms a step without AFS), "
          f"{repeats} alternating rounds, each run in a fresh process; overhead: the median over the rounds of "
          f"the run against (a) of its round; wall time, the process's CPU time (all its threads), and the CPU "
          f"time its other threads (the engine's) used while the loop ran, against the loop's own time", flush=True)
    for variant, (_, label) in LOOP_VARIANTS.items():
        median = statistics.median(seconds[variant])
        spread = f"{min(seconds[variant]):.3f}–{max(seconds[variant]):.3f} s"
        wall = statistics.median(100 * (v / a - 1) for v, a in zip(seconds[variant], seconds["a"], strict=True))
        used = statistics.median(100 * (v / a - 1) for v, a in zip(cpu[variant], cpu["a"], strict=True))
        engine = statistics.median(100 * b / a for b, a in zip(background[variant], seconds["a"], strict=True))
        extra = "" if variant == "a" else f"  wall {wall:+.2f} %, CPU {used:+.2f} %, engine threads {engine:.2f} %"
        print(f"    ({variant}) {label:<{73 - len(variant)}} {median:.3f} s ({spread}){extra}", flush=True)


PAIRED = {
    "process": ("afs", {"AFS_DELIVERY": "process"}, "AFS, a courier process delivering (the default)"),
    "held": ("afs", {"AFS_DELIVERY": "process"}, "AFS, the courier stopped during each block (SIGSTOP)"),
    "thread": ("afs", {"AFS_DELIVERY": "thread"}, "AFS, delivering from the training process's threads"),
    "apprise": ("apprise", {}, "Apprise notify() (for comparison)"),
}


def paired_loop(bench: Bench, quick: bool) -> None:
    """The training loop's cost of notify() every 10 steps, measured inside each process:
    blocks of the same 3,000 steps without and with it, in turns, a flush between (not
    timed). Fresh processes differ from each other by more than the figure sought (their
    memory laid out differently: several per cent here); blocks of one process do not.
    Beside the wall time: the time inside the notify() calls themselves, and AFS with
    its courier stopped during each block (SIGSTOP), so that what the block pays is the
    training process's own work, not the courier's and the server's beside it."""
    steps, work = 3000, calibrate()
    processes, rounds = (2, 2) if quick else (7, 4)
    walls: dict[str, list[float]] = {mode: [] for mode in PAIRED}
    insides: dict[str, list[float]] = {mode: [] for mode in PAIRED}
    for process in range(processes):
        for mode in (PAIRED if process % 2 == 0 else reversed(list(PAIRED))):
            side, settings, _ = PAIRED[mode]
            out = bench.work(side, "paired", f"/paired/{mode}", 300, settings=settings, steps=steps, work=work,
                             rounds=rounds, hold=mode == "held")
            pairs = out["pairs"]
            assert isinstance(pairs, list)
            walls[mode] += [100 * (notify / plain - 1) for plain, notify, _ in pairs]
            insides[mode] += [100 * inside / plain for plain, _, inside in pairs]
    print(f"6. the same loop, notify() every 10 steps against none, in turns within each process ({processes} "
          f"processes of {rounds} pairs of blocks; median and quartiles over the pairs): the block's wall time, "
          f"and the time spent inside the notify() calls against the block without them", flush=True)
    for mode, (_, _, label) in PAIRED.items():
        print(f"    {label:<58} wall {spread(walls[mode])}; inside notify() {spread(insides[mode])}", flush=True)


def spread(values: Sequence[float]) -> str:
    return (f"{statistics.median(values):+.2f} % "
            f"({percentile(values, 0.25):+.2f} to {percentile(values, 0.75):+.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations: a smoke run")
    parser.add_argument("--apprise-venv", type=Path, default=DEFAULT_VENV,
                        help=f"virtual environment holding Apprise (made if missing; default {DEFAULT_VENV})")
    parser.add_argument("--apprise-spec", default="apprise", help="what pip installs there (default: apprise)")
    parser.add_argument("--delivery", choices=("process", "thread"), default="process",
                        help="AFS_DELIVERY for figures 1-5: a courier process (the default) or the process's threads")
    parser.add_argument("--only", choices=("compare", "loop", "paired"),
                        help="run only the comparison, the training loop (both figures) or its paired figure")
    args = parser.parse_args()

    apprise_python = ensure_apprise(args.apprise_venv, args.apprise_spec)
    version = subprocess.run([apprise_python, "-c", "import apprise; print(apprise.__version__)"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    server = Server(delay=0.2)
    bench = Bench(apprise_python, server, args.quick)
    bench.delivery = args.delivery
    bench.python["loop-a"] = sys.executable
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; Apprise {version} (json://, its JSON "
              f"notifier) vs AFS's webhook channel (afs-webhook, signed JSON, AFS_LOAD_PLUGINS=webhook, "
              f"AFS_THROTTLE_SECONDS=0, AFS_DELIVERY={bench.delivery}); loopback server at {server.base}"
              f"{' [--quick]' if args.quick else ''}",
              flush=True)
        if args.only not in ("loop", "paired"):
            compare(bench, args.quick)
            print("    Apprise's notify() is measured as normally used: synchronous, one service per call. "
                  "Its async_notify() overlaps the services of one call, not successive calls.", flush=True)
        if args.only in (None, "loop"):
            training_loop(bench, args.quick)
        if args.only != "compare":
            paired_loop(bench, args.quick)
    finally:
        server.stop()
        shutil.rmtree(bench.root, ignore_errors=True)


if __name__ == "__main__":
    main()
