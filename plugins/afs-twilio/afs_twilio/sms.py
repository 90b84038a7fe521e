"""SMS text that stays cheap and readable: the GSM-7 alphabet, segments, and cutting to fit.

One emoji turns a whole SMS into UCS-2 (70 characters a segment instead of 160), so
text is brought into GSM-7 where that loses nothing a reader needs: typographic
quotes, dashes, ellipses and accents become their plain forms, emoji and other
symbols are dropped. Only letters or digits that have no GSM-7 form (a message in
Chinese, a model named in Cyrillic) keep the text in UCS-2, since dropping them
would lose the words themselves; UCS-2 text is then fitted to 70/67 per segment.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal, NamedTuple

from afs_core.formatting import strip_control

Encoding = Literal["GSM-7", "UCS-2"]

#: The GSM 03.38 default alphabet (one septet each); LF and CR are in it but never sent.
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: each costs two septets (an escape, then the character).
GSM_EXTENSION = frozenset("^{}\\[~]|€")
GSM_ALPHABET = GSM_BASIC | GSM_EXTENSION

#: Segment sizes (septets for GSM-7, UTF-16 code units for UCS-2): alone, then per part
#: of a concatenated message (the rest of each part carries the joining header).
SEGMENT_SIZE: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}
#: Twilio refuses a body longer than this (error 21617).
MAX_CHARACTERS = 1600
#: The most segments a message may be allowed (10 x 153 septets stays under 1,600).
MAX_SEGMENTS = 10
_MARKER: dict[Encoding, str] = {"GSM-7": "...", "UCS-2": "…"}

# Characters people and programs type that have a plain GSM-7 form. Letters with
# accents not in GSM-7 need no entry: their decomposition without the accent is used.
TRANSLITERATIONS: dict[str, str] = {
    **dict.fromkeys("‘’‚‛′`´", "'"),
    **dict.fromkeys("“”„‟″«»", '"'),
    **dict.fromkeys("‐‑‒–—―−⁃", "-"),
    **dict.fromkeys("•∙◦", "*"),
    "‹": "<", "›": ">", "…": "...", "·": "-", "⁄": "/", "∕": "/",
    "¢": "c", "©": "(c)", "®": "(R)", "™": "TM", "×": "x", "÷": "/", "±": "+/-",
    "≤": "<=", "≥": ">=", "≠": "!=", "≈": "~", "→": "->", "←": "<-", "⇒": "=>", "↔": "<->",
    "µ": "u", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i", "œ": "oe", "Œ": "OE",
    "þ": "th", "Þ": "Th", "ð": "d", "Ð": "D", "ŋ": "ng", "ĸ": "k",
}

_SPACES = re.compile(r"\s+")
# Terminal escape sequences, removed whole before any other cleaning (else the ESC
# alone goes and "[31m" stays in the text): CSI (ESC [ parameters, intermediates,
# a final byte), OSC (ESC ] ... ended by BEL or ST), nF (ESC, intermediates, a final
# byte: "ESC ( B"), and any other ESC with the one character after it.
_ESCAPES = re.compile(
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[\x20-\x2f]+[\x30-\x7e]"
    r"|\x1b[\s\S]?"
)
# Line breaks, tabs and other C0/C1 controls, and the Unicode line/paragraph separators:
# a space each, so words on either side stay apart.
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_UCS2_DROPPED_CATEGORIES = frozenset({"So", "Cf", "Co", "Cn", "Cs", "Cc"})


class SmsText(NamedTuple):
    """A body ready to send and what it costs."""

    text: str
    encoding: Encoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def clean(text: str) -> str:
    """One line: terminal escape sequences (``ESC [31m``) go whole, then controls
    (newlines, NUL, lone surrogates, bidi overrides) become spaces or go, and runs of
    spaces become one."""
    text = _ESCAPES.sub("", text)
    return _SPACES.sub(" ", strip_control(_BREAKS.sub(" ", text), keep="")).strip()


def _gsm_form(ch: str) -> str | None:
    """``ch`` written in GSM-7, or None when it has no such form."""
    if ch in GSM_ALPHABET:
        return ch
    if ch in TRANSLITERATIONS:
        return TRANSLITERATIONS[ch]
    parts = []
    for part in unicodedata.normalize("NFKD", ch):  # "á" -> "a" + accent, "ﬁ" -> "fi", "½" -> "1⁄2"
        if unicodedata.combining(part):
            continue
        if part in GSM_ALPHABET:
            parts.append(part)
        elif part in TRANSLITERATIONS:
            parts.append(TRANSLITERATIONS[part])
        else:
            return None
    return "".join(parts) or None


def _meaningful(ch: str) -> bool:
    """A letter or digit: dropping it would lose words, not decoration."""
    return unicodedata.category(ch)[0] in "LN"


def to_gsm(text: str) -> tuple[str, bool]:
    """``text`` in GSM-7 and whether letters or digits had to be dropped to get there."""
    out: list[str] = []
    lost = False
    for ch in text:
        form = _gsm_form(ch)
        if form is not None:
            out.append(form)
        elif _meaningful(ch):
            lost = True
    return "".join(out), lost


def _ucs2_form(ch: str) -> str:
    """``ch`` as sent in UCS-2: emoji, symbols, joiners and variation selectors go.
    A letter or digit above U+FFFF (``𠀀``, CJK Extension B) stays, as any letter does:
    it is what forced UCS-2, and it costs two units (a UTF-16 surrogate pair)."""
    if _meaningful(ch):
        return ch
    if ord(ch) > 0xFFFF or unicodedata.category(ch) in _UCS2_DROPPED_CATEGORIES or "\ufe00" <= ch <= "\ufe0f":
        return TRANSLITERATIONS.get(ch, "")
    return ch


def prepare(text: str) -> tuple[str, Encoding]:
    """``text`` as it should be sent, whatever its length: GSM-7 when that keeps every
    letter and digit, otherwise UCS-2 without emoji (which would cost two units each)."""
    text = clean(text)
    gsm, lost = to_gsm(text)
    if not lost:
        return _SPACES.sub(" ", gsm).strip(), "GSM-7"
    return _SPACES.sub(" ", "".join(_ucs2_form(ch) for ch in text)).strip(), "UCS-2"


def encoding_of(text: str) -> Encoding:
    return "GSM-7" if all(ch in GSM_ALPHABET for ch in text) else "UCS-2"


def _unit_sizes(text: str, encoding: Encoding) -> list[int]:
    """What each character costs: septets in GSM-7, UTF-16 code units in UCS-2 (two
    for a character above U+FFFF, a surrogate pair that is never split)."""
    if encoding == "GSM-7":
        return [2 if ch in GSM_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def count_segments(text: str, encoding: Encoding | None = None) -> int:
    """How many SMS segments ``text`` takes. A two-septet character (or a surrogate
    pair) is never split across parts, so a part may carry one unit less than 153/67."""
    encoding = encoding or encoding_of(text)
    sizes = _unit_sizes(text, encoding)
    single, part = SEGMENT_SIZE[encoding]
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > part:
            segments, used = segments + 1, 0
        used += size
    return segments


def measure(text: str) -> SmsText:
    encoding = encoding_of(text)
    return SmsText(text, encoding, sum(_unit_sizes(text, encoding)), count_segments(text, encoding))


def fits(text: str, max_segments: int, encoding: Encoding | None = None) -> bool:
    return len(text) <= MAX_CHARACTERS and count_segments(text, encoding) <= max_segments


def fit(text: str, max_segments: int = 2) -> SmsText:
    """``text`` prepared (see :func:`prepare`) and, when longer than ``max_segments``
    segments or 1,600 characters, cut at the end with ``...`` (``…`` in UCS-2)."""
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"max_segments must be between 1 and {MAX_SEGMENTS}, got {max_segments}")
    prepared, encoding = prepare(text)
    if not fits(prepared, max_segments, encoding):
        marker = _MARKER[encoding]
        candidate = prepared[: MAX_CHARACTERS]
        low, high = 0, len(candidate)  # the longest prefix that fits with the marker: fitting is monotone
        while low < high:
            middle = (low + high + 1) // 2
            if fits(candidate[:middle].rstrip() + marker, max_segments, encoding):
                low = middle
            else:
                high = middle - 1
        prepared = candidate[:low].rstrip() + marker
    return measure(prepared)  # what was cut may have held the only characters that needed UCS-2
