"""``afs init``, run as a user runs it: on a real pseudo-terminal, answering its questions,
and with flags, as a script does. Every wait is bounded."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values

from afs_core.cli.init import Section, merge_env_text, quote_value, write_env_file

SLACK_URL = "https://hooks.slack.com/services/T0/B0/XXXX"

# A third-party webhook channel, installed as a distribution, so these tests need no
# plugin of this repository: a secret URL, a free-text setting and a timeout.
ACME_PLUGIN = """
import re

from afs_core import Setting, WebhookChannel, hookimpl
from afs_core.channels import seconds


class AcmeChannel(WebhookChannel):
    settings = (
        Setting("ACME_LABEL", "label", help="any text shown with each message"),
        Setting("ACME_WEBHOOK_URL", "webhook_url", required=True, secret=True, help="the incoming webhook URL"),
        Setting("ACME_TIMEOUT", "timeout", parse=seconds),
    )
    hosts = ("hooks.acme.example",)
    url_path = re.compile(r"^/services/")
    url_hint = "https://hooks.acme.example/services/..."
    loopback_any_path = True

    def __init__(self, webhook_url, label=None, timeout=None):
        super().__init__(webhook_url, timeout=timeout)
        self.label = label

    def public_segments(self, path):
        return 1 if path.startswith("/services/") else 0

    def format(self, event):
        return {"title": event.title, "label": self.label}


@hookimpl
def afs_register_channels(register):
    register("acme", AcmeChannel)
