"""The plugin API: every hook a plugin can implement, with its exact signature.

One project name, ``afs``, is used for the markers, the entry-point group and the
hook prefix. Hooks are always called with keyword arguments, so a spec can gain
an argument later without breaking existing plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from afs_core.channels.base import Channel
    from afs_core.errors import DeliveryError
    from afs_core.events import NotificationEvent

PROJECT_NAME = "afs"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

RegisterChannel = Callable[[str, "type[Channel]"], None]
#: ``register(name, configure, run, help="...")``: see :func:`afs_register_commands`.
RegisterCommand = Callable[..., None]


@hookspec
def afs_register_channels(register: RegisterChannel) -> None:
    """Offer channel classes to the core.

    Call ``register("acme", AcmeChannel)`` once per channel. The core checks the
    class, rejects a name that is already taken and remembers which plugin gave it.

    :param register: ``register(name, channel_class)``; ``name`` is what users put
        in settings and on the command line, by convention the entry-point name.
    """


@hookspec
def afs_enrich_event(event: NotificationEvent) -> Mapping[str, Any] | None:
    """Add context to every event before it is filtered, formatted and delivered.

    Return a mapping of extra ``context`` entries (a run link, a project label), or
    ``None``. Results are merged in call order; keys the caller set always win.

    :param event: the event as the caller built it.
    :return: extra context entries, or ``None``.
    """


@hookspec
def afs_filter_event(event: NotificationEvent, channel: Channel) -> bool | None:
    """Decide whether ``channel`` gets ``event``.

    Return ``False`` to hold the event back from this channel; ``True`` or ``None``
    lets it through. One ``False`` is enough to hold it back.

    :param event: the enriched event.
    :param channel: the channel instance that would deliver it.
    """


@hookspec(firstresult=True)
def afs_format_event(event: NotificationEvent, channel: Channel) -> Any:
    """Render ``event`` into the message ``channel`` sends (first non-``None`` result wins).

    The core's own implementation runs last and calls ``channel.format(event)``, so
    a plugin can change how any channel renders any event by returning a message
    for the events and channels it cares about and ``None`` for the rest.

    :param event: the enriched event.
    :param channel: the channel the message is for.
    :return: the channel-specific message, or ``None`` to leave it to others.
    """


@hookspec(firstresult=True)
def afs_deliver(message: Any, channel: Channel, event: NotificationEvent) -> Any:
    """Send a formatted message (first non-``None`` result wins).

    The core's own implementation runs last and calls ``channel.deliver(message)``.
    Implement it with ``wrapper=True`` to observe, time or retry every send;
    return a value to take over delivery for a channel. Failure is a raised
    :class:`~afs_core.errors.DeliveryError`.

    :param message: what :func:`afs_format_event` produced.
    :param channel: the channel that sends it.
    :param event: the event the message was made from.
    :return: a receipt (any non-``None`` value) when delivered.
    """


@hookspec
def afs_delivery_failed(event: NotificationEvent, channel: Channel, error: DeliveryError) -> None:
    """Observe a delivery that failed; the return value is ignored.

    Called once per failed delivery, after the error was logged. Raising here is
    logged and otherwise ignored.

    :param event: the event that was not delivered.
    :param channel: the channel that failed.
    :param error: why; ``error.permanent`` says whether trying again could help.
    """


@hookspec
def afs_register_commands(register: RegisterCommand) -> None:
    """Offer subcommands of the ``afs`` command (``afs dashboard``).

    Call ``register("dashboard", configure, run, help="...")`` once per command:
    ``configure(parser)`` adds the command's arguments to its ``argparse`` parser,
    ``run(args)`` runs it and returns the exit code. The core asks only when it
    builds the ``afs`` command, checks the name, refuses one that is taken and
    remembers which plugin gave it (``afs plugins`` shows it). Keep the module that
    implements this light: import what the command needs inside ``run``.

    :param register: ``register(name, configure, run, *, help="")``; ``name`` is
        lowercase letters, digits and ``-``.
    """
