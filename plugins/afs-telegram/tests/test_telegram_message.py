"""How an event becomes a Telegram HTML message: bold title, <pre> blocks, escaping of
hostile text, silence by level, and the 4,096-character limit after parsing."""

import json
from pathlib import Path

import pytest

from afs_core import EventType
from afs_core.testing import assert_matches_snapshot, sample_events
from afs_telegram.message import TEXT_UNITS, cut, fit, render, shown_text, text, units

FAMILY = "👨‍👩‍👧"
WJ = "\u2060"


@pytest.mark.parametrize(
    ("level", "silent"),
    [("info", True), ("success", True), ("warning", False), ("error", False), ("critical", False)],
)
def test_below_warning_the_message_arrives_silently(make_event, level, silent):
    assert render(make_event(level=level))["disable_notification"] is silent


def test_the_payload(make_event):
    event = make_event(metrics={"accuracy": 0.954321}, context={"duration": 3600.0})
    payload = render(event)
    assert payload == {
        "text": "<b>✅ Training completed: tiny-model</b>\nRun run-1 finished.\n\n"
                "<pre>Model     tiny-model\nRun       run-1\nDuration  1h 00m\naccuracy  0.9543</pre>\n"
                f"<i>{payload['text'].rsplit('<i>', 1)[1]}",
        "parse_mode": "HTML",
        "disable_notification": True,
        "link_preview_options": {"is_disabled": True},
        "afs_event_id": event.event_id,
    }


def test_a_traceback_shows_its_last_lines_in_pre(make_event, markup):
    traceback = "Traceback (most recent call last):\n" + "".join(f'  File "t.py", line {i}, in f{i}\n' for i in range(40)) + \
        "ValueError: <bad> & worse"
    tags, shown = markup(text(make_event(EventType.TRAINING_FAILED, context={"traceback": traceback})))
    assert tags == ["b", "pre", "pre", "i"]
    assert 'line 39, in f39\nValueError: <bad> & worse' in shown and "line 20," not in shown


