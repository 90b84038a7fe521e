"""Turning events into text people read: numbers, durations, costs, tracebacks.

Every channel shows the same facts the same way (0.9543, ``1h 00m``, ``$12.50``),
so the helpers live here once and channels only decide the layout.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from afs_core.events import EventType, NotificationEvent, NotificationLevel

LEVEL_EMOJI: Mapping[NotificationLevel, str] = {
    NotificationLevel.INFO: "ℹ️",
    NotificationLevel.SUCCESS: "✅",
    NotificationLevel.WARNING: "⚠️",
    NotificationLevel.ERROR: "❌",
    NotificationLevel.CRITICAL: "🚨",
}

ELLIPSIS = "…"
_BACKTICK_PAIR = re.compile(r"`(?=`)")

# Characters that reorder the text around them (a "Trojan Source" trick); the
# joiners that build emoji sequences are not among them and are kept.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Characters that belong to the one before them (a zero-width joiner, the word joiner a
# channel puts after "@", text/emoji variation selectors): a cut never separates them.
_JOINERS = frozenset("\u200d\u2060\ufe0e\ufe0f")

#: Context keys whose value, an http(s) URL, is the run's page (a dashboard, W&B,
#: MLflow); the first one present wins. Set one from an ``afs_enrich_event`` hook
#: for every event and each channel that can show a link shows it.
RUN_LINK_KEYS = ("url", "run_url", "dashboard_url", "experiment_url", "wandb_url", "mlflow_url", "tensorboard_url")
#: A longer "link" is not taken for one: browsers and services refuse such URLs.
RUN_LINK_CHARS = 2000

# Context keys with a known meaning: label and how to show the value.
_COST_KEYS = frozenset({"threshold", "current_cost"})
_DURATION_KEYS = frozenset({"duration", "silent_for", "stalled_for"})
_HIDDEN_CONTEXT_KEYS = frozenset({"traceback", "error_type", "loss_curve"})  # shown by loss_summary
_LABELS = {
    "final_loss": "Final loss",
    "batch_size": "Batch size",
    "current_cost": "Cost",
    "checkpoint_path": "Checkpoint",
    "best_loss": "Best loss",
    "exit_code": "Exit code",
}


def format_number(value: Any) -> str:
    """A number as a person wants to read it: 0.9543, 3600, 12,345.68, NaN, inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        if abs(value) >= 10**15:
            digits = str(abs(value))  # too large for a float: scientific by hand
            return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e9):
        return f"{value:.4g}" if abs(value) >= 1e9 else f"{value:.3e}"
    text = f"{value:,.2f}" if abs(value) >= 10_000 else f"{value:.4f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``5m 03s``, ``1h 00m``, ``2d 03h``."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return format_number(seconds)
    if 0 <= seconds < 9.95:
        return f"{seconds:.1f}s"
    total = int(round(max(seconds, 0.0)))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_cost(value: float) -> str:
    """``$12.50``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return format_number(value)
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def format_value(key: str, value: Any) -> str:
    """A context or metric value, shown according to what its key means."""
    if key in _DURATION_KEYS:
        return format_duration(value)
    if key in _COST_KEYS:
        return format_cost(value)
    return format_number(value)


def label_for(key: str) -> str:
    return _LABELS.get(key) or key.replace("_", " ").capitalize()


def strip_control(text: str, keep: str = "\n\t") -> str:
    """``text`` without control characters (escape sequences, CR, NUL), except ``keep``.

    Keeps hostile text from moving a terminal cursor, adding a header line or
    hiding itself.
    """
    return "".join(
        ch
        for ch in text
        if ch in keep or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in _BIDI_CONTROLS)
    )


def truncate(text: str, limit: int, marker: str = ELLIPSIS, *, keep_entities: bool = False) -> str:
    """``text`` cut to at most ``limit`` characters, ending with ``marker`` when cut.

    With ``keep_entities`` (for text already escaped as ``&amp;``, ``&lt;``...) the cut
    never falls inside an entity, which would show as garbage or break markup.
    """
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if len(marker) >= limit:
        return marker[:limit]
    kept = text[: limit - len(marker)]
    if keep_entities:
        amp = kept.rfind("&")
        if amp != -1 and ";" not in kept[amp:]:
            kept = kept[:amp]
    return kept + marker


def utf8_size(text: str) -> int:
    """Size of ``text`` in UTF-8 bytes, as it is sent (a lone surrogate as the one
    ``?`` byte it becomes): the measure of services that count bytes (ntfy)."""
    return len(text.encode("utf-8", "replace"))


def utf16_units(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (an emoji counts two): the measure of
    services that count as JavaScript does (Telegram)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def splits_character(text: str, index: int) -> bool:
    """Whether a cut before ``text[index]`` would part it from the character before it:
    a combining accent, a joiner (and what follows a zero-width joiner, so an emoji
    sequence stays whole), a variation selector or a skin tone. Shared so that every
    channel cutting to a limit cuts the same way."""
    if not 0 < index < len(text):
        return False
    ch, before = text[index], text[index - 1]
    return bool(unicodedata.combining(ch)) or ch in _JOINERS or before == "\u200d" or "\U0001f3fb" <= ch <= "\U0001f3ff"


def cut_to(text: str, limit: int, *, measure: Callable[[str], int] = len, marker: str = ELLIPSIS) -> str:
    """``text`` in at most ``limit`` as ``measure`` counts (characters, :func:`utf8_size`,
    :func:`utf16_units`), ending with ``marker`` when cut; ``""`` when even the marker
    does not fit.

    Services count their limits differently, but a cut must never leave half a
    character on screen: it falls between code points (never inside a UTF-8 sequence
    or a surrogate pair) and never where :func:`splits_character` says it would part
    a character from what belongs to it. ``measure`` must add up over characters
    (a string's size is the sum of its characters' sizes).
    """
    if measure(text) <= limit:
        return text
    room = limit - measure(marker)
    if room < 0:
        return ""
    end = used = 0
    while end < len(text):
        size = measure(text[end])
        if used + size > room:
            break
        used += size
        end += 1
    while splits_character(text, end):
        end -= 1
    return text[:end] + marker


def run_link(event: NotificationEvent) -> str | None:
    """The run's page: the first http(s) URL with a host among the context's
    :data:`RUN_LINK_KEYS`, stripped, or None. Written once so that every channel
    links the same page and refuses the same things: another scheme (``javascript:``),
    white space or control characters (a header or markup injection), an overlong value."""
    import urllib.parse  # here, not at the top: this module is on the start-up path

    for key in RUN_LINK_KEYS:
        value = event.context.get(key)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if len(value) > RUN_LINK_CHARS or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
            continue
        try:
            parts = urllib.parse.urlsplit(value)
        except ValueError:
            continue
        if parts.scheme.lower() in ("http", "https") and parts.hostname:
            return value
    return None


#: The events that close a stretch of training, and so may carry the run's loss curve
#: (context ``loss_curve``: ``[step, value]`` pairs, oldest first).
LOSS_CURVE_EVENTS = frozenset({
    EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED, EventType.EVALUATION_COMPLETED, EventType.LOSS_DEGRADED,
})
#: The most points a curve keeps; a longer one is thinned evenly (its first and last kept).
LOSS_CURVE_POINTS = 200
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
#: Shown for a stretch of a sparkline whose values are NaN or infinite: a diverged loss
#: must not look like a low one.
SPARK_NOT_FINITE = "×"
SPARK_WIDTH = 20


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def loss_curve(event: NotificationEvent) -> list[tuple[float, float]]:
    """The run's loss curve as ``(step, value)`` pairs, oldest first, for the events of
    :data:`LOSS_CURVE_EVENTS`; ``[]`` for other events and for anything malformed.

    The context may have come from another process, a plugin or an old store: one bad
    pair (not two numbers, a step that is not finite) voids the whole curve rather than
    drawing a wrong one. A value may be NaN or infinite: a loss that diverged is a fact
    to show.
    """
    if event.event_type not in LOSS_CURVE_EVENTS:
        return []
    raw = event.context.get("loss_curve")
    if not isinstance(raw, (list, tuple)):
        return []
    points: list[tuple[float, float]] = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(_is_number(item) for item in pair):
            return []
        try:
            step, value = float(pair[0]), float(pair[1])
        except OverflowError:  # an int too large for a float
            return []
        if not math.isfinite(step):
            return []
        points.append((step, value))
    if len(points) > LOSS_CURVE_POINTS:
        last = len(points) - 1
        points = [points[round(i * last / (LOSS_CURVE_POINTS - 1))] for i in range(LOSS_CURVE_POINTS)]
    return points


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """``values`` as a line of Unicode blocks ``▁▂▃▄▅▆▇█``, at most ``width`` of them.

    Longer series are resampled (each block the mean of its stretch); shorter ones get
    one block per value. A flat series is drawn mid-height, and a stretch holding a NaN
    or an infinity is :data:`SPARK_NOT_FINITE`, so a diverged run never looks flat or low.
    """
    if width <= 0 or not values:
        return ""
    count = min(len(values), width)
    stretches = [values[len(values) * i // count: len(values) * (i + 1) // count] for i in range(count)]
    means = [math.fsum(v / len(s) for v in s) if all(math.isfinite(v) for v in s) else math.nan for s in stretches]
    finite = [m for m in means if math.isfinite(m)]
    if not finite:
        return SPARK_NOT_FINITE * count
    low, high = min(finite), max(finite)
    top = len(SPARK_BLOCKS) - 1
    blocks = []
    for mean in means:
        if not math.isfinite(mean):
            blocks.append(SPARK_NOT_FINITE)
        elif high / 2 - low / 2 <= abs(high / 2) * 1e-12:  # flat, or flat but for rounding (halves: no overflow)
            blocks.append(SPARK_BLOCKS[top // 2])
        else:
            blocks.append(SPARK_BLOCKS[round((mean / 2 - low / 2) / (high / 2 - low / 2) * top)])
    return "".join(blocks)


def loss_summary(event: NotificationEvent) -> str | None:
    """The loss curve on one line of text, for channels that cannot show a picture:
    ``loss ▇▅▃▂▂▁ 2.31 → best 0.41 · last 0.43`` (first value, lowest, latest). None
    without a curve of at least two points."""
    points = loss_curve(event)
    if len(points) < 2:
        return None
    values = [value for _, value in points]
    finite = [value for value in values if math.isfinite(value)]
    text = f"loss {sparkline(values)} {format_number(values[0])} → "
    if finite:
        text += f"best {format_number(min(finite))} · "
    return text + f"last {format_number(values[-1])}"


def one_line(text: str, limit: int) -> str:
    """``text`` safe on one line (no control characters: no newline, escape or CR) and
    cut to ``limit`` characters: for what a service or a user wrote, in a log or a title."""
    return truncate(strip_control(text, keep=""), limit)


def defuse_fences(text: str) -> str:
    """Text safe inside a ``` code block: no two backticks stay adjacent, so no run of
    them (three, five, any) can close the block early."""
    return _BACKTICK_PAIR.sub("`\u200b", text)


