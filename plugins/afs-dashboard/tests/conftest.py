"""Fixtures for the dashboard's tests: a real ``afs dashboard`` process on a store filled
by real ``notify()`` and ``log_metrics()`` calls, a loopback channel, and headless Chromium.

Chromium (Debian's ``chromium`` and ``chromium-driver``) missing: the browser tests
skip, saying so, except under ``AFS_CI=1``, where they fail.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_core.testing.loopback import Scripted, WebhookServer

CHROMIUM = os.environ.get("AFS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AFS_CHROMEDRIVER", "/usr/bin/chromedriver")
# Read once at import: the isolation fixture clears AFS_* settings for each test.
IN_CI = os.environ.get("AFS_CI") == "1"
ARTEFACTS = os.environ.get("AFS_ARTEFACTS")

#: A third-party channel, installed through an entry point like any other: posts each
#: event's id, type and title as JSON to HOOK_URL; a 4xx answer is a permanent failure, a 5xx
#: one is retried (after its Retry-After).
HOOK_PLUGIN = """
import json
import urllib.error
import urllib.request

from afs_core import Channel, PermanentDeliveryError, Setting, TransientDeliveryError, hookimpl

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Hook(Channel):
    settings = (Setting("HOOK_URL", "url", required=True),)

    def __init__(self, url):
        self.url = url

    def format(self, event):
        return {"id": event.event_id, "type": event.event_type.value, "title": event.title}

    def deliver(self, message):
        request = urllib.request.Request(self.url, data=json.dumps(message).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with OPENER.open(request, timeout=5) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            words = f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
            if exc.code < 500:
                raise PermanentDeliveryError(words) from None
            after = exc.headers.get("Retry-After")
            raise TransientDeliveryError(words, retry_after=float(after) if after else None) from None
        except OSError as exc:
            raise TransientDeliveryError(f"could not connect: {exc}") from None


@hookimpl
def afs_register_channels(register):
    register("hook", Hook)
"""


def install_hook_channel(site: Path) -> None:
    """The ``hook`` channel laid out in ``site`` as pip would install it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "afs_test_hook.py").write_text(textwrap.dedent(HOOK_PLUGIN), encoding="utf-8")
    info = site / "afs_test_hook-1.0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: afs-test-hook\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[afs]\nhook = afs_test_hook\n")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFS_", "HOOK_"))}
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


class Dashboard:
    """``afs dashboard`` in its own process; ``url`` is where it listens."""

    def __init__(self, env: dict[str, str], *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "afs_core", "dashboard", "--port", "0", *args], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"afs dashboard did not start within 30 s: {''.join(self.output)}") from None
            if "http://" in line:
                self.url = line.split("http://", 1)[1].split()[0].rstrip("/")
                self.url = "http://" + self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def chromium_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(path) or shutil.which(path))]
    if missing:
        reason = (f"headless Chromium is not installed ({', '.join(missing)} missing): "
                  "apt-get install chromium chromium-driver")
        if IN_CI:
            pytest.fail(f"AFS_CI=1: the browser tests must run, but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $AFS_ARTEFACTS, else a temporary folder (named in the summary)."""
    folder = Path(ARTEFACTS) if ARTEFACTS else tmp_path_factory.mktemp("dashboard-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    _saved.append(folder)
    return folder


_saved: list[Path] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for folder in _saved:
        shots = sorted(folder.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"dashboard screenshots ({len(shots)}): {folder}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    # The viewer is in Tokyo: times on the pages must be shown in its zone, not the server's.
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": "Asia/Tokyo"})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


FILL = """
from afs_core import NotificationManager

manager = NotificationManager.from_env()
# The first delivery is refused by the service (a revoked token): it goes dead.
manager.notify_training_started(model_name="tiny-gpt", run_id="run-done", epochs=3, batch_size=4)
manager.flush(10)
for step in range(25):
    manager.log_metrics(step=step, run_id="run-done", model_name="tiny-gpt", loss=2.0 / (step + 1), accuracy=step / 25)
manager.notify("<img src=x onerror=alert(1)>", "<script>alert(2)</script> & more", run_id="run-done",
               model_name="tiny-gpt")
manager.notify_cost_alert(current_cost=12.5, threshold=10.0, model_name="tiny-gpt", run_id="run-done")
manager.notify_training_completed(model_name="tiny-gpt", run_id="run-done", duration=360.0, final_loss=0.08)
manager.notify_training_started(model_name="tiny-gpt", run_id="run-live", epochs=9, batch_size=4)
manager.close(timeout=10)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with two runs (one completed, one running), a dead delivery, metrics,
    and ``afs dashboard`` serving it with the ``hook`` channel configured."""
    root = tmp_path_factory.mktemp("dashboard")
    install_hook_channel(root / "site")
    hook = WebhookServer().start()
    hook.respond(Scripted(status=403, body="token revoked"))
    env = clean_env(AFS_HOME=str(root / "home"), HOOK_URL=hook.url + "/hook", PYTHONPATH=str(root / "site"),
                    AFS_LOAD_PLUGINS="hook,dashboard,afs-dashboard")
    filled = subprocess.run([sys.executable, "-c", FILL], env=env, cwd=root, capture_output=True, text=True,
                            timeout=60)
    assert filled.returncode == 0, filled.stderr
    dashboard = Dashboard(env, cwd=root)
    try:
        yield {"url": dashboard.url, "hook": hook, "env": env, "root": root}
    finally:
        dashboard.stop()
        hook.stop()
