"""``import afs_core`` stays light: no HTTP client, no plugin, nothing a script does not use."""

import importlib.util
import json
import subprocess
import sys

PROBE = """
import json, sys
import afs_core
after_import = sorted(sys.modules)
from afs_core import NotificationManager
manager = NotificationManager.from_env()
manager.notify("probe", "probe")
print(json.dumps({"after_import": after_import, "after_notify": sorted(sys.modules)}))
"""


def run_probe(**env):
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
        env={"PATH": "", "AFS_CONSOLE": "false", **env},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_afs_core_loads_no_heavy_or_plugin_modules():
    modules = run_probe()
    heavy = {"requests", "urllib3", "matplotlib", "pluggy", "attrs", "dotenv", "afs_slack", "afs_discord", "afs_email", "afs_desktop",
             "torch", "transformers", "lightning", "keras"}
    assert not heavy & {m.split(".")[0] for m in modules["after_import"]}


def test_plugins_that_are_not_allowed_are_not_imported():
    loaded = run_probe(AFS_LOAD_PLUGINS="")["after_notify"]
    modules = {m.split(".")[0] for m in loaded}
    assert "pluggy" in modules and "afs_core.events" in loaded  # the probe really did the work
    assert not modules & {"afs_slack", "afs_discord", "afs_email", "afs_desktop", "torch", "transformers",
                          "lightning", "keras"}


def test_loading_every_installed_plugin_does_not_import_an_http_client():
    # Channels import their HTTP client when they first deliver, keeping start-up fast.
    modules = {m.split(".")[0] for m in run_probe()["after_notify"]}
    assert "pluggy" in modules
    assert not modules & {"requests", "urllib3", "matplotlib"}


def test_the_first_notify_loads_nothing_its_event_does_not_need():
    """Start-up to the first notify() with the four first channels' plugins loaded (none
    configured): no socket, TLS, hashing, SMTP or HTML modules; those load on a send. Nor
    attrs (about 12 ms of a start here: the records on this path are dataclasses and
    named tuples) or random (events draw their ids from the C generator it wraps)."""
    run_probe(AFS_LOAD_PLUGINS="desktop,email,slack,discord")  # the entry points read once and kept
    modules = run_probe(AFS_LOAD_PLUGINS="desktop,email,slack,discord")["after_notify"]
    assert "afs_core.delivery.engine" in modules  # the probe really started the engine
    installed = {name for name in ("afs_desktop", "afs_email", "afs_slack", "afs_discord")
                 if importlib.util.find_spec(name) is not None}
    assert installed <= {name.split(".")[0] for name in modules}  # each one installed was loaded
    assert not {"socket", "ssl", "hashlib", "hmac", "secrets", "smtplib", "html", "http.client", "attrs", "attr",
                "random"} & set(modules)