_FRAME_LINE = re.compile(r'^\s*File "[^"]*", line \d+')
LINE_CHARS = 400  # one line of a traceback, at most
MESSAGE_LINES = 8  # lines of the exception's own message kept under its frames


def _cap_line(line: str, limit: int = LINE_CHARS) -> str:
    if len(line) <= limit:
        return line
    return f"{line[: limit - 40]}{ELLIPSIS} ({len(line) - limit + 40:,} characters omitted)"


def trim_traceback(text: str, head: int = 4, tail: int = 16, max_chars: int = 3000) -> str:
    """A long traceback cut to where the cause usually is: its first lines (the
    outermost frames), its innermost frame and the exception's message.

    Each line is capped, and so is the message under the last frame, so a huge
    exception message cannot push the frames out; frames in the middle go first.
    """
    lines = [_cap_line(line) for line in text.rstrip("\n").splitlines()]
    frames = [index for index, line in enumerate(lines) if _FRAME_LINE.match(line)]
    message: list[str] = []
    if frames:
        end = frames[-1] + 1
        while end < len(lines) and lines[end].startswith("    "):  # the frame's code and carets
            end += 1
        lines, message = lines[:end], lines[end:]
        if len(message) > MESSAGE_LINES:
            message = [*message[: MESSAGE_LINES - 1], f"{ELLIPSIS} {len(message) - MESSAGE_LINES + 1} more lines"]
        innermost = len(lines) - frames[-1]
    else:
        innermost = 1
    keep = max(tail - len(message), innermost)

    def joined(kept_tail: int) -> str:
        body = lines
        if len(lines) > head + kept_tail + 1:
            omitted = len(lines) - head - kept_tail
            body = [*lines[:head], f"{ELLIPSIS} {omitted} lines omitted {ELLIPSIS}", *lines[len(lines) - kept_tail:]]
        return "\n".join([*body, *message])

    trimmed = joined(keep)
    while len(trimmed) > max_chars and keep > innermost:  # frames in the middle go first
        keep -= 1
        trimmed = joined(keep)
    if len(trimmed) > max_chars:  # still too long: cut characters, keeping both ends
        keep_head = max_chars // 4
        marker = f"\n{ELLIPSIS} {len(trimmed) - max_chars} characters omitted {ELLIPSIS}\n"
        keep_tail = max(max_chars - keep_head - len(marker), 0)
        trimmed = trimmed[:keep_head] + marker + trimmed[len(trimmed) - keep_tail :]
    return trimmed


