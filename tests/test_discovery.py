"""Installed plugins are found from a cache while nothing is installed or removed, and
at once when something is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from afs_core import discovery
from afs_core.plugins import PluginHost

PLUGIN = """
from afs_core import hookimpl

@hookimpl
def afs_enrich_event(event):
    return {"found_by": "cache test"}
"""


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "afs" / "entry-points.json"


def names(found):
    return sorted(f.name for f in found)


def test_entry_points_are_read_once_while_nothing_is_installed(site, cache_home, monkeypatch):
    site.install("afs-cached", PLUGIN)
    first = discovery.entry_points("afs")
    assert "afs-cached" in names(first) and cache_home.exists()

    def no_scan(group):
        raise AssertionError("importlib.metadata was asked again")

    monkeypatch.setattr(discovery, "scan", no_scan)
    assert discovery.entry_points("afs") == first


def test_a_distribution_installed_since_is_found_at_once(site, cache_home):
    site.install("afs-early", PLUGIN)
    assert "afs-late" not in names(discovery.entry_points("afs"))
    site.install("afs-late", PLUGIN)
    assert {"afs-early", "afs-late"} <= set(names(discovery.entry_points("afs")))


def test_an_uninstalled_distribution_is_gone_at_once(site, cache_home):
    site.install("afs-leaving", PLUGIN)
    assert "afs-leaving" in names(discovery.entry_points("afs"))
    (info,) = site.path.glob("afs_leaving-*.dist-info")
    for file in info.iterdir():
        file.unlink()
    info.rmdir()
    assert "afs-leaving" not in names(discovery.entry_points("afs"))


def test_a_broken_or_unwritable_cache_is_no_error(site, cache_home):
    site.install("afs-robust", PLUGIN)
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("{not json")
    assert "afs-robust" in names(discovery.entry_points("afs"))
    cache_home.unlink()
    cache_home.mkdir()  # a folder where the file should be: cannot be read or replaced
    assert "afs-robust" in names(discovery.entry_points("afs"))


def test_the_host_loads_a_cached_plugin_like_any_other(site, cache_home):
    site.install("afs-loaded", PLUGIN)
    PluginHost()  # fills the cache
    host = PluginHost()
    assert any(info.name == "afs-loaded" and info.distribution == "afs-loaded" and info.version == "1.2.3"
               for info in host.plugins())


def test_a_warm_start_does_not_import_importlib_metadata(site, tmp_path):
    site.install("afs-warm", PLUGIN)
    code = textwrap.dedent("""
        import sys
        from afs_core import NotificationManager
        NotificationManager.from_env()
        print("importlib.metadata" in sys.modules)
    """)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "AFS_HOME": str(tmp_path / "home")}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
            for _ in range(2)]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]
