"""Start-up cost of AFS notifications, measured in fresh interpreters.

Reports the median wall time, over many runs, of:
  1. ``python -c pass``                         (the baseline)
  2. ``python -c "import afs_core"``            (added import time; target < 50 ms)
     and ``from afs_core import NotificationManager`` (the package loads names lazily,
     so this is what a training script really pays)
  3. interpreter start to the first ``notify()`` returning, with every installed
     plugin loaded and the console channel writing to /dev/null (target < 100 ms
     over the baseline), to the child's exit;
  4. the same to the line the child prints once ``notify()`` returned (its exit and
     the engine's stop not counted), each run paired with a ``python -c`` printing a
     line: the figure #19 sets a target for (+60 ms with four channels installed).

Run it with the interpreter whose environment you want to measure, e.g. after the
README's install: ``.venv/bin/pip install -q . plugins/* && .venv/bin/python benchmarks/startup.py``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_apprise import first_line_ms  # noqa: E402  (its bounded child, read to its first line)

FIRST_NOTIFY = (
    "from afs_core import NotificationManager\n"
    "manager = NotificationManager.from_env()\n"
    "manager.notify_training_started(model_name='bench', run_id='r1', epochs=1)\n"
)


def median_ms(code: str, runs: int, env: dict[str, str], cwd: str) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A blocking wait: Popen.wait(timeout=...) polls in sleeps of up to 50 ms,
        # which would be measured too. The watchdog bounds a hung child instead.
        watchdog = threading.Timer(60, child.kill)
        watchdog.start()
        returncode = child.wait()
        elapsed = time.perf_counter() - started
        watchdog.cancel()
        if returncode != 0:
            raise SystemExit(f"{code!r} exited with {returncode}")
        times.append(elapsed * 1000)
    return statistics.median(times)


def paired_ms(code: str, runs: int, env: dict[str, str], cwd: str) -> float:
    """Median over ``runs`` pairs of (start to ``code``'s first line) less (the same for a
    bare interpreter printing one)."""
    bare = "print('returned', flush=True)\n"
    return statistics.median(first_line_ms(sys.executable, code, env, cwd)
                             - first_line_ms(sys.executable, bare, env, cwd) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_")}
    with tempfile.TemporaryDirectory() as cwd:  # no .env, no source tree on sys.path
        median_ms("pass", 5, env, cwd)  # warm the file cache
        median_ms(FIRST_NOTIFY, 5, env, cwd)
        base = median_ms("pass", args.runs, env, cwd)
        imported = median_ms("import afs_core", args.runs, env, cwd)
        manager_import = median_ms("from afs_core import NotificationManager", args.runs, env, cwd)
        first = median_ms(FIRST_NOTIFY, args.runs, env, cwd)
        to_line = paired_ms(FIRST_NOTIFY + "print('returned', flush=True)\n", args.runs, env, cwd)
        plugins = subprocess.run(
            [sys.executable, "-c", "from afs_core.plugins import get_plugins;"
             "print(','.join(sorted(get_plugins().channels)))"],
            env=env, cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, medians; channels: {plugins}")
    print(f"python -c pass                        {base:7.1f} ms")
    print(f"import afs_core                       {imported:7.1f} ms  (+{imported - base:.1f} ms)")
    print(f"from afs_core import NotificationManager {manager_import:4.1f} ms  (+{manager_import - base:.1f} ms)")
    print(f"start to first notify() returning     {first:7.1f} ms  (+{first - base:.1f} ms), to the child's exit")
    print(f"the same, to its line after notify()  +{to_line:.1f} ms over a bare interpreter's line (paired runs)")


if __name__ == "__main__":
    main()
