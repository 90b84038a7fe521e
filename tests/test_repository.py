"""Promises the repository itself makes: README commands, CI, settings template."""

import re
import shutil
from pathlib import Path

from afs_core import NotificationManager

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("afs_core/**/*.py"), *ROOT.glob("plugins/*/afs_*/**/*.py")]
SETTING = re.compile(  # read by hand, or declared as a channel's Setting("NAME", ...)
    r"""(?:env|settings)(?:\.get\(|\[)"([A-Z][A-Z0-9_]+)"|env_\w+\((?:env|settings), "([A-Z][A-Z0-9_]+)\"|"""
    r"""Setting\("([A-Z][A-Z0-9_]+)\""""
)


def readme_commands():
    first_screen = "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:24])
    return re.findall(r"```bash\n(.+?)\n```", first_screen)


def test_readme_first_screen_has_the_two_commands():
    run_job, run_tests = readme_commands()
    assert "examples/train_tiny.py" in run_job and "pip install" in run_job
    assert "tox" in run_tests and "pip install" in run_tests


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_commands()[1] in ROOT.joinpath(".ci/run").read_text().splitlines()


def test_every_setting_the_code_reads_is_in_env_example():
    platform = {"LOCALAPPDATA", "XDG_DATA_HOME", "CUDA_VISIBLE_DEVICES", "PYTHONPATH"}  # the system's, not ours
    found = {a or b or c for path in SOURCES for a, b, c in SETTING.findall(path.read_text())} - platform
    assert {"AFS_CONSOLE", "SLACK_WEBHOOK_URL", "SMTP_PASSWORD", "DESKTOP_NOTIFICATIONS_SOUND", "AFS_STORE_URL",
            "AFS_LEASE_SECONDS"} <= found
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ROOT.joinpath(".env.example").read_text(), re.M))
    assert found <= documented, f"settings missing from .env.example: {sorted(found - documented)}"


def test_each_setting_in_env_example_has_a_comment():
    lines = ROOT.joinpath(".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]+=", line):
            above = index - 1
            while above >= 0 and re.match(r"^[A-Z][A-Z0-9_]+=", lines[above]):
                above -= 1  # settings grouped under one comment
            assert above >= 0 and lines[above].startswith("#"), f"{line!r} has no comment above it"


def test_a_fresh_copy_of_env_example_configures_the_console_only(afs_plugins):
    shutil.copy(ROOT / ".env.example", ".env")
    assert list(NotificationManager.from_env(plugins=afs_plugins).handlers) == ["console"]


def test_dotenv_is_ignored_by_git():
    assert ".env" in ROOT.joinpath(".gitignore").read_text().splitlines()
