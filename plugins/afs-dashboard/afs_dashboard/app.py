"""The web application: one route per page (each with a ``.json`` twin), the outbox
actions as POSTs, and the one static script.

Endpoints are plain functions: Starlette runs them on its thread pool, where each
thread keeps its own connection to the store.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from afs_core.delivery.store import Store, StoreUnavailable
from afs_core.formatting import format_duration
from afs_dashboard import security, views

HERE = Path(__file__).resolve().parent
FLUSH_SECONDS = 10.0
#: The most digits a count in an outbox note may have (longer: not a count, the note is left out).
_NOTE_DIGITS = 18

#: What the outbox page says after an action (codes in the address, never free text).
NOTES = {
    "retried": "Delivery {id} was sent again: {went} went out.",
    "retry-pending": "Delivery {id} is pending again; it goes out when a process with its channel runs "
                     "(its channel is not configured here).",
    "retry-left": "Delivery {id} is pending again and was not delivered yet (afs outbox shows why).",
    "not-dead": "Delivery {id} is not a dead delivery.",
    "flushed": "{went} of {total} pending deliveries went out; {dead} failed for good; {left} still pending.",
    "nothing": "No configured channel has anything pending.",
}


@attrs.frozen
class Settings:
    """How ``afs dashboard`` was started."""

    env_file: str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    token: str | None = None
    quiet_after: float = 30 * 60.0
    bound_host: str = "127.0.0.1"
    loopback_only: bool = True


def _iso(value: float | None) -> str:
    """A stored time for ``<time datetime=...>``: UTC, which the page's script shows in the viewer's zone."""
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: float | None) -> str:
    """The same time as text, for a browser without the script."""
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_url(run_id: object, before: float | None = None) -> str:
    """A run's page: ``/runs/<id>`` (every character that means something in a path
    quoted), or ``/run?id=<id>`` for an id no path can carry as it is: one ending in
    ``.json`` (read as the page's JSON twin), and ``.`` or ``..`` (which browsers take
    for the folder itself or the one above). ``before``: the events older than that."""
    text = str(run_id)
    query = {} if before is None else {"before": repr(float(before))}
    if text in ("", ".", "..") or text.endswith(".json"):
        return "/run?" + urlencode({"id": text, **query})
    return "/runs/" + quote(text, safe="") + ("?" + urlencode(query) if query else "")


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(iso=_iso, when=_when, duration=format_duration, run_url=run_url)
    return env


def create_app(store: Store, settings: Settings) -> Starlette:
    """The dashboard over ``store``."""
    templates = _templates()
    csrf = security.new_csrf_token()
    built, _ = views.configured_channels(settings.env)
    redact = views.Redactor(views.channel_secrets(built))
    reopen_lock = threading.Lock()

    def reopen(stale: Store) -> bool:
        """Open the store file again, making its tables: another process put a file
        without them in its place (a damaged store replaced while this one read it)."""
        nonlocal store
        with reopen_lock:
            if store is not stale:
                return True  # another request did it
            if not isinstance(stale, Store) or stale.path is None or stale.read_only:
                return False
            fresh = Store(stale.path, clock=stale.clock, shared_filesystem=stale.shared_filesystem)
            fresh.location, fresh.lease_seconds = stale.location, stale.lease_seconds
            store = fresh
        return True

    def reopening(endpoint: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """``endpoint``, asked again on the store opened afresh when its tables are gone."""

        @functools.wraps(endpoint)
        def guarded(request: Request) -> Response:
            stale = store
            try:
                return endpoint(request)
            except sqlite3.OperationalError as exc:
                if not str(exc).startswith("no such table") or not reopen(stale):
                    raise
            return endpoint(request)

        return guarded

    def page(request: Request, template: str, data: dict[str, Any], status: int = 200) -> Response:
        if request.url.path.endswith(".json"):
            return JSONResponse(_plain(data), status_code=status)
        html = templates.get_template(template).render(
            **data, csrf=csrf, path=request.url.path, now=time.time(), version=_version(),
            note=_note(request),
        )
        return HTMLResponse(html, status_code=status)

    def _version() -> str:
        return "-".join(str(mark) for mark in store.last_change())

    def _note(request: Request) -> str | None:
        code = request.query_params.get("note")
        if code not in NOTES:
            return None
        numbers = {key: int(value) for key in ("id", "went", "total", "dead", "left")
                   if (value := request.query_params.get(key, "")).isascii() and value.isdigit()
                   and len(value) <= _NOTE_DIGITS}
        try:
            return NOTES[code].format(**numbers)
        except KeyError:
            return None

    def home(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=303)

    def runs(request: Request) -> Response:
        return page(request, "runs.html", views.runs_page(store, time.time(), settings.quiet_after))

    def run(request: Request) -> Response:
        if "run_id" in request.path_params:
            run_id = request.path_params["run_id"]
            if request.url.path.endswith(".json"):
                run_id = run_id[: -len(".json")]
        elif "id" in request.query_params:  # /run?id=..., for any id
            run_id = request.query_params["id"]
        else:
            return PlainTextResponse("id= must name a run", status_code=400)
        try:
            before = float(request.query_params["before"]) if "before" in request.query_params else None
        except ValueError:
            before = math.nan
        if before is not None and not math.isfinite(before):
            return PlainTextResponse("before= must be a time in seconds", status_code=400)
        data = views.run_page(store, run_id, time.time(), settings.quiet_after, redact, before=before)
        if data is None:
            return page(request, "missing.html", {"run_id": run_id}, status=404)
        return page(request, "run.html", data)

    def outbox(request: Request) -> Response:
        return page(request, "outbox.html", views.outbox_page(store, redact))

    def channels(request: Request) -> Response:
        return page(request, "channels.html", views.channels_page(store, settings.env, redact))

    def version(request: Request) -> Response:
        return JSONResponse({"version": _version(), "minute": int(time.time() // 60)})

    async def checked_form(request: Request) -> dict[str, str] | Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host"):
            return PlainTextResponse("Refused: this request came from another site.", status_code=403)
        form = await request.form()
        if not security.same(str(form.get("csrf") or "") or None, csrf):
            return PlainTextResponse("Refused: the form's CSRF token is missing or stale; reload the page and try "
                                     "again.", status_code=403)
        return {key: str(value) for key, value in form.items()}

    async def retry(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        delivery_id = int(request.path_params["delivery_id"])
        note = await run_in_threadpool(_retry, store, settings, delivery_id)
        return RedirectResponse(f"/outbox?{note}", status_code=303)

    async def flush(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        note = await run_in_threadpool(_flush, store, settings, None)
        return RedirectResponse(f"/outbox?{note}", status_code=303)

    routes = [
        Route("/", home),
        Route("/runs", reopening(runs)),
        Route("/runs.json", reopening(runs)),
        Route("/runs/{run_id:path}", reopening(run)),
        Route("/run", reopening(run)),
        Route("/run.json", reopening(run)),
        Route("/outbox", reopening(outbox)),
        Route("/outbox.json", reopening(outbox)),
        Route("/outbox/{delivery_id:int}/retry", retry, methods=["POST"]),
        Route("/outbox/flush", flush, methods=["POST"]),
        Route("/channels", reopening(channels)),
        Route("/channels.json", reopening(channels)),
        Route("/version", reopening(version)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={StoreUnavailable: _store_away})
    allowed = {*security.LOOPBACK_NAMES, settings.bound_host.lower()} if settings.loopback_only else None
    app.add_middleware(security.Guard, token=settings.token, allowed_hosts=allowed)
    return app


async def _store_away(request: Request, exc: Exception) -> Response:
    """The store cannot be reached now (a database server restarting): say so, and the
    page's script tries again, rather than an error page."""
    text = f"The store cannot be reached now: {exc}. This page tries again shortly."
    if request.url.path.endswith(".json") or request.url.path == "/version":
        return JSONResponse({"error": text}, status_code=503, headers={"Retry-After": "5"})
    return PlainTextResponse(text, status_code=503, headers={"Retry-After": "5"})


