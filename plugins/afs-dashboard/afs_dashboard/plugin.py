"""The entry point: adds ``afs dashboard`` to the ``afs`` command.

Training code imports this module too (every ``afs`` entry point is loaded), so it
only names the command; the server and its dependencies load when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from afs_core import hookimpl
from afs_core.config import parse_duration

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535; 0 picks a free one)")
    return port


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A local web page over this machine's AFS history: runs and their state, each run's events, metric "
        "curves and deliveries, the outbox (retry, flush) and the channels. Loopback only unless --token is given."
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}); any other than loopback needs --token")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--open", action="store_true", help="open the dashboard in a web browser")
    parser.add_argument("--token", metavar="T",
                        help="every request must carry this token (default AFS_DASHBOARD_TOKEN): open "
                        "/?token=T once, or send the header 'Authorization: Bearer T'")
    parser.add_argument("--quiet-after", type=_duration, default=None, metavar="DURATION",
                        help="a running run that told nothing for this long is shown quiet (default "
                        "AFS_STALL_AFTER, else 30m)")


def run(args: argparse.Namespace) -> int:
    from afs_dashboard.command import serve

    return serve(args)


@hookimpl
def afs_register_commands(register: Callable[..., Any]) -> None:
    register("dashboard", configure, run, help="a local web page over the history: runs, curves, outbox, channels")
