"""One short text per event: what failed, where, and why, readable on a lock screen.

``[AFS] CRITICAL Training failed: <model> (<run>) - <reason>``. The issue's template
has an em dash; it is written as ``-`` because an em dash is not in GSM-7 and
would switch the whole text to UCS-2 (70 characters a segment instead of 160).
"""

from __future__ import annotations

import re

from afs_core.events import NotificationEvent
from afs_twilio.sms import SmsText, fit

PREFIX = "[AFS]"
SEPARATOR = " - "


def _names(text: str, word: str) -> bool:
    """Whether ``word`` stands on its own in ``text`` (run "r" is not in "Training")."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def headline(event: NotificationEvent) -> str:
    """``[AFS] ERROR Training failed: m (r)``: the model and run are added unless the
    title already names them."""
    title = event.title.strip()
    if event.model_name and not _names(title, event.model_name):
        title = f"{title}: {event.model_name}" if title else event.model_name
    if event.run_id and not _names(title, event.run_id):
        title = f"{title} ({event.run_id})"
    return f"{PREFIX} {event.level.name} {title}".rstrip()


def reason(event: NotificationEvent) -> str:
    """Why: the error itself when there is one, else the event's message."""
    return (event.error_details or event.message or "").strip()


def render(event: NotificationEvent, max_segments: int = 2) -> SmsText:
    """The event's text, in GSM-7 where possible and within ``max_segments``."""
    head, why = headline(event), reason(event)
    return fit(f"{head}{SEPARATOR}{why}" if why and why != event.title.strip() else head, max_segments)