def headline(event: NotificationEvent) -> str:
    """The title with its level emoji: ``✅ Training completed: m``."""
    return f"{LEVEL_EMOJI[event.level]} {event.title}"


def event_fields(event: NotificationEvent) -> list[tuple[str, str]]:
    """The run context and metrics as (label, value) pairs, in reading order."""
    fields: list[tuple[str, str]] = []
    if event.model_name:
        fields.append(("Model", event.model_name))
    if event.run_id:
        fields.append(("Run", event.run_id))
    if event.epoch is not None:
        fields.append(("Epoch", str(event.epoch)))
    if event.batch is not None:
        fields.append(("Batch", str(event.batch)))
    if event.cost is not None:
        fields.append(("Cost", format_cost(event.cost)))
    for key, value in event.context.items():
        if key in _HIDDEN_CONTEXT_KEYS or value is None:
            continue
        fields.append((label_for(key), format_value(key, value)))
    for key, value in event.metrics.items():
        fields.append((key, format_number(value)))
    if event.tags:
        fields.append(("Tags", ", ".join(event.tags)))
    return fields


def fit_lines(
    lines: Sequence[str], limit: int, *, measure: Callable[[str], int] = len, most: int | None = None,
    more: str = f"{ELLIPSIS} {{}} more",
) -> str:
    """``lines`` (an event's facts, one a line) joined by line breaks in at most ``limit``
    as ``measure`` counts and at most ``most`` of them; those left out are counted on a
    last line, ``more`` with their number, and room for that line is kept as the list
    is filled. Every channel listing facts within a share of its message lists them so.
    """
    kept: list[str] = []
    for index, line in enumerate(lines):
        after = len(lines) - index - 1
        reserve = [more.format(after)] if after else []  # room to say so, if the next does not fit
        if index == most or measure("\n".join([*kept, line, *reserve])) > limit:
            kept.append(more.format(after + 1))
            break
        kept.append(line)
    return "\n".join(kept)


