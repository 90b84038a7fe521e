"""A channel written outside this repository: built, installed, discovered, used."""

import json
import os
import subprocess
import sys
import textwrap

ACME_MODULE = '''
"""A third-party AFS channel: appends each event to a JSON-lines file."""
import json

from afs_core import Channel, ConfigurationError, PermanentDeliveryError, hookimpl


class AcmeChannel(Channel):
    def __init__(self, outbox):
        self.outbox = outbox

    @classmethod
    def from_env(cls, env):
        outbox = env.get("ACME_OUTBOX")
        if outbox is None:
            return None
        if not outbox.endswith(".jsonl"):
            raise ConfigurationError("ACME_OUTBOX must name a .jsonl file")
        return cls(outbox)

    def format(self, event):
        return {"title": event.title, "type": event.event_type.value, "run": event.run_id}

    def deliver(self, message):
        try:
            with open(self.outbox, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(message) + "\\n")
        except OSError as exc:
            raise PermanentDeliveryError(str(exc)) from exc


@hookimpl
def afs_register_channels(register):
    register("acme", AcmeChannel)
'''

ACME_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-afs"
version = "0.3.0"
dependencies = ["afs-core"]

[project.entry-points.afs]
acme = "acme_afs"

[tool.setuptools]
py-modules = ["acme_afs"]
"""

USER_SCRIPT = """
import json
from afs_core import NotificationManager
from afs_core.plugins import get_plugins

manager = NotificationManager.from_env()
result = manager.notify_training_completed("tiny", "run-7", duration=60.0)
result.wait(10)
plugin = next(p for p in get_plugins().plugins() if p.name == "acme")
print(json.dumps({"handlers": list(manager.handlers), "delivered": result.delivered,
                  "distribution": plugin.distribution, "version": plugin.version}))
"""


def test_third_party_distribution_is_built_installed_and_used(tmp_path):
    project = tmp_path / "acme-afs"
    project.mkdir()
    (project / "acme_afs.py").write_text(textwrap.dedent(ACME_MODULE))
    (project / "pyproject.toml").write_text(ACME_PYPROJECT)
    target = tmp_path / "site"
    # Build a wheel with the real build backend and install it into its own directory;
    # --no-deps: afs-core is already installed in this environment.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(project)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert list(target.glob("acme_afs-0.3.0.dist-info"))

    outbox = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFS_")}
    env.update(PYTHONPATH=str(target), ACME_OUTBOX=str(outbox))
    ran = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT], capture_output=True, text=True, timeout=60,
        env=env, cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report == {"handlers": ["acme"], "delivered": ["acme"],
                      "distribution": "acme-afs", "version": "0.3.0"}
    assert json.loads(outbox.read_text()) == {
        "title": "Training completed: tiny", "type": "training_completed", "run": "run-7"}
