"""``afs dashboard``: check where it may listen, open the store, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading
import time

from afs_core.config import load_env, parse_duration

USAGE = 2
DEFAULT_QUIET_AFTER = 30 * 60.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _quiet_after(args: argparse.Namespace, env: dict[str, str]) -> float:
    if args.quiet_after is not None:
        return float(args.quiet_after)
    try:
        return parse_duration(env["AFS_STALL_AFTER"]) if env.get("AFS_STALL_AFTER") else DEFAULT_QUIET_AFTER
    except ValueError:
        return DEFAULT_QUIET_AFTER


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    """Run the dashboard; exit 2 on a refused address or a port that cannot be had."""
    env = load_env(args.env_file)
    token = args.token or env.get("AFS_DASHBOARD_TOKEN") or None
    if not is_loopback(args.host) and not token:
        print(f"afs dashboard: refusing to listen on {args.host}: it is not a loopback address, so others could "
              "read the history and retry deliveries; give --token T (or AFS_DASHBOARD_TOKEN), or use "
              "--host 127.0.0.1", file=sys.stderr)
        return USAGE
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"afs dashboard: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return USAGE

    import uvicorn

    from afs_core.cli.common import open_store_taking_journals
    from afs_dashboard.app import Settings, create_app

    store = open_store_taking_journals(args)
    if store.durable and not store.read_only:
        store.check()  # a damaged file is set aside now, not found out page by page
    port = sock.getsockname()[1]
    shown_host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{port}/"
    app = create_app(store, Settings(env_file=args.env_file, env=env, token=token, quiet_after=_quiet_after(args, env),
                                     bound_host=args.host, loopback_only=is_loopback(args.host)))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           server_header=False, timeout_graceful_shutdown=2))
    where = store.location.path or (store.backend if store.durable else "memory (not durable)")
    print(f"afs dashboard: {url} (the history in {where}; Ctrl-C stops it)", flush=True)
    if args.open:
        threading.Thread(target=_open_when_started, args=(server, url + (f"?token={token}" if token else "")),
                         daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _open_when_started(server: object, url: str) -> None:
    import webbrowser

    deadline = time.monotonic() + 10
    while not getattr(server, "started", False) and time.monotonic() < deadline:
        time.sleep(0.05)
    webbrowser.open(url)
