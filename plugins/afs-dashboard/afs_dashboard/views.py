"""What each page shows, worked out from the store's records: plain data that the
templates lay out and the ``.json`` twins return as they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from afs_core.channels.base import Channel
from afs_core.delivery.store import RunSummary, Store, status_name
from afs_core.errors import ConfigurationError
from afs_core.formatting import format_cost, format_duration, format_number
from afs_core.redaction import scrub
from afs_dashboard.svg import line_chart

#: How a run stands, by the type of its newest start, end, pause, resume or stall event.
_ENDED = {"training_completed": "completed", "training_failed": "failed", "training_paused": "paused"}
RUN_STATES = ("running", "completed", "failed", "paused", "quiet")
TIMELINE_EVENTS = 500


class Redactor:
    """Masks the configured channels' secrets in anything shown: a last error, a
    setting's complaint (the core masks them before storing; this is the second lock)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, text: object) -> str:
        return scrub("" if text is None else str(text), self.secrets)


def run_state(run: RunSummary, now: float, quiet_after: float) -> tuple[str, str]:
    """(state, what a reader is told about it)."""
    if run.state_event in _ENDED:
        return _ENDED[run.state_event], ""
    silent = now - run.last_seen
    if silent > quiet_after:
        return "quiet", f"nothing told for {format_duration(silent)}"
    if run.state_event == "training_stalled":
        return "quiet", "reported stalled"
    return "running", ""


def run_row(run: RunSummary, now: float, quiet_after: float) -> dict[str, Any]:
    state, detail = run_state(run, now, quiet_after)
    if state == "running":
        duration = now - run.started
    elif run.duration is not None:
        duration = run.duration
    else:
        duration = (run.state_at if run.state_at is not None and state != "quiet" else run.last_seen) - run.started
    return {
        "run_id": run.run_id, "model_name": run.model_name, "hosts": list(run.hosts), "ranks": list(run.ranks),
        "started": run.started, "last_event": run.last_seen, "state": state, "state_detail": detail,
        "duration": max(duration, 0.0), "duration_text": format_duration(max(duration, 0.0)),
        "cost": run.cost, "cost_text": None if run.cost is None else format_cost(run.cost), "events": run.events,
    }


def runs_page(store: Store, now: float, quiet_after: float, limit: int = 200) -> dict[str, Any]:
    runs = store.runs(limit=limit, metrics_since=now - 2 * quiet_after)
    return {"runs": [run_row(run, now, quiet_after) for run in runs], "quiet_after": quiet_after, "limit": limit}


def _points(series: Iterable[Any]) -> tuple[list[tuple[float, float]], bool]:
    """A metric's points as (x, y): by step when every point has one, else by time."""
    points = list(series)
    by_step = all(p.step is not None for p in points)
    return [(float(p.step if by_step else p.at), float(p.value)) for p in points], not by_step


def _event_row(event: Any, redact: Redactor) -> dict[str, Any]:
    data = event.event
    metrics = data.get("metrics") if isinstance(data.get("metrics"), Mapping) else {}
    context = data.get("context") if isinstance(data.get("context"), Mapping) else {}
    source = data.get("source") if isinstance(data.get("source"), Mapping) else {}
    return {
        "event_id": event.event_id, "created": event.created, "event_type": event.event_type,
        "level": event.level, "title": event.title, "message": data.get("message") or "",
        "error_details": data.get("error_details"),
        "metrics": {str(k): format_number(v) for k, v in metrics.items()},
        "context": {str(k): v if isinstance(v, (str, int, float)) else repr(v)
                    for k, v in context.items() if k != "loss_curve"},
        "host": source.get("host"), "rank": source.get("rank"),
        "deliveries": [{
            "id": d.delivery_id, "channel": d.channel, "status": status_name(d.status), "attempts": d.attempts,
            "last_error": None if d.last_error is None else redact(d.last_error), "next_attempt": d.next_attempt,
            "tries": [{"at": t.at, "outcome": t.outcome, "error": None if t.error is None else redact(t.error)}
                      for t in d.tries],
        } for d in event.deliveries],
    }


