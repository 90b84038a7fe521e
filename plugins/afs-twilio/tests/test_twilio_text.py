"""The text itself: GSM-7 where possible, segments counted as carriers count them, cut to fit."""

from pathlib import Path

import pytest

from afs_core import EventType
from afs_core.testing import assert_matches_snapshot, sample_events
from afs_twilio.render import render
from afs_twilio.sms import (
    GSM_ALPHABET,
    MAX_CHARACTERS,
    TRANSLITERATIONS,
    count_segments,
    fit,
    measure,
    prepare,
)

HAN = "模"  # one UCS-2 unit, no GSM-7 form


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
        ("€" * 80, 1), ("€" * 81, 2), ("a" * 159 + "€", 2), ("a" * 158 + "€", 1),
        (HAN * 70, 1), (HAN * 71, 2), (HAN * 134, 2), (HAN * 135, 3),
    ],
)
def test_segments_at_and_just_over_each_boundary(text, segments):
    assert count_segments(text) == segments


@pytest.mark.parametrize("ch", list("^{}\\[~]|€"))
def test_extension_characters_count_two_septets(ch):
    assert measure("a" * 158 + ch).units == 160 and measure("a" * 158 + ch).segments == 1
    assert measure("a" * 159 + ch).units == 161 and measure("a" * 159 + ch).segments == 2


def test_an_escaped_character_is_never_split_across_parts():
    text = "a" * 152 + "€" + "a" * 152  # 306 septets, but the € cannot straddle the first part's end
    assert measure(text).units == 306 and count_segments(text) == 3
    cut = fit(text, 2)
    assert cut.segments == 2 and cut.text.endswith("...")


@pytest.mark.parametrize(
    ("length", "budget", "kept"),
    [(160, 1, True), (161, 1, False), (306, 2, True), (307, 2, False), (1530, 10, True), (1531, 10, False)],
)
def test_gsm_text_is_kept_up_to_the_budget_and_cut_to_exactly_it_beyond(length, budget, kept):
    sms = fit("a" * length, budget)
    if kept:
        assert sms.text == "a" * length
    else:
        limit = 160 if budget == 1 else 153 * budget
        assert sms.text == "a" * (limit - 3) + "..." and sms.units == limit
    assert sms.segments <= budget and sms.encoding == "GSM-7"


@pytest.mark.parametrize(("length", "budget", "kept"), [(70, 1, True), (71, 1, False), (134, 2, True), (135, 2, False)])
def test_ucs2_text_is_kept_up_to_the_budget_and_cut_to_exactly_it_beyond(length, budget, kept):
    sms = fit(HAN * length, budget)
    limit = 70 if budget == 1 else 67 * budget
    assert sms.text == (HAN * length if kept else HAN * (limit - 1) + "…")
    assert sms.encoding == "UCS-2" and sms.units == min(length, limit) and sms.segments == budget


def test_extension_characters_are_cut_by_septets_not_characters():
    sms = fit("€" * 200, 2)  # 400 septets: 151 of the 153 per part... at most 306 in all
    assert sms.units <= 306 and sms.segments == 2 and sms.text == "€" * 151 + "..."


def test_never_more_than_1600_characters_whatever_the_budget():
    for text in ("a" * 10_000, "€" * 10_000, HAN * 10_000, "x\n" * 10_000):
        sms = fit(text, 10)
        assert len(sms.text) <= MAX_CHARACTERS and sms.segments <= 10


def test_typography_and_accents_become_gsm7():
    sms = fit("“Loss” ‘ok’ – — … naïve façade Łódź ½ ™ café Ñandú µs\u00a0x")
    assert sms.text == "\"Loss\" 'ok' - - ... naive facade Lodz 1/2 TM café Ñandu us x"  # é and Ñ are GSM-7, ú is not
    assert sms.encoding == "GSM-7"


def test_a_message_with_emoji_stays_gsm7():
    sms = fit("🚨 Training failed ✅ 👨‍👩‍👧 ok 1️⃣ ⚠️ done")
    assert sms.text == "Training failed ok 1 done" and sms.encoding == "GSM-7" and sms.segments == 1


def test_a_whole_message_in_chinese_is_sent_as_ucs2_without_emoji():
    sms = fit("训练失败：显存不足 🚀")
    assert sms.text == "训练失败：显存不足" and sms.encoding == "UCS-2" and sms.units == 9


def test_letters_without_a_gsm7_form_keep_the_text_in_ucs2():
    """Dropping them would lose the words; dropping emoji loses nothing."""
    sms = fit("[AFS] ERROR Training failed: Модель-7B (r) 🚀")
    assert sms.text == "[AFS] ERROR Training failed: Модель-7B (r)" and sms.encoding == "UCS-2"


