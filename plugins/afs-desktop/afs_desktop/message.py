"""What a desktop notification says: short, readable, the same on every platform.

Backends only decide how to show it; what is shown (title with the level emoji,
one or two lines, a key metric or two) is decided here once.
"""

from __future__ import annotations

import dataclasses

from afs_core.events import NotificationEvent, NotificationLevel
from afs_core.formatting import event_fields, headline, one_line, strip_control, truncate

TITLE_LIMIT = 100
BODY_LIMIT = 300
_KEY_FIELDS = ("Duration", "Final loss", "Cost", "Threshold", "Epoch")


@dataclasses.dataclass(frozen=True, slots=True)
class DesktopMessage:
    title: str
    body: str
    level: NotificationLevel
    app_name: str = "AFS"
    sound: bool = True


def compose(event: NotificationEvent, app_name: str = "AFS", sound: bool = True) -> DesktopMessage:
    lines = [line.strip() for line in strip_control(event.message).splitlines() if line.strip()][:2]
    fields = dict(event_fields(event))
    key = [f"{label}: {fields[label]}" for label in (*_KEY_FIELDS, *event.metrics) if label in fields]
    detail = strip_control(" · ".join(key[:3]), keep="")
    body = "\n".join([*lines, detail] if detail else lines)
    return DesktopMessage(
        title=one_line(headline(event), TITLE_LIMIT),
        body=truncate(body, BODY_LIMIT),
        level=event.level,
        app_name=app_name,
        sound=sound,
    )