def run_page(store: Store, run_id: str, now: float, quiet_after: float, redact: Redactor,
             before: float | None = None) -> dict[str, Any] | None:
    """A run: its summary, its events newest first with every delivery, its curves."""
    found = store.runs(limit=1, metrics_since=now - 2 * quiet_after, run_id=run_id)
    summary = found[0] if found else None
    events = store.run_events(run_id, limit=TIMELINE_EVENTS, before=before)
    series = store.metric_series(run_id)
    if summary is None and not events and not series and before is None:
        return None
    curves = []
    for name, points in sorted(series.items(), key=lambda item: (item[0] != "loss", item[0])):
        xy, by_time = _points(points)
        curves.append({"name": name, "points": len(xy), "last": format_number(xy[-1][1]) if xy else None,
                       "svg": line_chart(xy, label=name, x_is_time=by_time)})
    costs = store.run_costs(run_id)
    return {
        "run": None if summary is None else run_row(summary, now, quiet_after),
        "run_id": run_id,
        "events": [_event_row(e, redact) for e in events],
        "older": events[-1].created if len(events) == TIMELINE_EVENTS else None,
        "before": before,
        "curves": curves,
        "cost": {"points": len(costs), "last": format_cost(costs[-1][1]) if costs else None,
                 "svg": line_chart(costs, label="cost", x_is_time=True, colour="#b45309")} if costs else None,
    }


def outbox_page(store: Store, redact: Redactor, limit: int = 500) -> dict[str, Any]:
    rows = store.outbox(limit=limit)
    deliveries = [{
        "id": r.delivery_id, "channel": r.channel, "status": status_name(r.status), "title": r.title,
        "run_id": r.run_id, "attempts": r.attempts, "next_attempt": r.next_attempt,
        "last_error": None if r.last_error is None else redact(r.last_error),
    } for r in rows]
    return {"pending": [d for d in deliveries if d["status"] == "pending"],
            "dead": [d for d in deliveries if d["status"] == "dead"], "limit": limit}


def configured_channels(env: Mapping[str, str]) -> tuple[dict[str, Channel | None], dict[str, str]]:
    """Every installed channel built from the settings: the instance (None: not
    configured), and for those whose settings are wrong or whose plugin broke, why."""
    from afs_core.plugins import get_plugins

    built: dict[str, Channel | None] = {}
    problems: dict[str, str] = {}
    for name, spec in sorted(get_plugins(env).channels.items()):
        try:
            built[name] = spec.channel_class.from_env(env)
        except ConfigurationError as exc:
            built[name], problems[name] = None, f"misconfigured: {exc}"
        except Exception as exc:  # a plugin's bug: say so, keep going
            built[name], problems[name] = None, f"broken: {type(exc).__name__}: {exc}"
    return built, problems


def channel_secrets(channels: Mapping[str, Channel | None]) -> list[str]:
    found: list[str] = []
    for channel in channels.values():
        if channel is not None:
            try:
                found.extend(channel.secrets())
            except Exception:  # a plugin's bug must not open the page to its secrets: keep the others
                continue
    return found


def channels_page(store: Store, env: Mapping[str, str], redact: Redactor, failures_per_channel: int = 5
                  ) -> dict[str, Any]:
    from afs_core.config import parse_bool
    from afs_core.plugins import get_plugins

    plugins = get_plugins(env)
    built, problems = configured_channels(env)
    redact = Redactor((*redact.secrets, *channel_secrets(built)))
    counts = store.counts()
    failures: dict[str, list[dict[str, Any]]] = {}
    for failure in store.channel_failures(limit=50 * failures_per_channel):
        shown = failures.setdefault(failure.channel, [])
        if len(shown) < failures_per_channel:
            shown.append({"at": failure.at, "outcome": failure.outcome, "delivery_id": failure.delivery_id,
                          "error": redact(failure.error), "title": failure.title, "run_id": failure.run_id})
    channels = []
    for name, channel in built.items():
        spec = plugins.channels[name]
        if name in problems:
            state, detail = problems[name].split(": ", 1)
        elif channel is not None:
            state, detail = "configured", channel.describe()
        elif name == "console" and parse_bool(env.get("AFS_CONSOLE", "")) is not False:
            state, detail = "fallback", "used when no other channel is configured"
        else:
            needs = ", ".join(getattr(spec.channel_class, "required_settings", ())) or "its settings"
            state, detail = "not configured", f"set {needs}"
        queued = counts.get(name)
        channels.append({
            "name": name, "distribution": spec.distribution or "afs-core", "state": state, "detail": redact(detail),
            "missing": list(getattr(spec.channel_class, "required_settings", ())) if state == "not configured" else [],
            "pending": queued.pending if queued else 0, "dead": queued.dead if queued else 0,
            "failures": failures.pop(name, []),
        })
    for name, shown in sorted(failures.items()):  # channels no longer installed still failed
        channels.append({"name": name, "distribution": None, "state": "not installed", "detail": "", "missing": [],
                         "pending": counts[name].pending if name in counts else 0,
                         "dead": counts[name].dead if name in counts else 0, "failures": shown})
    plugin_failures = [{"plugin": f.name, "distribution": f.distribution, "error": redact(f.error)}
                       for f in plugins.failures]
    return {"channels": channels, "plugin_failures": plugin_failures}
