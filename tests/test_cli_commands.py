"""Subcommands from plugins: a third-party distribution adds one through
``afs_register_commands``; ``afs --help`` lists it, it runs, ``afs plugins`` names it."""

import json
import os
import subprocess
import sys

HELLO_PLUGIN = """
from afs_core import hookimpl


def configure(parser):
    parser.add_argument("--name", default="world")


def run(args):
    print(f"hello, {args.name} (env file: {args.env_file})")
    return 3


@hookimpl
def afs_register_commands(register):
    register("hello", configure, run, help="say hello")
"""

GREEDY_PLUGIN = """
from afs_core import hookimpl


@hookimpl
def afs_register_commands(register):
    register("status", lambda parser: None, lambda args: 0, help="mine now")
"""


def afs(*args, plugins):
    env = {**os.environ, "AFS_LOAD_PLUGINS": plugins}
    return subprocess.run([sys.executable, "-m", "afs_core", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_a_plugin_command_is_in_help_and_runs(site):
    site.install("afs-hello", HELLO_PLUGIN, "hello")
    helped = afs("--help", plugins="hello")
    assert helped.returncode == 0 and "hello" in helped.stdout and "say hello (from afs-hello)" in helped.stdout
    ran = afs("hello", "--name", "there", "--env-file", "x.env", plugins="hello")
    assert ran.returncode == 3 and ran.stdout.strip() == "hello, there (env file: x.env)"
    assert "--name" in afs("hello", "--help", plugins="hello").stdout


def test_afs_plugins_names_the_command_and_who_gave_it(site):
    site.install("afs-hello", HELLO_PLUGIN, "hello")
    listed = json.loads(afs("plugins", "--json", plugins="hello").stdout)
    hello = next(p for p in listed["plugins"] if p["name"] == "hello")
    assert hello["distribution"] == "afs-hello" and hello["commands"] == ["hello"]


def test_a_plugin_cannot_take_a_core_command(site):
    site.install("afs-greedy", GREEDY_PLUGIN, "greedy")
    done = afs("status", "--json", plugins="greedy")
    assert done.returncode == 0 and "channels" in json.loads(done.stdout)
    assert "'status' is already taken by afs-core" in done.stderr


def test_a_known_plugin_command_without_its_plugin_says_what_to_install(afs_plugins, capsys, monkeypatch):
    # afs_plugins: a host without afs-dashboard's command, as where it is not installed.
    from importlib import metadata

    from afs_core.cli import main

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    for argv in (["dashboard"], ["dashboard", "--help"], ["dashboard", "--port", "0"]):
        assert main(argv) == 2
        told = capsys.readouterr()
        assert told.err.strip() == "afs dashboard comes with the afs-dashboard distribution: pip install afs-dashboard"
        assert told.out == ""
    assert "invalid choice: 'nope'" in afs("nope", plugins="none").stderr  # any other name: argparse's word


def test_a_known_plugin_command_installed_but_not_loaded_says_so(afs_plugins, capsys, monkeypatch):
    from importlib import metadata

    from afs_core.cli import main

    monkeypatch.setattr(metadata, "distribution", lambda name: object())
    assert main(["dashboard"]) == 2
    err = capsys.readouterr().err
    assert "afs-dashboard distribution, which is installed but was not loaded" in err and "invalid choice" not in err
