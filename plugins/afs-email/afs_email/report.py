"""Rendering an event as an email: a subject, a plain-text part and an HTML report.

The HTML uses inline styles and a table, which Gmail and Outlook both render;
every piece of user text is HTML-escaped, and nothing that becomes a header can
carry a line break. The run's loss curve, where there is one, is a PNG shown inline
in the HTML (a ``cid:`` image, which mail clients show without fetching anything)
and a line of text in both parts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import (
    LEVEL_EMOJI,
    event_fields,
    loss_curve,
    loss_summary,
    strip_control,
    trim_traceback,
    truncate,
)
from afs_core.plots import FILE_NAME, HEIGHT, WIDTH, loss_curve_png

if TYPE_CHECKING:
    from email.message import EmailMessage

COLOURS = {
    NotificationLevel.INFO: "#1f6feb",
    NotificationLevel.SUCCESS: "#1a7f37",
    NotificationLevel.WARNING: "#9a6700",
    NotificationLevel.ERROR: "#cf222e",
    NotificationLevel.CRITICAL: "#82071e",
}
SUBJECT_LIMIT = 200
#: What the text part says where the HTML part shows the loss curve.
PICTURE_NOTE = "The loss curve is attached inline in the HTML version."


@dataclasses.dataclass(frozen=True, slots=True)
class EmailReport:
    """What one event looks like as an email, before addresses are added."""

    subject: str
    text: str
    html: str
    #: A PNG the HTML shows as ``cid:<picture_cid>`` (the loss curve), sent in the same
    #: multipart/related part as the HTML.
    picture: bytes | None = None
    picture_cid: str = ""


def header_safe(text: str) -> str:
    """One line: control characters (CR, LF, tab...) become spaces, runs of spaces one."""
    return " ".join(strip_control(text.replace("\r", " ").replace("\n", " ").replace("\t", " ")).split())


def subject_for(event: NotificationEvent) -> str:
    subject = f"[AFS] {LEVEL_EMOJI[event.level]} {event.title}"
    if event.run_id and event.run_id not in event.title:
        subject += f" ({event.run_id})"
    return truncate(header_safe(subject), SUBJECT_LIMIT)


def _times(event: NotificationEvent) -> tuple[str, str]:
    utc = event.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC")
    local = event.timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return utc, local


def render(event: NotificationEvent) -> EmailReport:
    fields = event_fields(event)
    utc, local = _times(event)
    source = [("Host", event.source.host)] if event.source.host else []
    if event.source.rank is not None:
        source.append(("Rank", str(event.source.rank)))
    source += [("Time (UTC)", utc), ("Time (local)", local)]
    traceback = event.context.get("traceback")
    traceback = trim_traceback(traceback) if isinstance(traceback, str) and traceback else ""
    error = event.error_details if event.error_details and event.error_details not in event.message else ""
    summary = loss_summary(event)
    picture = loss_curve_png(loss_curve(event), title=event.title) if summary else None
    cid = _content_id() if picture is not None else ""

    lines = [f"{LEVEL_EMOJI[event.level]} {event.title}", ""]
    if event.message:
        lines += [event.message, ""]
    if error:
        lines += [error, ""]
    if summary:
        lines += [summary, *([PICTURE_NOTE] if picture is not None else []), ""]
    lines += [f"{label}: {value}" for label, value in [*fields, *source]]
    if traceback:
        lines += ["", traceback]
    text = strip_control("\n".join(lines)) + "\n"
    page = _html(event, fields + source, error, traceback, summary=summary, cid=cid)
    return EmailReport(subject_for(event), text, page, picture, cid)


def _content_id() -> str:
    """A Content-ID unique to this email (RFC 2392), without its angle brackets."""
    from email.utils import make_msgid

    return make_msgid(idstring="loss-curve", domain="afs.localhost")[1:-1]


def _html(
    event: NotificationEvent, rows: list[tuple[str, str]], error: str, traceback: str, *, summary: str | None = None,
    cid: str = "",
) -> str:
    import html  # on the first email only: html.entities takes 3 ms to load

    e = lambda value: html.escape(strip_control(value), quote=True)  # noqa: E731
    colour = COLOURS[event.level]
    cell = "padding:6px 12px;border-bottom:1px solid #eaeef2;font-size:14px;"
    table = "".join(
        f'<tr><td style="{cell}color:#57606a;white-space:nowrap;">{e(label)}</td>'
        f'<td style="{cell}color:#1f2328;">{e(value)}</td></tr>'
        for label, value in rows
    )
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>',
        '<body style="margin:0;padding:16px;background:#f6f8fa;font-family:Segoe UI,Helvetica,Arial,sans-serif;">',
        f'<div style="max-width:640px;margin:0 auto;background:#ffffff;border-left:6px solid {colour};'
        'border-radius:6px;padding:16px 20px;">',
        f'<p style="margin:0 0 4px 0;font-size:12px;font-weight:bold;color:{colour};letter-spacing:1px;">'
        f"{e(event.level.name)}</p>",
        f'<h1 style="margin:0 0 12px 0;font-size:20px;color:#1f2328;">{e(LEVEL_EMOJI[event.level])} {e(event.title)}</h1>',
    ]
    if event.message:
        parts.append(f'<p style="margin:0 0 12px 0;font-size:15px;color:#1f2328;white-space:pre-wrap;">{e(event.message)}</p>')
    if error:
        parts.append(f'<p style="margin:0 0 12px 0;font-size:15px;color:{colour};white-space:pre-wrap;">{e(error)}</p>')
    if summary and cid:
        parts.append(f'<img src="cid:{e(cid)}" width="{WIDTH}" height="{HEIGHT}" alt="{e(summary)}" '
                     'style="display:block;width:100%;max-width:600px;height:auto;margin:0 0 12px 0;border:0;">')
    elif summary:
        parts.append(f'<p style="margin:0 0 12px 0;font-size:14px;font-family:Consolas,Menlo,monospace;color:#1f2328;">{e(summary)}</p>')
    parts.append(f'<table role="presentation" cellspacing="0" cellpadding="0" style="border-collapse:collapse;width:100%;">{table}</table>')
    if traceback:
        parts.append(
            '<pre style="margin:16px 0 0 0;padding:12px;background:#f6f8fa;border-radius:6px;font-size:12px;'
            'font-family:Consolas,Menlo,monospace;white-space:pre-wrap;word-break:break-all;color:#1f2328;">'
            f"{e(traceback)}</pre>"
        )
    parts.append('<p style="margin:16px 0 0 0;font-size:12px;color:#57606a;">Sent by AFS notifications.</p>')
    parts.append("</div></body></html>")
    return "\n".join(parts)


def build_message(report: EmailReport, sender: str, recipients: list[str]) -> EmailMessage:
    """The MIME message: multipart/alternative with the text part first, HTML last; with
    a picture, the HTML is a multipart/related of the page and its inline PNG."""
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    message = EmailMessage()
    message["Subject"] = report.subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(dt.datetime.now(dt.timezone.utc))
    domain = sender.rpartition("@")[2] or "afs.localhost"
    message["Message-ID"] = make_msgid(domain=header_safe(domain))
    message["X-Mailer"] = "afs-email"
    # Quoted-printable keeps the message 7-bit, so servers without 8BITMIME pass it unchanged.
    message.set_content(report.text, cte="quoted-printable")
    message.add_alternative(report.html, subtype="html", cte="quoted-printable")
    if report.picture is not None and report.picture_cid:
        page = message.get_payload()[1]
        page.add_related(report.picture, maintype="image", subtype="png", cid=f"<{report.picture_cid}>",
                         disposition="inline", filename=FILE_NAME)
        page.set_param("type", "text/html")  # RFC 2387: the type of the related part shown first
    return message
