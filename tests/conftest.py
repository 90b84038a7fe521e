"""Every core test runs with no AFS/channel/rank settings and an empty working
directory (``afs_isolated_env``, from afs-core's own pytest plugin)."""

from __future__ import annotations

import importlib.util
import textwrap
import uuid
from pathlib import Path

import pytest

import afs_core


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