def test_control_characters_go_and_lines_become_one():
    text, encoding = prepare("a\nb\r\nc\td\x1b[2Je\x00f\x07g\u202eh\u2028i \ud800 j\x85k")
    assert text == "a b c de f gh i j k" and encoding == "GSM-7"  # a bidi override is dropped, not spaced
    assert all(ch >= " " for ch in text)


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("\x1b[31mERROR\x1b[0m: boom", "ERROR: boom"),  # CSI: colours
        ("\x1b[1;38;5;196mred\x1b[m", "red"),
        ("a\x1b[2Kb\x1b[?25lc", "abc"),  # erase line, hide cursor (private parameters)
        ("\x1b]0;window title\x07loss nan", "loss nan"),  # OSC ended by BEL
        ("\x1b]8;;https://x.example\x1b\\link\x1b]8;;\x1b\\ here", "link here"),  # OSC ended by ST
        ("\x1b(Bplain", "plain"),  # nF: character set
        ("a\x1bMb \x1b7c\x1b8", "ab c"),  # ESC and one character
        ("tail \x1b", "tail"),  # an ESC at the very end
        ("\x9b31m stays as text", "31m stays as text"),  # a C1 control alone: only the control goes
    ],
)
def test_terminal_escape_sequences_are_removed_whole(text, sent):
    sms = fit(text)
    assert sms.text == sent and sms.encoding == "GSM-7"


def test_letters_above_u_ffff_are_kept_in_ucs2_not_dropped():
    """CJK Extension B (U+20000 on) has letters in no GSM-7 form: they force UCS-2 like 模."""
    sms = fit("𠀀𠀁 model failed 🚀")
    assert sms.text == "𠀀𠀁 model failed" and sms.encoding == "UCS-2"
    assert sms.units == 2 * 2 + len(" model failed") == len(sms.text.encode("utf-16-le")) // 2
    assert fit("𝐀𝐁 bold maths letters").encoding == "GSM-7"  # an astral letter with a GSM-7 form keeps GSM-7


@pytest.mark.parametrize(("count", "budget", "units", "segments"),
                         [(35, 1, 70, 1), (36, 1, 69, 1), (36, 2, 72, 2), (100, 2, 133, 2), (100, 3, 199, 3)])
def test_astral_letters_count_two_utf16_units_and_are_never_split(count, budget, units, segments):
    sms = fit("𠀀" * count, budget)
    assert (sms.encoding, sms.units, sms.segments) == ("UCS-2", units, segments)
    assert sms.units == len(sms.text.encode("utf-16-le")) // 2
    assert sms.text.encode("utf-16", "strict")  # no half of a surrogate pair anywhere


def test_a_surrogate_pair_never_straddles_two_parts():
    text = HAN * 66 + "𠀀" + HAN * 66  # 134 units, but the pair cannot take units 67 and 68
    assert measure(text).units == 134 and count_segments(text) == 3
    assert fit(text, 2).segments == 2


def test_every_transliteration_is_gsm7():
    assert all(ch in GSM_ALPHABET for value in TRANSLITERATIONS.values() for ch in value)


@pytest.mark.parametrize("text", ["a" * 400, "€" * 300, HAN * 200, "“x” — 🚀" * 80, "Модель " * 50, "𠀀a" * 100])
def test_fitting_twice_changes_nothing(text):
    once = fit(text, 2).text
    assert fit(once, 2).text == once


def test_the_issue_template_with_a_gsm7_separator(make_event):
    event = make_event(EventType.OUT_OF_MEMORY, "Out of memory: llama-7b", "Run r9 ran out of memory",
                       run_id="r9", model_name="llama-7b", error_details="CUDA out of memory. Tried to allocate 2.00 GiB")
    assert render(event).text == "[AFS] CRITICAL Out of memory: llama-7b (r9) - CUDA out of memory. Tried to allocate 2.00 GiB"


def test_model_and_run_are_added_only_when_the_title_lacks_them(make_event):
    assert render(make_event(title="Disk almost full", message="", model_name="m", run_id="r")).text == \
        "[AFS] SUCCESS Disk almost full: m (r)"
    assert render(make_event(title="Error: m (r)", message="boom", model_name="m", run_id="r")).text == \
        "[AFS] SUCCESS Error: m (r) - boom"
    # Run "r" appears inside "Training" but is not named there.
    assert render(make_event(title="Training failed: m", message="x", model_name="m", run_id="r")).text == \
        "[AFS] SUCCESS Training failed: m (r) - x"


def test_a_long_reason_is_cut_and_the_headline_kept(make_event):
    event = make_event(EventType.TRAINING_FAILED, "Training failed: m", "", model_name="m",
                       error_details="Traceback " * 500)
    sms = render(event)
    assert sms.text.startswith("[AFS] ERROR Training failed: m (run-1) - Traceback Traceback")
    assert sms.text.endswith("...") and sms.units <= 306 and sms.segments == 2


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_text_snapshot(name):
    sms = render(sample_events()[name])
    assert sms.encoding == "GSM-7" and sms.segments == 1
    assert_matches_snapshot(sms._asdict(), Path(__file__).parent / "snapshots" / f"{name}.json")
