"""How an event becomes an ntfy message: priority, tags, escaped Markdown, the click
link, and the 4,096-byte limit with multi-byte text."""

import json
import re
from pathlib import Path

import pytest

from afs_core import EventType, NotificationLevel
from afs_core.testing import assert_matches_snapshot, sample_events
from afs_ntfy.message import EMOJI, MESSAGE_BYTES, body, cut_to_bytes, escape_markdown, fit, render

FAMILY = "👨‍👩‍👧"


def size(text):
    return len(text.encode("utf-8"))


@pytest.mark.parametrize(
    ("level", "priority"),
    [("info", 2), ("success", 2), ("warning", 3), ("error", 4), ("critical", 5)],
)
def test_priority_follows_the_level(make_event, level, priority):
    assert render(make_event(level=level))["priority"] == priority


def test_every_event_type_has_its_emoji_tag_and_critical_adds_a_siren(make_event):
    assert set(EMOJI) == set(EventType)
    assert render(make_event(EventType.TRAINING_FAILED))["tags"] == ["x"]
    assert render(make_event(EventType.OUT_OF_MEMORY))["tags"] == ["boom", "rotating_light"]
    assert render(make_event(EventType.NAN_DETECTED, tags=["nightly", "a,b", "x\x1b[2J"]))["tags"] == [
        "warning", "nightly", "a,b", "x[2J"]


def test_the_payload_is_json_with_markdown(make_event):
    payload = render(make_event(metrics={"accuracy": 0.954321}, context={"duration": 3600.0}))
    assert payload == {
        "title": "Training completed: tiny-model",
        "message": "Run run-1 finished.\n\n- **Model:** tiny-model\n- **Run:** run-1\n- **Duration:** 1h 00m\n"
                   f"- **accuracy:** 0.9543\n\n{payload['message'].rsplit(chr(10), 1)[1]}",
        "priority": 2,
        "tags": ["white_check_mark"],
        "markdown": True,
    }
    assert payload["message"].rsplit("\n", 1)[1].startswith("host ")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<b>bold</b>", r"\<b\>bold\</b\>"),
        ("</pre><script>x</script>", r"\</pre\>\<script\>x\</script\>"),
        ("a &amp; b", r"a \&amp; b"),
        ("@everyone @here", "@everyone @here"),
        ("[click](https://evil.example) ![i](https://evil.example/x.png)",
         r"\[click\](https://evil.example) !\[i\](https://evil.example/x.png)"),
        ("<https://evil.example>", r"\<https://evil.example\>"),
        ("**bold** _it_ `code` ~~gone~~ | a | b |", r"\*\*bold\*\* \_it\_ \`code\` \~\~gone\~\~ \| a \| b \|"),
        ("# Big\n- item\n1. first\n> quote\n---", "\\# Big  \n\\- item  \n1\\. first  \n\\> quote  \n\\---"),
        ("back\\slash", r"back\\slash"),
        ("bell\x07 esc\x1b[2J cr\r nul\x00 bidi\u202egnp.exe", r"bell esc\[2J cr nul bidignp.exe"),
        ("run #3, loss -0.5, step 1.5", "run #3, loss -0.5, step 1.5"),  # ordinary text stays readable
    ],
)
def test_hostile_text_is_shown_literally(text, shown):
    assert escape_markdown(text) == shown


def test_a_model_name_cannot_become_a_link_or_markup(make_event):
    message = render(make_event(model_name="[m](https://evil.example) <img src=x> &lt;", metrics={"**x**": 1}))[
        "message"]
    assert r"- **Model:** \[m\](https://evil.example) \<img src=x\> \&lt;" in message
    assert r"- **\*\*x\*\*:** 1" in message


def test_a_traceback_cannot_close_its_code_block(make_event):
    message = render(make_event(EventType.TRAINING_FAILED, context={"traceback": "Traceback\n```\n# PWNED\nValueError: x"}))[
        "message"]
    block = message[message.index("```"):message.rindex("```") + 3]
    assert block.count("```") == 2 and "ValueError: x" in block and "`\u200b`" in block


@pytest.mark.parametrize(
    ("context", "click"),
    [
        ({"url": "https://wandb.ai/team/run/1"}, "https://wandb.ai/team/run/1"),
        ({"dashboard_url": "http://10.0.0.5:6006/#scalars"}, "http://10.0.0.5:6006/#scalars"),
        ({"wandb_url": "https://wandb.ai/a", "run_url": "https://runs.example/1"}, "https://runs.example/1"),
        ({"experiment_url": "javascript:alert(1)"}, None),
        ({"url": "file:///etc/passwd"}, None),
        ({"url": "https://x.example/a b"}, None),
        ({"url": "https://x.example/\nX-Evil: 1"}, None),
        ({"url": "https://"}, None),
        ({"url": 42}, None),
        ({"link": "https://not-a-link-key.example"}, None),
    ],
)
def test_click_opens_the_events_link_when_it_is_http(make_event, context, click):
    assert render(make_event(context=context)).get("click") == click


def test_nan_and_infinity_are_words_and_the_json_is_strict(make_event):
    payload = render(make_event(metrics={"loss": float("nan"), "grad": float("-inf")}))
    text = json.dumps(payload, allow_nan=False)
    assert "- **loss:** NaN" in payload["message"] and "- **grad:** -inf" in payload["message"]
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))


def test_any_script_arrives_as_written(make_event):
    title = f"🚀✅{FAMILY} 训练完成 — اكتمل التدريب — האימון הסתיים"
    payload = render(make_event(title=title, message=f"模型 {FAMILY} é\u0301"))
    assert payload["title"] == title and payload["message"].startswith(f"模型 {FAMILY} é\u0301\n\n")


