import math

import pytest

from afs_core import EventType, NotificationEvent
from afs_core.formatting import (
    event_fields,
    format_cost,
    format_duration,
    format_number,
    render_text,
    strip_control,
    trim_traceback,
    truncate,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.954321987, "0.9543"),
        (0.1234, "0.1234"),
        (3600.0, "3600"),
        (0.5, "0.5"),
        (12345.678, "12,345.68"),
        (0.00001234, "1.234e-05"),
        (42, "42"),
        (1_000_000, "1,000,000"),
        (4.97e80, "4.97e+80"),
        (10**30, "1.000e+30"),
        (-(10**400), "-1.000e+400"),
        (math.nan, "NaN"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        ("n/a", "n/a"),
    ],
)
def test_numbers_read_like_a_person_wrote_them(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.42, "0.4s"), (42, "42s"), (303, "5m 03s"), (3600.0, "1h 00m"), (5400, "1h 30m"), (183600, "2d 03h")],
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_costs():
    assert format_cost(12.5) == "$12.50"
    assert format_cost(1234.5) == "$1,234.50"
    assert format_cost(math.nan) == "NaN"


def test_truncate_marks_the_cut():
    assert truncate("abcdef", 10) == "abcdef"
    assert truncate("abcdefghij", 5) == "abcd…"
    assert len(truncate("x" * 100, 7, marker="[cut]")) == 7


def test_trim_traceback_keeps_head_and_tail():
    text = "\n".join(f"line {i}" for i in range(100))
    trimmed = trim_traceback(text, head=3, tail=5)
    lines = trimmed.splitlines()
    assert lines[:3] == ["line 0", "line 1", "line 2"]
    assert lines[-5:] == [f"line {i}" for i in range(95, 100)]
    assert "92 lines omitted" in trimmed


def test_trim_traceback_bounds_characters():
    trimmed = trim_traceback("x" * 50_000, max_chars=1000)
    assert len(trimmed) <= 1000
    assert "characters omitted" in trimmed


def test_strip_control_removes_escapes_and_carriage_returns():
    hostile = "ok\x1b[2J\x1b]0;pwned\x07\rdone\nnext\x00"
    assert strip_control(hostile) == "ok[2J]0;pwneddone\nnext"
    assert strip_control("a\nb", keep="") == "ab"


def test_event_fields_format_known_context_and_metrics():
    event = NotificationEvent(
        EventType.TRAINING_COMPLETED,
        "done",
        "",
        model_name="m",
        run_id="r",
        cost=12.5,
        metrics={"accuracy": 0.954321987},
        context={"duration": 3600.0, "final_loss": 0.1234, "traceback": "hidden"},
    )
    assert event_fields(event) == [
        ("Model", "m"),
        ("Run", "r"),
        ("Cost", "$12.50"),
        ("Duration", "1h 00m"),
        ("Final loss", "0.1234"),
        ("accuracy", "0.9543"),
    ]


def test_render_text_has_title_message_fields_and_traceback():
    event = NotificationEvent(
        EventType.TRAINING_FAILED,
        "Training failed: m",
        "Run r failed",
        model_name="m",
        context={"traceback": "Traceback\nValueError: bad"},
    )
    text = render_text(event)
    assert text.startswith("❌ Training failed: m\nRun r failed\nModel: m")
    assert "ValueError: bad" in text
    assert event.source.host in text


def test_strip_control_removes_bidi_overrides_but_keeps_emoji_joiners():
    assert strip_control("abc\u202edcba\u2066x") == "abcdcbax"
    family = "👨\u200d👩\u200d👧 🚀✅"
    assert strip_control(family) == family


def test_truncate_never_cuts_an_entity_in_half():
    escaped = "&lt;" * 1000
    cut = truncate(escaped, 3000, keep_entities=True)
    assert len(cut) <= 3000 and cut.endswith("&lt;…")
    assert cut[:-1].count("&") == cut[:-1].count(";")
    assert truncate("ab&amp;cd", 6, keep_entities=True) == "ab…"


@pytest.mark.parametrize("run", ["```", "````", "`````", "``````````"])
def test_no_run_of_backticks_survives_defusing(run):
    from afs_core.formatting import defuse_fences

    defused = defuse_fences(f"a{run}b")
    assert "``" not in defused and defused.replace("\u200b", "") == f"a{run}b"


def test_trim_traceback_keeps_the_outermost_and_innermost_frames_under_a_huge_message():
    import traceback

    source = "\n".join(f"def f{i}():\n    return f{i + 1}()" for i in range(150))
    source += "\ndef f150():\n    raise ValueError('bad shape ' + 'x' * 3000)\n"
    namespace = {}
    exec(compile(source, "model.py", "exec"), namespace)
    try:
        namespace["f0"]()
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    trimmed = trim_traceback(text)
    lines = trimmed.splitlines()
    assert len(trimmed) <= 3000 and lines[0] == "Traceback (most recent call last):"
    assert 'File "model.py", line 2, in f0' in trimmed  # the outermost frame of the model
    assert lines[-2].strip() == 'File "model.py", line 302, in f150'  # the innermost frame
    assert lines[-1].startswith("ValueError: bad shape xxx") and "characters omitted" in lines[-1]
    assert len(lines[-1]) <= 400