HOSTILE = ["<b>x</b>", "</pre><script>alert(1)</script>", "&amp; &lt; &#60;", "@everyone @here @some_user",
           "[x](https://evil.example) *y* _z_ `c`", "bell\x07 esc\x1b[2J nul\x00 cr\r\n bidi\u202egnp", "<a href=\"x\">"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_nothing_a_user_typed_becomes_markup(make_event, markup, hostile):
    event = make_event(EventType.TRAINING_FAILED, title=hostile, message=hostile, model_name=hostile,
                       metrics={hostile: 1}, context={"traceback": f"Traceback\n{hostile}"})
    tags, shown = markup(text(event))
    assert tags == ["b", "pre", "pre", "i"]  # ours only, each closed
    for control in "\x07\x1b\x00\r\u202e":
        assert control not in shown


def test_hostile_text_is_shown_as_typed(make_event, markup):
    _, shown = markup(text(make_event(title="<b>x</b> &amp;", message="</pre> & <i>")))
    assert shown.startswith("✅ <b>x</b> &amp;\n</pre> & <i>\n")


def test_mentions_notify_nobody(make_event):
    sent = text(make_event(title="@everyone", message="ping @admin_team and me@host", model_name="@model_owner"))
    assert f"@{WJ}everyone" in sent and f"@{WJ}admin_team" in sent and f"me@{WJ}host" in sent
    assert "@model_owner" in sent  # inside <pre> Telegram finds no mention


@pytest.mark.parametrize(
    ("context", "href"),
    [
        ({"run_url": "https://wandb.ai/t/r?a=1&b=\"2\""}, "https://wandb.ai/t/r?a=1&amp;b=&quot;2&quot;"),
        ({"url": "javascript:alert(1)"}, None),
        ({"url": "https://x.example/a b"}, None),
    ],
)
def test_the_events_link_becomes_a_link_when_it_is_http(make_event, markup, context, href):
    sent = text(make_event(context=context))
    markup(sent)
    assert (f'<a href="{href}">Open the run</a>' in sent) if href else "<a " not in sent


def _event_showing(make_event, wanted, unit):
    """An event whose message shows ``wanted`` units in all, its message made of ``unit``."""
    overhead = units(shown_text(text(make_event(message="a")))) - 1
    count, rest = divmod(wanted - overhead, units(unit))
    message = unit * count + "a" * rest
    return make_event(message=message), message


@pytest.mark.parametrize("unit", ["a", "中", "🚀", FAMILY, "e\u0301", "&", "<", "ש"])
def test_exactly_4096_shown_is_sent_whole(make_event, markup, unit):
    event, message = _event_showing(make_event, TEXT_UNITS, unit)
    sent = text(event)
    _, shown = markup(sent)
    assert units(shown) == TEXT_UNITS and f"\n{message}\n" in shown


@pytest.mark.parametrize("unit", ["a", "中", "🚀", FAMILY, "e\u0301", "&", "<", "ש"])
def test_one_over_is_cut_with_a_marker_never_inside_an_entity_or_a_character(make_event, markup, unit):
    event, message = _event_showing(make_event, TEXT_UNITS + 1, unit)
    sent = text(event)
    _, shown = markup(sent)  # every entity whole, every tag closed
    assert units(shown) <= TEXT_UNITS
    kept = shown.split("\n")[1]
    assert kept.endswith("…") and message.startswith(kept[:-1])
    assert len(kept[:-1].rstrip("a")) % len(unit) == 0


def test_a_huge_escaped_message_keeps_the_facts_and_the_source(make_event, markup):
    _, shown = markup(text(make_event(message="<&>" * 5000, metrics={"loss": 0.5})))
    assert units(shown) <= TEXT_UNITS and "loss" in shown and shown.rstrip().endswith("UTC")


def test_many_long_facts_stay_within_their_share(make_event, markup):
    _, shown = markup(text(make_event(message="short", metrics={f"指標{i}": "値" * 300 for i in range(40)})))
    assert units(shown) <= TEXT_UNITS and "\nshort\n" in shown and "… 30 more" in shown


def test_nan_and_infinity_are_words_and_the_json_is_strict(make_event):
    payload = render(make_event(metrics={"loss": float("nan"), "grad": float("inf")}))
    json.loads(json.dumps(payload, allow_nan=False))
    assert "loss   NaN" in payload["text"] and "grad   inf" in payload["text"]


@pytest.mark.parametrize("unit", [FAMILY, "e\u0301", "👍🏽", "❤️", "中", "🚀"])
def test_no_cut_at_any_length_parts_a_character_from_what_belongs_to_it(unit):
    whole = unit * 4
    for limit in range(units(whole)):
        short = cut(whole, limit)
        assert units(short) <= limit
        if short:
            assert short.endswith("…") and len(short[:-1]) % len(unit) == 0 and whole.startswith(short[:-1])


def test_a_plugins_long_html_is_sent_as_plain_text_cut():
    fitted = fit({"text": "<b>" + "&lt;" * 5000 + "</b>", "parse_mode": "HTML", "afs_event_id": "e"})
    assert "parse_mode" not in fitted and "afs_event_id" not in fitted
    assert fitted["text"] == "<" * 4095 + "…" and fitted["link_preview_options"] == {"is_disabled": True}


def test_a_plugins_short_html_and_long_plain_text():
    assert fit({"text": "<b>" + "&amp;" * 4096 + "</b>", "parse_mode": "html"})["parse_mode"] == "html"  # 4096 shown
    fitted = fit({"text": "🚀" * 3000, "parse_mode": "MarkdownV2"})
    assert "parse_mode" not in fitted and units(fitted["text"]) <= TEXT_UNITS and fitted["text"].endswith("🚀…")


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_payload_snapshot(name, markup):
    payload = render(sample_events()[name])
    markup(payload["text"])
    assert_matches_snapshot(payload, Path(__file__).parent / "snapshots" / f"{name}.json")


LOSS_CURVE = [[step, 2.31 / (1 + step / 20) + 0.41] for step in range(100)]


def test_the_loss_curve_is_a_line_of_plain_text_after_the_message(make_event, markup):
    tags, shown = markup(text(make_event(message="done <b>", context={"loss_curve": LOSS_CURVE})))
    assert tags == ["b", "pre", "i"]
    after = shown.split("\ndone <b>\n\n", 1)[1]
    assert after.startswith("loss █") and after.split("\n")[0].endswith(" → best 0.7982 · last 0.7982")


def test_a_huge_message_with_a_curve_still_fits_and_keeps_the_curve(make_event, markup):
    _, shown = markup(text(make_event(message="🚀" * 5000, context={"loss_curve": LOSS_CURVE})))
    assert units(shown) <= TEXT_UNITS and "\n\nloss █" in shown