def traceback_tail(
    event: NotificationEvent, limit: int, *, lines: int, line_chars: int, measure: Callable[[str], int] = len,
    show: Callable[[list[str]], str] = "\n".join,
) -> str:
    """The end of the event's traceback (context ``traceback``), where the error is:
    its last ``lines`` lines, each made one safe line of at most ``line_chars``, shown by
    ``show`` (a code block, say) in at most ``limit`` as ``measure`` counts; its first
    lines go until it fits. ``""`` when there is none or not even its last line fits.
    Written once so that every channel keeps the same part of a traceback."""
    text = event.context.get("traceback")
    if not isinstance(text, str) or not text.strip():
        return ""
    kept = [one_line(line, line_chars) for line in strip_control(text, keep="\n").rstrip().splitlines()][-lines:]
    for start in range(len(kept)):
        shown = show(kept[start:])
        if measure(shown) <= limit:
            return shown
    return ""


def source_line(event: NotificationEvent) -> str:
    """``host gpu-01 · rank 3 · 2026-11-27 13:59:21 UTC``."""
    parts = []
    if event.source.host:
        parts.append(f"host {event.source.host}")
    if event.source.rank is not None:
        parts.append(f"rank {event.source.rank}")
    parts.append(event.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC"))
    return " · ".join(parts)


def render_text(event: NotificationEvent) -> str:
    """The event as plain text: the fallback format of every channel."""
    lines = [headline(event)]
    if event.message:
        lines.append(event.message)
    summary = loss_summary(event)
    if summary:
        lines.append(summary)
    fields = event_fields(event)
    if fields:
        lines.append(" · ".join(f"{label}: {value}" for label, value in fields))
    traceback = event.context.get("traceback")
    if isinstance(traceback, str) and traceback:
        lines.append(trim_traceback(traceback))
    lines.append(source_line(event))
    return "\n".join(lines)
