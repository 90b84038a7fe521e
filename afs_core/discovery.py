"""Installed plugins, found without importlib.metadata on the way to the first notify().

Asking importlib.metadata for the ``afs`` entry points costs about 30 ms at every
start: its import, and a read of every installed distribution's metadata. What is
installed changes only when something is installed, so what was found is kept in a
small cache file, keyed on the metadata folders on ``sys.path`` (their names carry
each distribution's version; their times change when one is reinstalled): a
``pip install``, upgrade or uninstall changes the key, and the next start asks
importlib.metadata again. A cache that cannot be read or written is no error: the
entry points are then read as before.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger("afs.plugins")

CACHE_VERSION = 1
CACHE_ENTRIES = 8  # keys kept: one per environment (virtual environment, tox env) in use


class Found(NamedTuple):
    """One entry point of the group: its name, ``module:attribute``, and who installed it."""

    name: str
    value: str
    dist_name: str | None
    version: str | None

    def load(self) -> Any:
        """What ``EntryPoint.load()`` gives: the module, or the attribute it names."""
        module_name, _, attribute = self.value.partition(":")
        target: Any = importlib.import_module(module_name.strip())
        for part in attribute.split("[")[0].strip().split(".") if attribute else ():
            target = getattr(target, part)
        return target


def entry_points(group: str) -> list[Found]:
    """The group's entry points, from the cache while what is installed is unchanged."""
    key = installed_key()
    cache = _cache_file()
    found = _read(cache, key, group) if cache is not None else None
    if found is None:
        found = scan(group)
        if cache is not None:
            _write(cache, key, group, found)
    return found


def scan(group: str) -> list[Found]:
    """The group's entry points as importlib.metadata reads them (once per key)."""
    from importlib.metadata import entry_points as read

    found = []
    for ep in read(group=group):
        dist = getattr(ep, "dist", None)
        found.append(Found(ep.name, ep.value, dist.metadata["Name"] if dist is not None else None,
                           dist.version if dist is not None else None))
    return found


def installed_key() -> str:
    """What is installed, as one string: each sys.path folder with its distributions'
    metadata folders, and when each folder and its entry_points.txt last changed."""
    parts = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as listing:
                folders = sorted(f"{item.name}@{item.stat().st_mtime_ns}@{_changed(item.path)}" for item in listing
                                 if item.name.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        parts.append(f"{entry}:{','.join(folders)}")
    return "\n".join(parts)


def _changed(folder: str) -> int:
    try:
        return os.stat(os.path.join(folder, "entry_points.txt")).st_mtime_ns
    except OSError:
        return 0


def _cache_file() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return Path(base) / "afs" / "entry-points.json"


def _read(path: Path, key: str, group: str) -> list[Found] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data["entries"]:
            if entry["key"] == key and entry["group"] == group and data["version"] == CACHE_VERSION:
                return [Found(*item) for item in entry["found"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _write(path: Path, key: str, group: str, found: list[Found]) -> None:
    """Keep ``found`` for ``key`` beside the other environments' (the newest few),
    replacing the file in one step so a reader never sees half of it."""
    try:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
            entries = [e for e in entries if isinstance(e, dict) and (e.get("key"), e.get("group")) != (key, group)]
        except (OSError, ValueError, KeyError, TypeError):
            entries = []
        entries = [{"key": key, "group": group, "found": [list(f) for f in found]}, *entries][:CACHE_ENTRIES]
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".entry-points-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": CACHE_VERSION, "entries": entries}, handle)
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)  # gone once replaced; else not left behind
    except OSError as exc:  # a read-only home: read the entry points each time, as before
        logger.debug("afs: the plugin cache %s cannot be written: %s", path, exc)
