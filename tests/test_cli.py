"""The afs command, run as a user runs it: in a subprocess, against a temporary store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLAKY_PLUGIN = """
import os
from afs_core import Channel, PermanentDeliveryError, TransientDeliveryError, hookimpl

class Flaky(Channel):
    required_settings = ("FLAKY_MODE",)

    @classmethod
    def from_env(cls, env):
        return cls() if env.get("FLAKY_MODE") else None

    def deliver(self, message):
        if os.environ.get("FLAKY_MODE") == "fail":
            raise PermanentDeliveryError("HTTP 403: invalid_token")
        if os.environ.get("FLAKY_MODE") == "busy":
            raise TransientDeliveryError("HTTP 429", retry_after=3600)
        return "ok from the flaky service"

@hookimpl
def afs_register_channels(register):
    register("flaky", Flaky)
"""


def afs(*args, env=None, timeout=60):
    full = {**os.environ, "AFS_LOAD_PLUGINS": os.environ.get("AFS_LOAD_PLUGINS", "flaky"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


@pytest.fixture
def flaky(site):
    site.install("afs-flaky", FLAKY_PLUGIN, "flaky")


def test_help_on_every_subcommand():
    for command in ["status", "complete", "error", "cost-alert", "evaluation", "custom", "run", "history",
                    "outbox", "plugins", "test", "init"]:
        done = afs(command, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, command


def test_complete_goes_to_the_console_with_nothing_configured():
    done = afs("complete", "--model", "M", "--run-id", "R", "--duration", "3600", "--loss", "0.1234",
               "--metrics", "accuracy=0.95,f1=0.92")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "console: delivered"
    assert "Training completed: M" in done.stderr and "accuracy: 0.95" in done.stderr and "1h 00m" in done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["complete", "--model", "M", "--run-id", "R", "--duration", "1", "--metrics", "accuracy=abc"], "--metrics"),
        (["complete", "--model", "M", "--run-id", "R"], "--duration"),
        (["custom", "--title", "T", "--message", "X", "--level", "loud"], "--level"),
        (["custom", "--title", "T", "--message", "X", "--event-type", "NOPE"], "--event-type"),
        (["cost-alert", "--cost", "-1", "--threshold", "10"], "--cost"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_and_nothing_is_sent(args, flag):
    done = afs(*args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and flag in done.stderr
    assert "[afs]" not in done.stderr  # nothing reached the console channel


def test_every_sending_command(flaky):
    env = {"FLAKY_MODE": "ok", "AFS_CONSOLE": "false"}
    for args in (["error", "--model", "M", "--run-id", "R", "--error", "Out of memory error"],
                 ["cost-alert", "--cost", "12.50", "--threshold", "10.00", "--model", "M"],
                 ["evaluation", "--model", "M", "--run-id", "R", "--metrics", "accuracy=0.95,perplexity=1.23"],
                 ["custom", "--title", "T", "--message", "X", "--level", "warning", "--event-type", "LOSS_IMPROVED"]):
        done = afs(*args, "--json", env=env)
        assert done.returncode == 0, (args, done.stderr)
        assert json.loads(done.stdout)["channels"] == {"flaky": {"status": "delivered", "error": None}}
    history = json.loads(afs("history", "--json", env=env).stdout)
    assert [e["title"] for e in history][:2] == ["T", "Evaluation completed: M"]


def test_a_failed_delivery_exits_1_and_says_why(flaky):
    done = afs("error", "--model", "M", "--run-id", "R", "--error", "boom", env={"FLAKY_MODE": "fail"})
    assert done.returncode == 1
    assert "flaky: failed: HTTP 403: invalid_token" in done.stdout
    dead = json.loads(afs("outbox", "--json").stdout)
    assert dead[0]["status"] == "dead" and dead[0]["error"] == "HTTP 403: invalid_token"
    retried = afs("outbox", "retry", str(dead[0]["id"]))
    assert retried.returncode == 0
    flushed = afs("outbox", "flush", env={"FLAKY_MODE": "ok"})
    assert flushed.returncode == 0 and "1 of 1 pending deliveries went out" in flushed.stdout
    assert afs("outbox").stdout.strip() == "the outbox is empty"


def test_channel_option_picks_channels(flaky):
    env = {"FLAKY_MODE": "ok", "AFS_CONSOLE": "true"}
    done = afs("custom", "--title", "T", "--message", "X", "--channel", "flaky", "--json", env=env)
    assert list(json.loads(done.stdout)["channels"]) == ["flaky"]
    unknown = afs("custom", "--title", "T", "--message", "X", "--channel", "pager", env=env)
    assert unknown.returncode == 2 and "--channel pager: not configured" in unknown.stderr


def test_status_plugins_and_test(flaky):
    status = json.loads(afs("status", "--json").stdout)
    flaky_row = next(r for r in status["channels"] if r["channel"] == "flaky")
    assert flaky_row["state"] == "not configured" and flaky_row["detail"] == "set FLAKY_MODE"
    plugins = json.loads(afs("plugins", "--json").stdout)
    assert any(p["distribution"] == "afs-flaky" and p["channels"] == ["flaky"] for p in plugins["plugins"])
    tested = afs("test", "flaky", env={"FLAKY_MODE": "ok"})
    assert tested.returncode == 0 and "the service answered: ok from the flaky service" in tested.stdout
    off = afs("test", "flaky")
    assert off.returncode == 2 and "set FLAKY_MODE" in off.stderr


def test_env_file_option(tmp_path):
    env_file = tmp_path / "run.env"
    env_file.write_text("AFS_CONSOLE=false\n")
    done = afs("custom", "--title", "T", "--message", "X", "--env-file", str(env_file), "--json")
    assert json.loads(done.stdout)["channels"] == {}
    missing = afs("status", "--env-file", str(tmp_path / "nope.env"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_the_old_script_name_still_works():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "notify_training_complete.py"), "status"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "console" in done.stdout


# -- afs run ----------------------------------------------------------------------------


def run_json_history(run_id):
    return json.loads(afs("history", "--run-id", run_id, "--json").stdout)


def test_run_streams_output_and_reports_completion():
    done = afs("run", "--model", "m", "--run-id", "ok-1", "--", sys.executable, "-c",
               "import sys; print('hello out'); print('hello err', file=sys.stderr)")
    assert done.returncode == 0
    assert done.stdout == "hello out\n" and "hello err\n" in done.stderr
    assert [e["event_type"] for e in run_json_history("ok-1")] == ["training_completed", "training_started"]


def test_run_reports_a_failure_with_exit_code_and_last_lines():
    done = afs("run", "--run-id", "bad-1", "--", sys.executable, "-c",
               "import sys\nfor i in range(30): print(f'step {i}')\nsys.exit(3)")
    assert done.returncode == 3
    assert "exited with code 3" in done.stderr and "step 29" in done.stderr.split("Training failed")[-1]
    assert run_json_history("bad-1")[0]["event_type"] == "training_failed"


def test_run_names_sigkill_as_the_likely_oom_killer():
    done = afs("run", "--run-id", "oom-1", "--", sys.executable, "-c",
               "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == 128 + 9
    assert "SIGKILL, most likely the out-of-memory killer" in done.stderr


def test_run_forwards_sigterm_to_the_child():
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "afs_core", "run", "--run-id", "pre-1", "--", sys.executable, "-u", "-c",
         "import time\nprint('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "AFS_LOAD_PLUGINS": ""},
    )
    assert wrapper.stdout.readline().strip() == "ready"
    started = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=20) == 128 + 15
    assert time.monotonic() - started < 10
    assert "SIGTERM, most likely preemption" in wrapper.stderr.read()


def test_run_without_a_command_is_a_usage_error():
    done = afs("run")
    assert done.returncode == 2 and "give the command after --" in done.stderr


def test_outbox_flush_sends_what_waits_for_a_retry_now(flaky):
    busy = afs("error", "--model", "M", "--run-id", "R", "--error", "boom", "--timeout", "1", env={"FLAKY_MODE": "busy"})
    assert busy.returncode == 1 and "stays in the outbox, will retry" in busy.stdout
    flushed = afs("outbox", "flush", env={"FLAKY_MODE": "ok"})
    assert flushed.returncode == 0 and "1 of 1 pending deliveries went out" in flushed.stdout


def test_an_unusable_afs_home_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for args in (["status"], ["history"], ["run", "--", sys.executable, "-c", "pass"]):
        done = afs(*args, env={"AFS_HOME": str(blocker / "afs")})
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_run_does_not_hang_when_its_reader_goes_away():
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "afs_core", "run", "--run-id", "pipe-1", "--", sys.executable, "-c",
         "import sys\nfor i in range(200000): print('line', i)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "AFS_LOAD_PLUGINS": ""},
    )
    wrapper.stdout.readline()
    wrapper.stdout.close()  # like `afs run ... | head -1`
    assert wrapper.wait(timeout=60) == 0


def test_flags_before_an_outbox_action_count(flaky):
    listed = afs("outbox", "--json", "list")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    unknown = afs("outbox", "--channel", "pager", "flush")
    assert unknown.returncode == 2 and "pager" in unknown.stderr
    assert afs("history", "--limit", "-1").returncode == 2


ECHO_PLUGIN = """
from afs_core import Channel, Setting, hookimpl

class Echo(Channel):
    settings = (Setting("ECHO_TOKEN", "token", required=True, secret=True),)

    def __init__(self, token):
        self.token = token

    def deliver(self, message):
        return f"ok, got hooks/{self.token}"

@hookimpl
def afs_register_channels(register):
    register("echo", Echo)
"""


def test_afs_test_never_prints_a_secret_the_service_echoes(site):
    site.install("afs-echo", ECHO_PLUGIN, "echo")
    tested = afs("test", "echo", env={"ECHO_TOKEN": "T0KEN-abc123", "AFS_LOAD_PLUGINS": "echo"})
    assert tested.returncode == 0 and "ok, got hooks/" in tested.stdout
    assert "T0KEN-abc123" not in tested.stdout + tested.stderr


def test_a_broken_plugin_under_strict_plugins_is_a_configuration_error(site):
    site.install("afs-broken", "raise ImportError('no module named acme_sdk')\n", "broken")
    done = afs("status", env={"AFS_STRICT_PLUGINS": "1", "AFS_LOAD_PLUGINS": "broken"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "acme_sdk" in done.stderr