"""
ACME_URL = "https://hooks.acme.example/services/T1/B1/ACMESECRET99"

HOSTILE = [
    "two words", "  leading and trailing  ", "hash # not a comment", "#starts-with-hash", "ends with #",
    "single ' quote", 'double " quote', "'both' \"kinds\"", "dollar $HOME and ${HOME} and ${X:-y} and $${Z}",
    "${", "$", "line one\nline two", "windows\r\nline", "lone\rcarriage", "back\\slash \\n \\\\ \\'",
    "trailing backslash\\", "tab\there", "équipe ✓ 🙂", "=leading=equals=", "", " ", "export X=1",
]


def afs_init(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``afs init`` as a script runs it: stdin is not a terminal."""
    return subprocess.run([sys.executable, "-m", "afs_core", "init", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def acme(site) -> str:
    site.install("acme-afs", ACME_PLUGIN, "acme")
    return "acme"


@pytest.fixture
def slack() -> str:
    pytest.importorskip("afs_slack", reason="afs-slack is not installed")
    return "slack"


# -- on a terminal ------------------------------------------------------------------------------


class Terminal:
    """``python -m afs_core init`` with a pseudo-terminal as its controlling terminal (so
    ``getpass`` turns echo off on it, as on a real one). ``output`` is everything the
    terminal showed: prompts, what it echoed of the answers, the report. Each wait is
    bounded, and the whole session by ``limit`` seconds."""

    def __init__(self, cwd: Path, *args: str, limit: float = 20.0) -> None:
        master, slave = os.openpty()
        launcher = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'afs_core', 'init', *sys.argv[1:]])")
        self.process = subprocess.Popen([sys.executable, "-c", launcher, *args], cwd=cwd, env=dict(os.environ),
                                        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.fd = master
        self.deadline = time.monotonic() + limit
        self.raw = b""
        self.seen = 0  # how much of the output `expect` has consumed
        self.closed = False

    @property
    def output(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False at the end of the output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, min(timeout, self.deadline - time.monotonic())))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the program ended and closed the terminal
            data = b""
        self.raw += data
        self.closed = not data
        return bool(data)

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """Wait for ``text`` after what was already expected; returns the output up to it."""
        until = min(time.monotonic() + timeout, self.deadline)
        while True:
            found = self.output.find(text, self.seen)
            if found >= 0:
                before, self.seen = self.output[self.seen:found], found + len(text)
                return before
            if self.closed or time.monotonic() >= until:
                pytest.fail(f"never saw {text!r}; the terminal showed:\n{self.output}")
            self._read(until - time.monotonic())

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the program to end (its output read to the end); its exit code."""
        until = min(time.monotonic() + timeout, self.deadline)
        while not self.closed and time.monotonic() < until:
            self._read(until - time.monotonic())
        try:
            return self.process.wait(timeout=max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"afs init did not end; the terminal showed:\n{self.output}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        os.close(self.fd)


@pytest.fixture
def terminal(afs_isolated_env):
    if sys.platform == "win32":
        pytest.skip("no pseudo-terminals on Windows")
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(afs_isolated_env, *args))
        return started[-1]

    yield start
    for term in started:
        term.close()


def test_on_a_terminal_it_asks_hides_the_secret_checks_it_and_writes_env_0600(slack, terminal, afs_isolated_env):
    env_file = afs_isolated_env / ".env"
    wrong = "https://example.com/services/T9/B9/WRONGSECRET"
    term = terminal()
    term.expect("Installed channels:")
    listing = term.expect("Which channels to set up?")
    assert "slack" in listing and "SLACK_WEBHOOK_URL" in listing
    term.send("slack")
    term.expect("SLACK_WEBHOOK_URL (required, hidden as you type): ")
    term.send(wrong)
    said = term.expect("SLACK_WEBHOOK_URL (required, hidden as you type): ")  # the channel refused it: asked again
    assert "must point at hooks.slack.com" in said
    term.send(SLACK_URL)
    term.expect("SLACK_CHANNEL (optional, Enter skips): ")
    term.send("#alerts")
    term.expect("SLACK_TIMEOUT (optional, Enter skips): ")
    term.send("soon")
    assert "must be a number of seconds" in term.expect("SLACK_TIMEOUT (optional, Enter skips): ")
    term.send("")
    report = term.expect("Send a test message through slack? [Y/n] ")
    assert "Wrote .env (mode 0600)" in report
    assert "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/***" in report and "SLACK_CHANNEL=#alerts" in report
    term.send("n")
    assert term.finish() == 0
    assert dotenv_values(env_file) == {"SLACK_WEBHOOK_URL": SLACK_URL, "SLACK_CHANNEL": "#alerts"}
    assert mode(env_file) == 0o600
    # Neither secret was ever shown: not echoed while typed, not in an error, not in the report.
    for secret in ("XXXX", "T0/B0", "WRONGSECRET", "T9/B9"):
        assert secret not in term.output

    # A second run: the file exists; saying no (or just Enter) leaves it exactly as it was.
    before = env_file.read_bytes()
    again = terminal()
    again.expect("Update it?")
    again.expect("[y/N] ")
    again.send("")
    again.expect(".env not changed.")
    assert again.finish() == 1
    assert env_file.read_bytes() == before and mode(env_file) == 0o600
    assert "Which channels" not in again.output


def test_on_a_terminal_an_update_keeps_other_lines_and_the_test_message_goes_out(acme, terminal, afs_isolated_env,
                                                                                  webhook_server):
    env_file = afs_isolated_env / ".env"
    env_file.write_text("# my settings\nOTHER=keep me\nACME_LABEL=old label\n")
    env_file.chmod(0o644)
    url = f"{webhook_server.url}/services/T2/B2/LOOPSECRET42"
    term = terminal()
    term.expect("Update it?")
    term.send("y")
    term.expect("Which channels to set up?")
    term.send("nope")
    assert "no channel 'nope'" in term.expect("Which channels to set up?")
    term.send("acme")
    prompt = "ACME_WEBHOOK_URL - the incoming webhook URL (required, hidden as you type): "
    term.expect(prompt)
    term.send("")  # required: Enter alone is not an answer
    assert "ACME_WEBHOOK_URL is required" in term.expect(prompt)
    term.send(url)
    term.expect("ACME_LABEL - any text shown with each message (optional, Enter keeps 'old label'): ")
    term.send("")
    term.expect("ACME_TIMEOUT (optional, Enter skips): ")
    term.send("5")
    report = term.expect("Send a test message through acme? [Y/n] ")
    assert "Updated .env (mode 0600; its other lines kept)" in report
    assert f"ACME_WEBHOOK_URL={webhook_server.url}/services/***" in report and "ACME_TIMEOUT=5" in report
    assert "ACME_LABEL" not in report  # unchanged, so not written again
    term.send("")  # yes, by default
    assert "acme: delivered to" in term.expect("the service answered: ok")
    assert term.finish() == 0
    assert len(webhook_server.received) == 1
    assert webhook_server.received[0].path == "/services/T2/B2/LOOPSECRET42"
    assert webhook_server.received[0].json["label"] == "old label"
    assert "LOOPSECRET42" not in term.output and "T2/B2" not in term.output
    assert env_file.read_text().startswith("# my settings\nOTHER=keep me\nACME_LABEL=old label\n")
    assert dotenv_values(env_file) == {"OTHER": "keep me", "ACME_LABEL": "old label", "ACME_WEBHOOK_URL": url,
                                       "ACME_TIMEOUT": "5"}
    assert mode(env_file) == 0o600


def test_ctrl_c_at_a_secret_prompt_writes_nothing(acme, terminal, afs_isolated_env):
    term = terminal()
    term.expect("Which channels to set up?")
    term.send("acme")
    term.expect("hidden as you type): ")
    os.write(term.fd, b"\x03")  # the terminal turns it into SIGINT
    term.expect("afs init: interrupted; nothing written")
    assert term.finish() == 130
    assert not (afs_isolated_env / ".env").exists()


def test_without_a_terminal_or_channel_it_says_how_and_never_waits(afs_isolated_env):
    started = time.monotonic()
    done = afs_init(cwd=afs_isolated_env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--channel" in done.stderr and "--set" in done.stderr
    assert time.monotonic() - started < 30
    assert not (afs_isolated_env / ".env").exists()


# -- with flags -----------------------------------------------------------------------------------


def test_help():
    done = subprocess.run([sys.executable, "-m", "afs_core", "init", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout and "--set KEY=VALUE" in done.stdout


def test_flags_write_slack_settings_with_mode_0600_and_no_secret_shown(slack, afs_isolated_env):
    done = afs_init("--channel", "slack", "--set", f"SLACK_WEBHOOK_URL={SLACK_URL}", cwd=afs_isolated_env)
    assert done.returncode == 0, done.stderr
    env_file = afs_isolated_env / ".env"
    assert dotenv_values(env_file) == {"SLACK_WEBHOOK_URL": SLACK_URL}
    assert mode(env_file) == 0o600
    assert "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/***" in done.stdout
    assert "XXXX" not in done.stdout + done.stderr
    status = subprocess.run([sys.executable, "-m", "afs_core", "status", "--json"], cwd=afs_isolated_env,
                            capture_output=True, text=True, timeout=60)
    row = next(r for r in json.loads(status.stdout)["channels"] if r["channel"] == "slack")
    assert row["state"] == "configured"  # the rest of afs reads what init wrote


def test_a_url_the_channel_refuses_exits_2_with_its_message_and_writes_nothing(slack, afs_isolated_env):
    done = afs_init("--channel", "slack", "--set", "SLACK_WEBHOOK_URL=https://example.com/services/T0/B0/NOTSHOWN",
                    cwd=afs_isolated_env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "slack: SLACK_WEBHOOK_URL must point at hooks.slack.com" in done.stderr
    assert "NOTSHOWN" not in done.stdout + done.stderr
    assert not (afs_isolated_env / ".env").exists()


def test_a_missing_required_setting_or_an_unknown_key_exits_2_naming_the_settings(acme, afs_isolated_env):
    missing = afs_init("--channel", "acme", "--set", "ACME_LABEL=x", cwd=afs_isolated_env)
    assert missing.returncode == 2 and "acme: ACME_WEBHOOK_URL is not set" in missing.stderr
    unknown = afs_init("--channel", "acme", "--set", f"ACME_WEBHOK_URL={ACME_URL}", cwd=afs_isolated_env)
    assert unknown.returncode == 2
    assert "--set ACME_WEBHOK_URL: not a setting of acme" in unknown.stderr
    assert "(its settings: ACME_WEBHOOK_URL, ACME_LABEL, ACME_TIMEOUT)" in unknown.stderr  # required first
    assert "ACMESECRET99" not in unknown.stderr
    no_channel = afs_init("--set", f"ACME_WEBHOOK_URL={ACME_URL}", cwd=afs_isolated_env)
    assert no_channel.returncode == 2 and "--set needs --channel" in no_channel.stderr
    malformed = afs_init("--channel", "acme", "--set", ACME_URL, cwd=afs_isolated_env)
    assert malformed.returncode == 2 and "--set" in malformed.stderr and "ACMESECRET99" not in malformed.stderr
    not_installed = afs_init("--channel", "pager", cwd=afs_isolated_env)
    assert not_installed.returncode == 2 and "no channel 'pager' is installed" in not_installed.stderr
    assert not (afs_isolated_env / ".env").exists()


def test_an_existing_env_is_refused_without_force(acme, afs_isolated_env):
    env_file = afs_isolated_env / ".env"
    env_file.write_text("OTHER=1\n")
    env_file.chmod(0o640)
    done = afs_init("--channel", "acme", "--set", f"ACME_WEBHOOK_URL={ACME_URL}", cwd=afs_isolated_env)
    assert done.returncode == 1
    assert "exists" in done.stderr and "--force" in done.stderr
    assert env_file.read_text() == "OTHER=1\n" and mode(env_file) == 0o640


def test_force_merges_keeping_every_other_line(acme, afs_isolated_env):
    env_file = afs_isolated_env / ".env"
    original = ("# team settings\n"
                "OTHER='kept as written'  # a comment\n"
                "\n"
                "export ACME_LABEL=old\n"
                "SLACK_CHANNEL=#general\n"
                "ACME_LABEL=duplicate that would win\n"
                "LAST=no newline")
    env_file.write_text(original)
    env_file.chmod(0o644)
    done = afs_init("--channel", "acme", "--set", f"ACME_WEBHOOK_URL={ACME_URL}", "--set", "ACME_LABEL=new # label",
                    "--force", cwd=afs_isolated_env)
    assert done.returncode == 0, done.stderr
    assert "Updated .env (mode 0600; its other lines kept)" in done.stdout
    assert "ACME_WEBHOOK_URL=https://hooks.acme.example/services/***" in done.stdout
    assert "ACMESECRET99" not in done.stdout + done.stderr
    text = env_file.read_text()
    assert text == ("# team settings\n"
                    "OTHER='kept as written'  # a comment\n"
                    "\n"
                    'export ACME_LABEL="new # label"\n'
                    f"ACME_WEBHOOK_URL={ACME_URL}\n"
                    "SLACK_CHANNEL=#general\n"
                    "LAST=no newline\n")
    assert dotenv_values(env_file) == {"OTHER": "kept as written", "ACME_LABEL": "new # label",
                                       "ACME_WEBHOOK_URL": ACME_URL, "SLACK_CHANNEL": "#general",
                                       "LAST": "no newline"}
    assert mode(env_file) == 0o600


def test_several_channels_and_settings_at_once(acme, afs_isolated_env):
    (afs_isolated_env / "conf").mkdir()
    done = afs_init("--channel", "acme", "--channel", "console", "--set", f"ACME_WEBHOOK_URL={ACME_URL}",
                    "--set", "AFS_CONSOLE=false", "--set", "ACME_LABEL=first", "--set", "ACME_LABEL=second",
                    "--env-file", "conf/afs.env", cwd=afs_isolated_env)
    assert done.returncode == 0, done.stderr
    env_file = afs_isolated_env / "conf" / "afs.env"
    assert dotenv_values(env_file) == {"ACME_WEBHOOK_URL": ACME_URL, "ACME_LABEL": "second", "AFS_CONSOLE": "false"}
    assert mode(env_file) == 0o600
    assert not (afs_isolated_env / ".env").exists()


def test_hostile_values_given_as_flags_read_back_identically(acme, afs_isolated_env):
    for index, value in enumerate(["hash # and 'quotes' \"both\" ${HOME} $x \\n", "line one\nline two\r\n"]):
        done = afs_init("--channel", "acme", "--set", f"ACME_WEBHOOK_URL={ACME_URL}", "--set", f"ACME_LABEL={value}",
                        "--env-file", f"{index}.env", cwd=afs_isolated_env)
        assert done.returncode == 0, (value, done.stderr)
        assert dotenv_values(afs_isolated_env / f"{index}.env")["ACME_LABEL"] == value


@pytest.mark.parametrize("value", HOSTILE)
def test_quoting_reads_back_identically_with_dotenv(value, tmp_path):
    path = tmp_path / ".env"
    write_env_file(str(path), merge_env_text(None, [Section("acme", {"ACME_LABEL": value, "AFTER": "x"})]))
    assert dotenv_values(path) == {"ACME_LABEL": value, "AFTER": "x"}
    # And merged into a file that already holds it, and other hostile lines.
    merged = merge_env_text(path.read_text(), [Section("acme", {"ACME_LABEL": value + "!", "NEW": value})])
    write_env_file(str(path), merged)
    assert dotenv_values(path) == {"ACME_LABEL": value + "!", "AFTER": "x", "NEW": value}
    assert mode(path) == 0o600


def test_quote_value_refuses_nul_and_leaves_plain_values_bare():
    assert quote_value(SLACK_URL) == SLACK_URL
    with pytest.raises(ValueError):
        quote_value("a\x00b")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_the_file_is_0600_from_its_creation_whatever_the_umask(umask, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / ".env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    seen = []
    real_replace = os.replace

    def replace(source, target):  # the moment before the new file takes the name
        seen.append((mode(Path(source)), Path(source).read_text(), Path(target) == path))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    if umask != 0o277:  # 0600 from creation: not left to a chmod after it (another process may open it meanwhile)
        monkeypatch.setattr(os, "fchmod", lambda fd, mode: None)
        monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old = os.umask(umask)
    try:
        write_env_file(str(path), "A=1\n")
    finally:
        os.umask(old)
    assert seen == [(0o600, "A=1\n", True)]
    assert mode(path) == 0o600 and path.read_text() == "A=1\n"
    assert [p.name for p in folder.iterdir()] == [".env"]  # no temporary file left behind


def test_test_flag_sends_one_request_through_slack(slack, afs_isolated_env, webhook_server):
    url = f"{webhook_server.url}/services/T3/B3/SLACKLOOP77"
    done = afs_init("--channel", "slack", "--set", f"SLACK_WEBHOOK_URL={url}", "--test", cwd=afs_isolated_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slack: delivered to" in done.stdout and "the service answered: ok" in done.stdout
    assert len(webhook_server.received) == 1
    assert webhook_server.received[0].path == "/services/T3/B3/SLACKLOOP77"
    assert "AFS test notification" in json.dumps(webhook_server.received[0].json)
    assert "SLACKLOOP77" not in done.stdout + done.stderr


def test_a_failed_test_exits_1_and_keeps_the_written_env(acme, afs_isolated_env, webhook_server):
    webhook_server.respond(status=403, body="invalid_token")
    url = f"{webhook_server.url}/services/T4/B4/DEADSECRET55"
    done = afs_init("--channel", "acme", "--set", f"ACME_WEBHOOK_URL={url}", "--test", cwd=afs_isolated_env)
    assert done.returncode == 1
    assert "acme: failed (permanent)" in done.stdout and "invalid_token" in done.stdout
    assert len(webhook_server.received) == 1
    assert dotenv_values(afs_isolated_env / ".env") == {"ACME_WEBHOOK_URL": url}
    assert "DEADSECRET55" not in done.stdout + done.stderr
