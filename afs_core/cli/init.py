"""``afs init``: a guided start. Pick installed channels, enter their settings (secrets
unseen), have each channel check them as ``from_env`` will, write ``.env`` (mode 0600,
atomically, never over an existing file without asking) and send a test message through
each. ``--channel NAME --set KEY=VALUE`` does the same without questions, for scripts.

Exit codes: 0 written (or nothing to write), 1 an existing file was left alone or a test
message failed (what was written stays), 2 bad usage or a setting a channel refused.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import os
import re
import secrets
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from afs_core.channels.settings import Setting, read_settings
from afs_core.cli.common import DELIVERY_FAILED, OK, USAGE, UsageError
from afs_core.config import load_env
from afs_core.errors import ConfigurationError
from afs_core.redaction import MASK, redact_url, scrub

if TYPE_CHECKING:
    from afs_core.channels.base import Channel
    from afs_core.plugins import ChannelSpec, PluginHost

NOT_A_TERMINAL = ("init asks its questions on a terminal; for a script give the settings as flags: "
                  "afs init --channel slack --set SLACK_WEBHOOK_URL=... (afs init --help)")
INTERRUPTED = 130

# -- .env text ------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def quote_value(value: str) -> str:
    """``value`` as python-dotenv reads it back unchanged (``dotenv_values``, which
    expands ``${NAME}``): bare when that is safe, else double-quoted with ``\\``, ``"``,
    newline and CR escaped and every ``${`` written as ``$${:-{}`` (the variable with
    no name is never set, so it reads back as its default, ``{``)."""
    if "\x00" in value:
        raise ValueError("a setting cannot hold a NUL character")
    if _PLAIN.fullmatch(value):
        return value
    text = value.replace("${", "$${:-{}")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{text}"'


def parse_env_text(text: str) -> dict[str, str]:
    """The values of a ``.env`` text as ``load_env`` reads them."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


class Section(NamedTuple):
    """The settings ``afs init`` sets for one channel: ``values`` to write, ``keys`` all
    of the channel's settings (new ones go after the last of them already in the file)."""

    name: str
    values: Mapping[str, str]
    keys: Collection[str] = ()


HEADER = "# AFS notification settings, written by `afs init`. Secrets: keep this file private (0600).\n"


def merge_env_text(text: str | None, sections: Sequence[Section]) -> str:
    """``text`` (None: no file yet) with the ``sections``' values set. A key already there
    is replaced where it stands (a later duplicate, which would win over it, is dropped);
    a new one goes after the channel's other settings in the file, or at the end under
    the channel's name. Every other line, comment and blank line is kept as it was."""
    from dotenv.parser import parse_stream

    updates = {key: value for section in sections for key, value in section.values.items()}
    out: list[str] = []
    done: set[str] = set()
    last: dict[str, int] = {}  # section name -> index in out of its last setting there
    if text is None:
        out.append(HEADER)
    else:
        for binding in parse_stream(io.StringIO(text)):
            original, key = binding.original.string, binding.key
            if not binding.error and key is not None and key in done:
                continue
            if binding.error or key is None or key not in updates:
                out.append(original)
            else:
                lead = original[: len(original) - len(original.lstrip())]
                export = "export " if re.match(r"export[ \t]", original.lstrip()) else ""
                end = "\r\n" if original.endswith("\r\n") else "\n"
                out.append(f"{lead}{export}{key}={quote_value(updates[key])}{end}")
                done.add(key)
            for section in sections:
                if key is not None and not binding.error and (key in section.keys or key in section.values):
                    last[section.name] = len(out) - 1
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += "\n"
    inserts: list[tuple[int, str]] = []
    for section in sections:
        new = [f"{key}={quote_value(value)}\n" for key, value in section.values.items() if key not in done]
        done.update(section.values)
        if not new:
            continue
        if section.name in last:
            inserts.append((last[section.name], "".join(new)))
        else:
            out.append(f"\n# {section.name}\n" + "".join(new))
    for index, lines in sorted(inserts, reverse=True):
        if not out[index].endswith(("\n", "\r")):
            out[index] += "\n"
        out.insert(index + 1, lines)
    return "".join(out)


def read_env_file(path: str) -> str | None:
    """The file's text, kept byte for byte (line endings too); None when there is none."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UsageError(f"init: {path} is a directory") from None
    except UnicodeDecodeError:
        raise UsageError(f"init: {path} is not UTF-8 text; not changed") from None


def write_env_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600: a new file created 0600 in
    the same directory (no moment where another user could read it), synced, then moved
    over ``path``. A symlinked ``.env`` keeps its link: the file it points to is replaced."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o600)  # exactly 0600, whatever the umask took away
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError, AttributeError):  # the rename itself, on disk
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- channels and their settings --------------------------------------------------------------


def fields(channel_class: type[Channel]) -> list[Setting]:
    """What to ask for a channel: its declared settings, required ones first; for a
    channel that only names ``required_settings``, those, treated as secret (nothing
    says they are not)."""
    declared = list(channel_class.settings)
    if declared:
        return [s for s in declared if s.required] + [s for s in declared if not s.required]
    return [Setting(name, name.lower(), required=True, secret=True) for name in channel_class.required_settings]


def _names(names: Sequence[str]) -> str:
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names)} are"


def check_channel(spec: ChannelSpec, asked: Sequence[Setting], values: Mapping[str, str]) -> Channel | None:
    """The channel built from ``values`` as ``from_env`` builds it (None: with these
    settings it is off); ConfigurationError, with no secret quoted, when it refuses them."""
    hidden = [values[s.env] for s in asked if s.secret and values.get(s.env)]
    try:
        channel = spec.channel_class.from_env(dict(values))
    except ConfigurationError as exc:
        raise ConfigurationError(scrub(str(exc), hidden)) from None
    except Exception as exc:  # a plugin's own bug: say what, never the value
        raise ConfigurationError(f"the channel could not be built: {type(exc).__name__}: "
                                 f"{scrub(str(exc), hidden)}") from None
    if channel is None:
        missing = [s.env for s in asked if s.required and not (values.get(s.env) or "").strip()]
        if missing:
            raise ConfigurationError(f"{_names(missing)} not set")
    else:
        with contextlib.suppress(Exception):
            channel.close()
    return channel


def shown(setting: Setting, value: str, channel: Channel | None) -> str:
    """A value fit to print: a secret as its URL's public part or ``(secret, set)``."""
    if not setting.secret:
        return value if value.isprintable() else repr(value)
    if value.strip() and not re.search(r"[\s,]", value.strip()):
        import urllib.parse

        with contextlib.suppress(ValueError):
            parts = urllib.parse.urlsplit(value.strip())
            if parts.scheme in ("http", "https") and parts.hostname:
                keep = 0
                public = getattr(channel, "public_segments", None)
                if callable(public):
                    with contextlib.suppress(Exception):
                        keep = max(int(public(parts.path)), 0)
                display = redact_url(value.strip(), keep)
                hidden = [value, value.strip(), *(channel.secrets() if channel is not None else ())]
                if display.endswith(MASK) and scrub(display, hidden) == display:
                    return display
    return "(secret, set)"


def _environment(path: str) -> dict[str, str]:
    return load_env(path) if os.path.isfile(path) else dict(os.environ)


def _send_test(name: str, path: str) -> bool:
    """``afs test NAME`` against the file just written (the real environment still wins,
    as for every command): the same event, hooks and report."""
    from afs_core.cli.send import cmd_test

    args = argparse.Namespace(name=name, env_file=path, channel=None, json=False, timeout=None)
    try:
        return cmd_test(args) == OK
    except (UsageError, ConfigurationError) as exc:
        print(f"{name}: not tested: {exc}")
        return False


class Written(NamedTuple):
    setting: Setting
    value: str
    channel: Channel | None


def _report(path: str, existed: bool, written: Sequence[Written]) -> None:
    what = "Updated" if existed else "Wrote"
    kept = "; its other lines kept" if existed else ""
    print(f"{what} {path} (mode 0600{kept}):")
    for item in written:
        print(f"  {item.setting.env}={shown(item.setting, item.value, item.channel)}")
    for item in written:
        if item.setting.env in os.environ and os.environ[item.setting.env] != item.value:
            print(f"note: {item.setting.env} is also set in this shell's environment, which wins over {path}")


Plan = list[tuple[str, list[Written], frozenset[str]]]  # channel, what to write, all its settings


def _write(path: str, text: str | None, plan: Plan) -> None:
    sections = [Section(name, {w.setting.env: w.value for w in items}, keys) for name, items, keys in plan if items]
    write_env_file(path, merge_env_text(text, sections))
    _report(path, text is not None, [w for _, items, _ in plan for w in items])


# -- afs init --channel ... --set ... ---------------------------------------------------------


def _from_flags(args: argparse.Namespace, path: str, plugins: PluginHost) -> int:
    names = list(dict.fromkeys(args.channel))
    unknown = [name for name in names if name not in plugins.channels]
    if unknown:
        raise UsageError(f"init: no channel {unknown[0]!r} is installed "
                         f"(installed: {', '.join(sorted(plugins.channels)) or 'none'})")
    specs = {name: plugins.channels[name] for name in names}
    asked = {name: fields(spec.channel_class) for name, spec in specs.items()}
    given: dict[str, dict[str, str]] = {name: {} for name in names}
    for key, value in args.assignments:
        owners = [name for name in names if any(s.env == key for s in asked[name])]
        if not owners:
            if len(names) == 1:
                known = f"its settings: {', '.join(s.env for s in asked[names[0]]) or 'none'}"
            else:
                known = "settings: " + "; ".join(f"{n}: {', '.join(s.env for s in asked[n]) or 'none'}" for n in names)
            raise UsageError(f"init: --set {key}: not a setting of {' or '.join(names)} ({known})")
        for name in owners:
            given[name][key] = value
    text = read_env_file(path)
    existing = parse_env_text(text) if text is not None else {}
    plan: Plan = []
    channels: dict[str, Channel | None] = {}
    for name in names:
        keys = {s.env for s in asked[name]}
        values = {k: v for k, v in existing.items() if k in keys} | given[name]
        try:
            channels[name] = channel = check_channel(specs[name], asked[name], values)
        except ConfigurationError as exc:
            missing = [s.env for s in asked[name] if s.required and not (values.get(s.env) or "").strip()]
            hint = f" (--set {missing[0]}=...)" if missing else ""
            raise UsageError(f"init: {name}: {exc}{hint}") from None
        settings = {s.env: s for s in asked[name]}
        plan.append((name, [Written(settings[k], v, channel) for k, v in given[name].items()], frozenset(keys)))
    if not any(items for _, items, _ in plan):
        print(f"Nothing to write: no --set given for {', '.join(names)}.")
    elif text is not None and not args.force:
        print(f"afs: {path} exists; not changed (--force updates it, keeping its other lines)", file=sys.stderr)
        return DELIVERY_FAILED
    else:
        _write(path, text, plan)
    if not args.test:
        return OK
    failed = False
    for name in names:
        if channels[name] is None:
            print(f"{name}: not tested: with these settings the channel is off")
        elif not _send_test(name, path):
            failed = True
    return DELIVERY_FAILED if failed else OK


# -- afs init, on a terminal ------------------------------------------------------------------


class Terminal:
    """The questions: lines through ``input``, secrets through ``getpass`` (no echo)."""

    def __init__(self, ask: Callable[[str], str] = input, ask_secret: Callable[[str], str] = getpass.getpass) -> None:
        self._ask = ask
        self._ask_secret = ask_secret
        self.wrote: str | None = None  # the file, once written

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def line(self, prompt: str, *, secret: bool = False) -> str:
        return (self._ask_secret if secret else self._ask)(prompt).strip()

    def yes(self, question: str, *, default: bool) -> bool:
        while True:
            answer = self.line(f"{question} {'[Y/n]' if default else '[y/N]'} ").lower()
            if not answer:
                return default
            if answer in ("y", "yes"):
                return True
            if answer in ("n", "no"):
                return False
            self.say("  please answer y or n")


def _choose(terminal: Terminal, specs: Sequence[ChannelSpec]) -> list[ChannelSpec]:
    terminal.say("Installed channels:")
    for number, spec in enumerate(specs, 1):
        names = ", ".join(s.env for s in fields(spec.channel_class)) or "nothing to set"
        terminal.say(f"  {number:>2}. {spec.name:<10} {spec.distribution or 'afs-core':<14} {names}")
    by_name = {spec.name: spec for spec in specs}
    while True:
        answer = terminal.line("Which channels to set up? (numbers or names; Enter for none): ")
        chosen: list[ChannelSpec] = []
        wrong = []
        for token in (t for t in re.split(r"[\s,]+", answer) if t):
            if token.isdigit() and 1 <= int(token) <= len(specs):
                chosen.append(specs[int(token) - 1])
            elif token.lower() in by_name:
                chosen.append(by_name[token.lower()])
            else:
                wrong.append(token)
        if not wrong:
            return list({spec.name: spec for spec in chosen}.values())
        terminal.say(f"  no channel {wrong[0]!r}: give numbers from 1 to {len(specs)} or names")


def _ask_setting(terminal: Terminal, setting: Setting, current: str | None) -> str | None:
    """One setting, asked until its own parser takes it. None: left unset (optional)."""
    how = ["required" if setting.required else "optional"]
    if setting.secret:
        how.append("hidden as you type")
    if current is not None:
        how.append("Enter keeps the current value" if setting.secret else f"Enter keeps {current!r}")
    elif not setting.required:
        how.append("Enter skips")
    hint = f" - {setting.help}" if setting.help else ""
    while True:
        value = terminal.line(f"  {setting.env}{hint} ({', '.join(how)}): ", secret=setting.secret)
        if not value:
            if current is not None or not setting.required:
                return current
            terminal.say(f"  {setting.env} is required")
            continue
        try:
            quote_value(value)
            read_settings([setting], {setting.env: value})  # its parser: a number, a boolean...
        except (ConfigurationError, ValueError) as exc:
            terminal.say(f"  {scrub(str(exc), [value])}")
            continue
        return value


def _named(settings: Sequence[Setting], error: Exception) -> list[Setting]:
    return [s for s in settings if re.search(rf"(?<![A-Za-z0-9_]){re.escape(s.env)}(?![A-Za-z0-9_])", str(error))]


def _ask_channel(terminal: Terminal, spec: ChannelSpec,
                 existing: Mapping[str, str]) -> tuple[list[Written], Channel | None] | None:
    """The settings of one channel, asked until the channel takes them: those that
    change, and the channel they make (None: off). None: nothing to ask, or left out.

    The channel checks the required settings as soon as they are in (a wrong URL is
    said before the optional questions), and everything at the end; a refused setting
    is asked again, and when the answers stay the same the user may leave the channel out.
    """
    asked = fields(spec.channel_class)
    if not asked:
        terminal.say(f"{spec.name}: nothing to set")
        return None
    terminal.say(f"{spec.name} ({spec.distribution or 'afs-core'}):")
    required = [s for s in asked if s.required]
    values: dict[str, str] = {}

    def ask(settings: Sequence[Setting]) -> bool:
        """Ask ``settings`` again; whether any answer changed."""
        changed = False
        for setting in settings:
            before = values.pop(setting.env, None)
            value = _ask_setting(terminal, setting, existing.get(setting.env))
            if value is not None:
                values[setting.env] = value
            changed = changed or value != before
        return changed

    ask(required)
    while required:
        try:
            check_channel(spec, asked, values)
        except ConfigurationError as exc:
            wrong = _named(required, exc)
            if wrong:  # else it is about an optional setting, asked next
                terminal.say(f"  {spec.name}: {exc}")
                if ask(wrong):
                    continue
        break
    ask([s for s in asked if not s.required])
    while True:
        try:
            channel = check_channel(spec, asked, values)
        except ConfigurationError as exc:
            terminal.say(f"  {spec.name}: {exc}")
            if ask(_named(asked, exc) or asked) or not terminal.yes(f"  Leave {spec.name} out?", default=False):
                continue
            terminal.say(f"  {spec.name} left out")
            return None
        changed = [Written(s, values[s.env], channel) for s in asked
                   if s.env in values and existing.get(s.env) != values[s.env]]
        return changed, channel


def _guided(args: argparse.Namespace, path: str, plugins: PluginHost, terminal: Terminal) -> int:
    text = read_env_file(path)
    terminal.say(f"Set up AFS notification channels; their settings go to {os.path.abspath(path)}.")
    if text is not None and not args.force:
        if not terminal.yes(f"{path} exists. Update it? Only the settings you enter change; its other lines stay.",
                            default=False):
            terminal.say(f"{path} not changed.")
            return DELIVERY_FAILED
    existing = parse_env_text(text) if text is not None else {}
    specs = [plugins.channels[name] for name in sorted(plugins.channels)]
    if not specs:
        terminal.say("No channels are installed (pip install ./plugins/afs-slack, for one).")
        return OK
    chosen = _choose(terminal, specs)
    if not chosen:
        terminal.say("No channel chosen; nothing written.")
        return OK
    plan: Plan = []
    testable: list[str] = []
    for spec in chosen:
        answered = _ask_channel(terminal, spec, existing)
        if answered is None:
            continue
        written, channel = answered
        plan.append((spec.name, written, frozenset(s.env for s in fields(spec.channel_class))))
        if channel is not None:
            testable.append(spec.name)
        else:
            terminal.say(f"  {spec.name}: with these settings the channel is off")
    if any(items for _, items, _ in plan):
        _write(path, text, plan)
        terminal.wrote = path
    else:
        terminal.say(f"Nothing changed in {path}." if text is not None else "Nothing written.")
    failed = False
    for name in testable:
        if terminal.yes(f"Send a test message through {name}?", default=True) and not _send_test(name, path):
            failed = True
    return DELIVERY_FAILED if failed else OK


# -- the command ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from afs_core.plugins import get_plugins

    path = args.env_file or ".env"
    if args.assignments and not args.channel:
        raise UsageError("init: --set needs --channel NAME (the channel the settings are for)")
    if os.path.isdir(path):
        raise UsageError(f"init: {path} is a directory")
    if not os.path.isdir(os.path.dirname(os.path.realpath(path))):
        raise UsageError(f"init: the folder of {path} does not exist")
    plugins = get_plugins(_environment(path))
    if args.channel:
        return _from_flags(args, path, plugins)
    if not _stdin_is_terminal():
        raise UsageError(NOT_A_TERMINAL)
    terminal = Terminal()
    try:
        return _guided(args, path, plugins, terminal)
    except (KeyboardInterrupt, EOFError) as exc:
        kept = f"{terminal.wrote} was written and stays" if terminal.wrote else "nothing written"
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else "no more input"
        print(f"\nafs init: {why}; {kept}", file=sys.stderr)
        return INTERRUPTED if isinstance(exc, KeyboardInterrupt) else USAGE


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False
