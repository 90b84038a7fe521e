"""Finding plugins and the channels they offer, one entry point at a time.

A plugin that fails to import, or whose hooks are misspelt, is logged with its
distribution's name and skipped, so one broken package never breaks the others;
``AFS_STRICT_PLUGINS=1`` raises instead, for plugin authors.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import pluggy

from afs_core import hookspecs
from afs_core.channels.base import Channel
from afs_core.config import parse_bool
from afs_core.errors import PluginLoadError

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BUILTIN_PLUGINS = ("afs_core.default_plugins.console", "afs_core.default_plugins.channel_defaults")

logger = logging.getLogger("afs.plugins")

# A plugin that calls sys.exit() while importing (argparse at import time, say) must
# not end the training run; Ctrl-C still does.
_CAUGHT = (Exception, SystemExit)

_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_COMMAND_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class ChannelSpec(NamedTuple):
    """A channel class and the plugin that registered it."""

    name: str
    channel_class: type[Channel]
    plugin: str
    distribution: str | None = None


class CommandSpec(NamedTuple):
    """A subcommand of ``afs`` and the plugin that registered it."""

    name: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]
    help: str
    plugin: str
    distribution: str | None = None


class PluginInfo(NamedTuple):
    """What ``afs plugins`` shows for one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    channels: tuple[str, ...]
    commands: tuple[str, ...] = ()


class PluginFailure(NamedTuple):
    """A plugin that was skipped, and why."""

    name: str
    distribution: str | None
    error: str


def _parse_allow_list(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


class PluginHost:
    """A pluggy plugin manager with the core's hooks, its defaults and the installed plugins.

    :param load_entry_points: load plugins installed under the ``afs`` entry-point group.
    :param allow: entry-point or distribution names to load; ``None`` loads all,
        an empty collection loads none.
    :param strict: raise :class:`~afs_core.errors.PluginLoadError` instead of skipping.
    """

    def __init__(
        self,
        *,
        load_entry_points: bool = True,
        allow: Collection[str] | None = None,
        strict: bool = False,
        trace: bool = False,
    ) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._distributions: dict[str, tuple[str | None, str | None]] = {}
        self.channels: dict[str, ChannelSpec] = {}
        self._commands: dict[str, CommandSpec] | None = None  # asked for by the afs command only
        self._registration_order: list[str] = []
        #: Whether every plugin came from an entry point (or the core): another process
        #: with the same settings then has the same ones (a courier, see afs_core.delivery.courier).
        self.reproducible = load_entry_points
        self.tracing = trace  # every hook call is logged, even one no plugin implements
        if trace:
            self.pm.trace.root.setwriter(logger.debug)
            self.pm.enable_tracing()
        import importlib

        for module_name in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(module_name), name=module_name)
            self._registration_order.append(module_name)
        if load_entry_points:
            self._load_entry_points(None if allow is None else frozenset(allow))
        self._collect_channels()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginHost:
        """A host configured by ``AFS_LOAD_PLUGINS``, ``AFS_STRICT_PLUGINS``, ``AFS_TRACE_PLUGINS``."""
        env = os.environ if env is None else env
        return cls(**_settings(env))

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading ------------------------------------------------------------------

    def _load_entry_points(self, allow: frozenset[str] | None) -> None:
        from afs_core.discovery import entry_points  # cached while what is installed is unchanged

        seen: set[tuple[str, str]] = set()
        for ep in entry_points(ENTRY_POINT_GROUP):
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist_name, version = ep.dist_name, ep.version
            if allow is not None and ep.name not in allow and dist_name not in allow:
                logger.debug("plugin %r (%s) not in AFS_LOAD_PLUGINS; skipped", ep.name, dist_name)
                continue
            try:
                plugin = ep.load()
            except _CAUGHT as exc:
                self._fail(ep.name, dist_name, f"failed to import {ep.value}: {exc!r}", exc)
                continue
            if self._register_checked(plugin, ep.name, dist_name):
                self._distributions[ep.name] = (dist_name, version)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register a plugin object (module or instance) by hand, e.g. in tests.

        Returns its name, or ``None`` when it was rejected (and logged).
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if not self._register_checked(plugin, name, None):
            return None
        self.reproducible = False
        self._collect_channels()
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        if name in self._registration_order:
            self._registration_order.remove(name)
        self._distributions.pop(name, None)
        self._collect_channels()

    def _register_checked(self, plugin: object, name: str, dist_name: str | None) -> bool:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self._fail(name, dist_name, f"could not be registered: {exc}", exc)
            return False
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            self._fail(name, dist_name, f"has an unknown hook: {exc}", exc)
            return False
        self._registration_order.append(name)
        return True

    def _fail(self, name: str, dist_name: str | None, error: str, exc: BaseException) -> None:
        who = f"{name!r} from {dist_name}" if dist_name else repr(name)
        if self.strict:
            raise PluginLoadError(f"afs plugin {who} {error}") from exc
        logger.warning("afs plugin %s %s; skipped", who, error)
        self.failures.append(PluginFailure(name, dist_name, error))

    # -- channels -----------------------------------------------------------------

    def _collect_channels(self) -> None:
        channels: dict[str, ChannelSpec] = {}
        # Ask plugins in registration order, the core's own first, whatever their
        # tryfirst/trylast marks: a plugin cannot take over a built-in channel name.
        order = {name: index for index, name in enumerate(self._registration_order)}
        impls = sorted(
            self.pm.hook.afs_register_channels.get_hookimpls(),
            key=lambda impl: order.get(impl.plugin_name, len(order)),
        )
        for impl in impls:
            plugin_name = impl.plugin_name
            dist_name = self._distributions.get(plugin_name, (None, None))[0]
            offered: dict[str, ChannelSpec] = {}

            def register(name: str, channel_class: type[Channel], *, _p: str = plugin_name, _d: str | None = dist_name,
                         _o: dict[str, ChannelSpec] = offered) -> None:
                self._check_channel(channels, _o, name, channel_class, _p, _d)
                _o[name] = ChannelSpec(name, channel_class, _p, _d)

            try:
                impl.function(register=register)
            except _CAUGHT as exc:
                # All or nothing: a plugin that fails half-way is not left half active.
                self.pm.unregister(name=plugin_name)
                self._registration_order.remove(plugin_name)
                self._fail(plugin_name, dist_name, f"failed in afs_register_channels: {exc!r}", exc)
                continue
            for spec in offered.values():
                if not vars(spec.channel_class).get("name"):
                    spec.channel_class.name = spec.name  # a subclass gets its own name
            channels.update(offered)
        self.channels = channels

    def _check_channel(
        self,
        channels: Mapping[str, ChannelSpec],
        offered: Mapping[str, ChannelSpec],
        name: str,
        channel_class: type[Channel],
        plugin: str,
        dist_name: str | None,
    ) -> None:
        if not isinstance(name, str) or not _CHANNEL_NAME.match(name):
            raise ValueError(f"channel name {name!r} must be lowercase letters, digits, '-' or '_'")
        if not (isinstance(channel_class, type) and issubclass(channel_class, Channel)):
            raise TypeError(f"channel {name!r} must be a subclass of afs_core.Channel, got {channel_class!r}")
        owner = channels.get(name) or offered.get(name)
        if owner is not None:
            raise ValueError(f"channel {name!r} is already registered by {owner.distribution or owner.plugin}")

    # -- commands -----------------------------------------------------------------

    def commands(self, reserved: Collection[str] = ()) -> dict[str, CommandSpec]:
        """The subcommands plugins offer, asked for only when the ``afs`` command is
        built (training code never pays for it). A name in ``reserved`` (the core's own
        commands) or already taken is refused and logged; so is a plugin whose hook fails."""
        commands: dict[str, CommandSpec] = {}
        order = {name: index for index, name in enumerate(self._registration_order)}
        impls = sorted(
            self.pm.hook.afs_register_commands.get_hookimpls(),
            key=lambda impl: order.get(impl.plugin_name, len(order)),
        )
        for impl in impls:
            plugin_name = impl.plugin_name
            dist_name = self._distributions.get(plugin_name, (None, None))[0]
            offered: dict[str, CommandSpec] = {}

            def register(name: str, configure: Callable[[Any], None], run: Callable[[Any], int], *, help: str = "",
                         _p: str = plugin_name, _d: str | None = dist_name,
                         _o: dict[str, CommandSpec] = offered) -> None:
                if not isinstance(name, str) or not _COMMAND_NAME.match(name):
                    raise ValueError(f"command name {name!r} must be lowercase letters, digits or '-'")
                if not callable(configure) or not callable(run):
                    raise TypeError(f"command {name!r}: configure and run must be callables")
                owner = commands.get(name) or _o.get(name)
                if name in reserved or owner is not None:
                    raise ValueError(f"command {name!r} is already taken by "
                                     f"{'afs-core' if owner is None else owner.distribution or owner.plugin}")
                _o[name] = CommandSpec(name, configure, run, str(help), _p, _d)

            try:
                impl.function(register=register)
            except _CAUGHT as exc:
                self._fail(plugin_name, dist_name, f"failed in afs_register_commands: {exc!r}", exc)
                continue
            commands.update(offered)
        self._commands = commands
        return commands

    # -- views --------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution, version, hooks and channels."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            default = ("afs-core", _core_version()) if name in BUILTIN_PLUGINS else (None, None)
            dist_name, version = self._distributions.get(name, default)
            channels = tuple(s.name for s in self.channels.values() if s.plugin == name)
            commands = tuple(c.name for c in (self._commands or {}).values() if c.plugin == name)
            infos.append(PluginInfo(name, dist_name, version, hooks, channels, commands))
        return infos


