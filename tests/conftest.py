"""Every core test runs with no AFS/channel/rank settings and an empty working
directory (``afs_isolated_env``, from afs-core's own pytest plugin)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import afs_core

# A suite started in the background by a shell without job control (`cmd &`, nohup)
# inherits SIGINT ignored, and so would every process it starts: the Ctrl-C tests would
# then test nothing. A handler here means its children start with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The framework integrations need torch and friends; they have their own tox
# environment, and are left out wherever those are not installed.
collect_ignore = [] if importlib.util.find_spec("torch") else ["frameworks"]


def pytest_report_header() -> str:
    return f"afs_core from {Path(afs_core.__file__).parent}"


def pytest_sessionstart(session) -> None:
    # Under tox the tests must exercise the installed wheel, not this source tree.
    import os

    import pytest

    if os.environ.get("TOX_ENV_NAME") and "site-packages" not in afs_core.__file__:
        raise pytest.UsageError(f"afs_core imported from the source tree: {afs_core.__file__}")


class PluginSite:
    """A directory on sys.path (and PYTHONPATH, for subprocesses) holding installed
    distributions laid out as pip would: a module and its dist-info."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def install(self, dist: str, source: str, entry_point: str | None = None) -> str:
        module = f"{dist.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (self.path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.path / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[afs]\n{entry_point or dist} = {module}\n")
        return module


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PluginSite:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", str(path))
    return PluginSite(path)


HOOK_PLUGIN = """
import json
import urllib.error
import urllib.request

from afs_core import Channel, PermanentDeliveryError, TransientDeliveryError, hookimpl

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Hook(Channel):
    required_settings = ("HOOK_URL",)

    def __init__(self, url):
        self.url = url

    @classmethod
    def from_env(cls, env):
        return cls(env["HOOK_URL"]) if env.get("HOOK_URL") else None

    def format(self, event):
        return {"id": event.event_id, "type": event.event_type.value, "title": event.title,
                "run_id": event.run_id, "ranks": event.context.get("ranks")}

    def deliver(self, message):
        request = urllib.request.Request(self.url, data=json.dumps(message).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with OPENER.open(request, timeout=5) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            after = exc.headers.get("Retry-After")
            kind = TransientDeliveryError if exc.code == 429 or exc.code >= 500 else PermanentDeliveryError
            raise kind(f"HTTP {exc.code}", retry_after=float(after) if after else None) from None
        except OSError as exc:
            raise TransientDeliveryError(f"could not connect: {exc}") from None


@hookimpl
def afs_register_channels(register):
    register("hook", Hook)
"""



class Runs:
    """Training scripts and ``afs`` commands run as separate processes, as a user runs
    them, with the ``hook`` channel (a third-party distribution posting JSON to
    ``HOOK_URL``) installed and the store in ``<tmp>/home``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.home = tmp_path / "home"

    def env(self, url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_")}
        env.update(AFS_HOME=str(self.home), HOOK_URL=url, PYTHONUNBUFFERED="1")
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def python(self, code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        script = self.tmp_path / f"script-{time.monotonic_ns()}.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp_path)

    def afs(self, env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "afs_core", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp_path)


@pytest.fixture
def runs(site: PluginSite, tmp_path: Path) -> Runs:
    site.install("afs-hook", HOOK_PLUGIN, entry_point="hook")
    return Runs(tmp_path)


# The private PostgreSQL server of the shared-store tests (tests/pg_server.py), loaded by
# path: the tests are not a package.
_pg_spec = importlib.util.spec_from_file_location("afs_pg_server", Path(__file__).with_name("pg_server.py"))
assert _pg_spec is not None and _pg_spec.loader is not None
_pg_server = importlib.util.module_from_spec(_pg_spec)
_pg_spec.loader.exec_module(_pg_server)
postgres_server, pg_url = _pg_server.postgres_server, _pg_server.pg_url
