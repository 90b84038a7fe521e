"""docs/plugins.md is a promise: what it imports imports, what it names exists, and
its webhook channel works as written."""

import importlib
import re
from pathlib import Path

import pytest

from afs_core import NotificationManager, PluginHost

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = GUIDE.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def imports_in_the_guide():
    for block in PYTHON_BLOCKS:
        for module, names in re.findall(r"^from (afs_core[\w.]*) import ([\w, ]+)$", block, re.M):
            for name in names.split(","):
                yield module, name.strip()


def dotted_names_in_the_guide():
    return sorted(set(re.findall(r"`(afs_core(?:\.\w+)+)", TEXT)))


@pytest.mark.parametrize(("module", "name"), sorted(set(imports_in_the_guide())))
def test_every_import_in_the_guide_works(module, name):
    assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"


@pytest.mark.parametrize("dotted", dotted_names_in_the_guide())
def test_every_name_the_guide_mentions_exists(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return
    pytest.fail(f"{dotted} does not exist")


def test_the_guides_webhook_channel_is_under_40_lines_and_delivers(site, webhook_server, monkeypatch):
    example = PYTHON_BLOCKS[0]
    assert example.startswith("# acme_afs.py") and len(example.strip().splitlines()) < 40
    site.install("acme-afs", example, entry_point="acme")
    monkeypatch.setenv("ACME_WEBHOOK_URL", f"{webhook_server.url}/hooks/T0/secret-token")
    monkeypatch.setenv("AFS_SYNC", "true")
    manager = NotificationManager.from_env(plugins=PluginHost(allow={"acme-afs"}, strict=True))
    assert list(manager.channels) == ["acme"]
    assert "secret-token" not in manager.channels["acme"].describe()
    result = manager.notify_training_completed("m", "run-1", 60.0)
    assert result.delivered == ["acme"]
    assert webhook_server.received[0].json == {"title": "Training completed: m", "text": "Run run-1 finished in 1m 00s.",
                                               "level": "success"}