def _core_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("afs-core")
    except PackageNotFoundError:
        return None


def _settings(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "allow": _parse_allow_list(env.get("AFS_LOAD_PLUGINS")),
        "strict": parse_bool(env.get("AFS_STRICT_PLUGINS", "")) is True,
        "trace": parse_bool(env.get("AFS_TRACE_PLUGINS", "")) is True,
    }


_lock = threading.Lock()
_hosts: dict[tuple[Any, ...], PluginHost] = {}
_override: list[PluginHost] = []
_default_settings: dict[str, Any] | None = None


def get_plugins(env: Mapping[str, str] | None = None) -> PluginHost:
    """The process-wide plugin host for these settings, loaded once and reused.

    Without ``env``, the settings are the environment plus ``.env`` (read once), so
    sending now (``send_now``) honours the same ``AFS_LOAD_PLUGINS`` as ``from_env()``.
    """
    if _override:
        return _override[-1]
    if env is None:
        global _default_settings
        if _default_settings is None:
            from afs_core.config import load_env

            _default_settings = _settings(load_env())
        settings = _default_settings
    else:
        settings = _settings(env)
    key = (settings["allow"], settings["strict"], settings["trace"])
    with _lock:
        host = _hosts.get(key)
        if host is None:
            host = _hosts[key] = PluginHost(**settings)
        return host


@contextmanager
def use_plugins(host: PluginHost) -> Iterator[PluginHost]:
    """Make ``host`` the process-wide plugin host inside the ``with`` block (for tests)."""
    _override.append(host)
    try:
        yield host
    finally:
        _override.remove(host)