def _event_whose_body_is(make_event, wanted_bytes, unit="中"):
    """An event whose Markdown body is exactly ``wanted_bytes`` long, its message made of ``unit``."""
    probe = make_event(message="a")
    overhead = size(body(probe)) - 1
    room = wanted_bytes - overhead
    count, rest = divmod(room, size(unit))
    return make_event(message=unit * count + "a" * rest), unit * count + "a" * rest


@pytest.mark.parametrize("unit", ["中", "🚀", "é", "ש", FAMILY])
def test_a_body_of_exactly_4096_bytes_is_sent_whole(make_event, unit):
    event, message = _event_whose_body_is(make_event, MESSAGE_BYTES, unit)
    sent = body(event)
    assert size(sent) == MESSAGE_BYTES and sent.startswith(message + "\n\n")


@pytest.mark.parametrize("unit", ["中", "🚀", "é", "ש", FAMILY, "e\u0301"])
def test_one_byte_over_is_cut_on_a_character_boundary_with_a_marker(make_event, unit):
    event, message = _event_whose_body_is(make_event, MESSAGE_BYTES + 1, unit)
    sent = body(event)
    assert size(sent) <= MESSAGE_BYTES
    cut = sent.split("\n\n", 1)[0]
    assert cut.endswith("…") and message.startswith(cut[:-1])
    kept = cut[:-1].rstrip("a")
    assert len(kept) % len(unit) == 0  # whole units only: no half emoji, no family or accent parted
    sent.encode("utf-8", "strict")  # every UTF-8 sequence whole


def test_the_facts_and_the_source_survive_a_huge_message(make_event):
    sent = body(make_event(message="<&>" * 5000, metrics={"loss": 0.5}))
    assert size(sent) <= MESSAGE_BYTES
    assert "- **loss:** 0.5" in sent and sent.rsplit("\n", 1)[1].startswith("host ")
    assert re.fullmatch(r"(\\[<&>])+…", sent.split("\n\n", 1)[0])  # cut between escapes, never inside one


def test_a_10000_character_traceback_keeps_its_last_lines(make_event):
    traceback = "Traceback (most recent call last):\n" + "".join(
        f'  File "train.py", line {i}, in step\n    x = y[{i}]\n' for i in range(200)) + "IndexError: 中 out of range"
    assert len(traceback) > 10_000
    sent = body(make_event(EventType.TRAINING_FAILED, message="m" * 3000, context={"traceback": traceback}))
    assert size(sent) <= MESSAGE_BYTES and sent.count("```") == 2
    assert "IndexError: 中 out of range\n```" in sent


def test_many_long_multibyte_facts_stay_within_their_share(make_event):
    metrics = {f"指標{i}": "値" * 300 for i in range(40)}
    sent = body(make_event(message="short", metrics=metrics))
    assert size(sent) <= MESSAGE_BYTES and sent.startswith("short\n\n")
    assert "more" in sent.split("\n\n")[1].splitlines()[-1]


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcd", 3, "…"),  # the marker alone takes 3 bytes: nothing else fits
        ("abcd", 2, ""),
        ("中中中", 9, "中中中"),
        ("中中中中", 9, "中中…"),
        ("中中中中", 8, "中…"),
        ("ab\\", 5, "ab\\"),
        ("ab\\cdef", 6, "ab…"),  # never a lone backslash before the marker
        ("", 0, ""),
    ],
)
def test_cut_to_bytes(text, limit, expected):
    assert cut_to_bytes(text, limit) == expected


def test_a_plugins_own_payload_is_brought_within_limits():
    fitted = fit({"title": "t\r\nX: y" + "x" * 400, "message": "🚀" * 2000, "priority": 9, "click": "https://x.example"})
    assert size(fitted["message"]) <= MESSAGE_BYTES and fitted["message"].endswith("🚀…")
    assert fitted["title"].startswith("tX: y") and len(fitted["title"]) == 250
    assert fitted["priority"] == 5 and fit({"priority": -3})["priority"] == 1
    assert fitted["click"] == "https://x.example"


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_payload_snapshot(name):
    payload = render(sample_events()[name])
    assert size(payload["message"]) <= MESSAGE_BYTES
    assert_matches_snapshot(payload, Path(__file__).parent / "snapshots" / f"{name}.json")


def test_levels_are_ordered_as_the_priorities():
    levels = sorted(NotificationLevel)
    from afs_ntfy.message import PRIORITY

    assert [PRIORITY[level] for level in levels] == sorted(PRIORITY[level] for level in levels)


@pytest.mark.parametrize("unit", [FAMILY, "e\u0301", "👍🏽", "❤️", "中"])
def test_no_cut_at_any_byte_parts_a_character_from_what_belongs_to_it(unit):
    text = unit * 4
    for limit in range(size(text)):
        cut = cut_to_bytes(text, limit)
        assert size(cut) <= limit
        if cut:
            assert cut.endswith("…") and len(cut[:-1]) % len(unit) == 0 and text.startswith(cut[:-1])


LOSS_CURVE = [[step, 2.31 / (1 + step / 20) + 0.41] for step in range(100)]


def test_the_loss_curve_is_a_line_between_the_message_and_the_facts(make_event):
    sent = body(make_event(message="done", context={"loss_curve": LOSS_CURVE}))
    message, curve, facts = sent.split("\n\n")[:3]
    assert message == "done" and curve.startswith("loss █") and curve.endswith(" → best 0.7982 · last 0.7982") and facts.startswith("- **")
    assert "Loss curve" not in sent


def test_a_huge_message_with_a_curve_still_fits_and_keeps_the_curve(make_event):
    sent = body(make_event(message="中" * 5000, context={"loss_curve": LOSS_CURVE}))
    assert size(sent) <= MESSAGE_BYTES and "\n\nloss █" in sent