def _open_manager(settings: Settings, channel: str | None) -> Any:
    """A manager on the settings (only ``channel``'s, when given), as ``afs outbox flush`` opens one."""
    from afs_core.cli.common import open_manager

    return open_manager(argparse.Namespace(env_file=settings.env_file, channel=None if channel is None else [channel]))


def _flush(store: Store, settings: Settings, channel: str | None) -> str:
    """Deliver what is pending for the configured channels (or one), the way ``afs outbox flush`` does."""
    from afs_core.cli.common import UsageError
    from afs_core.cli.outbox import flush_outbox, pending_before
    from afs_core.config import env_float

    known = pending_before(store)
    try:
        manager = _open_manager(settings, channel)
    except UsageError:
        return "note=nothing"
    deadline = time.monotonic() + env_float(settings.env, "AFS_FLUSH_TIMEOUT", FLUSH_SECONDS)
    flushed = flush_outbox(store, manager, deadline, warn=lambda text: None, known=known)
    total = len(flushed.wanted or ())
    if not total and channel is None:
        return "note=nothing"
    left = sum((flushed.pending or {}).values())
    return f"note=flushed&went={flushed.went}&total={total}&dead={flushed.dead}&left={left}"


def _retry(store: Store, settings: Settings, delivery_id: int) -> str:
    """Make a dead delivery pending again (``Store.requeue``) and send it now, when its
    channel is configured here."""
    from afs_core.results import DeliveryStatus

    row = next((r for r in store.outbox(statuses=(DeliveryStatus.FAILED,), limit=10**9)
                if r.delivery_id == delivery_id), None)
    if row is None or not store.requeue(delivery_id):
        return f"note=not-dead&id={delivery_id}"
    from afs_core.cli.common import UsageError
    from afs_core.cli.outbox import flush_outbox
    from afs_core.config import env_float

    try:
        manager = _open_manager(settings, row.channel)
    except UsageError:
        return f"note=retry-pending&id={delivery_id}"
    deadline = time.monotonic() + env_float(settings.env, "AFS_FLUSH_TIMEOUT", FLUSH_SECONDS)
    flushed = flush_outbox(store, manager, deadline, warn=lambda text: None)
    went = store.statuses([delivery_id]).get(DeliveryStatus.DELIVERED, 0)
    if not went:
        return f"note=retry-left&id={delivery_id}"
    return f"note=retried&id={delivery_id}&went={flushed.went}"


def _plain(value: Any) -> Any:
    """The page's data as JSON: the drawn curves are left out (their points are counted),
    and NaN and the infinities, which JSON cannot hold, are written as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if k != "svg"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value
