import math

import pytest

from afs_core import EventType, NotificationEvent
from afs_core.formatting import (
    RUN_LINK_KEYS,
    cut_to,
    event_fields,
    fit_lines,
    format_cost,
    format_duration,
    format_number,
    render_text,
    run_link,
    splits_character,
    strip_control,
    traceback_tail,
    trim_traceback,
    truncate,
    utf8_size,
    utf16_units,
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


# -- cutting to a service's limit, and the run's link: shared by the channels --------------

FAMILY = "👨\u200d👩\u200d👧"


def test_measures_count_as_the_services_do():
    assert [utf8_size(t) for t in ("a", "é", "中", "🚀", "\ud800")] == [1, 2, 3, 4, 1]  # lone surrogate: "?"
    assert [utf16_units(t) for t in ("a", "中", "🚀", FAMILY, "\ud800")] == [1, 1, 2, 8, 1]


@pytest.mark.parametrize(
    ("text", "limit", "measure", "expected"),
    [
        ("abc", 3, len, "abc"),
        ("abcdef", 4, len, "abc…"),
        ("abcd", 1, len, "…"),  # room for the marker alone
        ("abcd", 0, len, ""),  # not even for the marker
        ("中中中中", 9, utf8_size, "中中…"),
        ("中中中中", 8, utf8_size, "中…"),
        ("🚀🚀🚀", 5, utf16_units, "🚀🚀…"),
        ("🚀🚀🚀", 4, utf16_units, "🚀…"),  # a surrogate pair is never split
        ("ab\u2060cd", 3, len, "a…"),  # the word joiner stays with the character before it
        ("ne\u0301e", 3, len, "n…"),  # the accent stays with its letter
    ],
)
def test_cut_to_a_limit_in_any_measure(text, limit, measure, expected):
    assert cut_to(text, limit, measure=measure) == expected


def test_cut_to_with_another_marker():
    assert cut_to("abcdef", 5, marker="...") == "ab..."
    assert cut_to("abcdef", 2, marker="...") == ""
    assert cut_to("abcdef", 3, marker="") == "abc"


@pytest.mark.parametrize("measure", [len, utf8_size, utf16_units])
@pytest.mark.parametrize("unit", [FAMILY, "e\u0301", "👍🏽", "❤️", "❤︎", "中", "🚀"])
def test_no_cut_parts_a_character_from_what_belongs_to_it(unit, measure):
    whole = unit * 4
    for limit in range(measure(whole)):
        short = cut_to(whole, limit, measure=measure)
        assert measure(short) <= limit
        if short:
            assert short.endswith("…") and len(short[:-1]) % len(unit) == 0 and whole.startswith(short[:-1])


def test_splits_character():
    assert splits_character("e\u0301", 1) and splits_character("👍🏽", 1) and splits_character("❤️", 1)
    assert splits_character(FAMILY, 1) and splits_character(FAMILY, 2)  # before and after a zero-width joiner
    assert not splits_character("ab", 1) and not splits_character("ab", 0) and not splits_character("ab", 2)


def _with_context(**context):
    return NotificationEvent(EventType.TRAINING_STARTED, "Training started: m", context=context)


def test_run_link_is_the_first_http_url_among_the_link_keys():
    assert RUN_LINK_KEYS[0] == "url" and "wandb_url" in RUN_LINK_KEYS
    event = _with_context(other_url="https://other.example", wandb_url=" https://wandb.ai/r/1 ",
                          url="https://dash.example/run")
    assert run_link(event) == "https://dash.example/run"  # key order, not context order
    assert run_link(_with_context(other_url="https://other.example")) is None
    assert run_link(_with_context()) is None


@pytest.mark.parametrize(
    "refused",
    [
        "javascript:alert(1)",
        "ftp://files.example/run",
        "https://",
        "http://[::1",
        "https://dash.example/a b",
        "https://dash.example/a\x00b",
        "https://dash.example/a\u2028b",
        "https://dash.example/" + "a" * 2000,
        42,
    ],
)
def test_run_link_passes_over_what_is_not_a_safe_link(refused):
    assert run_link(_with_context(url=refused)) is None
    assert run_link(_with_context(url=refused, mlflow_url="HTTP://mlflow.example/1")) == "HTTP://mlflow.example/1"


def test_fit_lines_keeps_room_to_count_what_is_left_out():
    lines = ["aaaa", "bbbb", "cccc", "dddd"]
    assert fit_lines(lines, 100) == "aaaa\nbbbb\ncccc\ndddd"
    assert fit_lines(lines, 100, most=2) == "aaaa\nbbbb\n… 2 more"
    # "aaaa\nbbbb" fits in 17, but then "… 2 more" would not: bbbb gives way to the count.
    assert fit_lines(lines, 17) == "aaaa\n… 3 more"
    assert fit_lines(lines, 19) == "aaaa\nbbbb\n… 2 more"  # the list stops at the first line that does not fit
    assert fit_lines(lines, 12) == "… 4 more"
    assert fit_lines(["中中"] * 3, 15, more="- {} more") == "中中\n中中\n中中"
    assert fit_lines(["中中"] * 3, 15, measure=utf8_size, more="- {} more") == "中中\n- 2 more"
    assert fit_lines([], 10) == ""


def _failed(traceback):
    return NotificationEvent(EventType.TRAINING_FAILED, "Training failed: m", context={"traceback": traceback})


def test_traceback_tail_keeps_the_last_lines_that_fit():
    traceback = "Traceback (most recent call last):\n  File \"t.py\", line 1\n\x1b[31mValueError: " + "x" * 50
    last = "[31mValueError: " + "x" * 13 + "…"  # the escape character is gone, the line cut to 30
    assert traceback_tail(_failed(traceback), 1000, lines=2, line_chars=30) == f'  File "t.py", line 1\n{last}'
    assert traceback_tail(_failed(traceback), 40, lines=12, line_chars=30) == last
    fenced = traceback_tail(_failed("a\nb"), 100, lines=12, line_chars=30, show=lambda ls: "<" + "|".join(ls) + ">")
    assert fenced == "<a|b>"
    assert traceback_tail(_failed("中" * 10), 29, lines=12, line_chars=30, measure=utf8_size) == ""
    assert traceback_tail(_failed("  \n"), 100, lines=12, line_chars=30) == ""
    assert traceback_tail(_failed("a\rb\x0bc\nd"), 100, lines=12, line_chars=30) == "abc\nd"  # a CR makes no line
    assert traceback_tail(NotificationEvent(EventType.TRAINING_FAILED, "t"), 100, lines=12, line_chars=30) == ""
