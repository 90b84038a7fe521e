"""The loss curve in an email, through a real SMTP server: an inline cid: PNG in the HTML, a line in the text."""

import math
import struct

import pytest

from afs_core import EventType
from afs_core.formatting import loss_summary
from afs_email import EmailNotifier

USER, PASSWORD = "trainer@example.com", "app-pa55word"  # what the servers in conftest.py accept
CURVE = [[float(step), 2.31 * math.exp(-step / 40) + 0.41] for step in range(0, 200, 2)]


@pytest.fixture
def notifier(starttls_server, certificates, afs_plugins):
    return EmailNotifier(smtp_host="127.0.0.1", smtp_port=starttls_server.port, smtp_user=USER, smtp_password=PASSWORD,
                         from_email=USER, to_emails=["alice@example.com"], timeout=10, ca_file=certificates["ca_file"],
                         tls="starttls")


@pytest.fixture
def matplotlib_installed():
    """The picture tests never skip: afs-email[test] installs afs-core[plots], so a missing
    matplotlib is a broken test environment, reported as such."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("matplotlib is not installed: install afs-email[test] (it brings afs-core[plots])")


def curve_event(make_event, event_type=EventType.TRAINING_COMPLETED):
    return make_event(event_type, context={"loss_curve": CURVE})


def tree(part, depth=0):
    """The MIME tree as indented content types, with each leaf's disposition."""
    line = "  " * depth + part.get_content_type()
    if not part.is_multipart() and part.get_content_disposition():
        line += f" ({part.get_content_disposition()})"
    return [line] + [item for child in part.iter_parts() for item in tree(child, depth + 1)]


@pytest.mark.parametrize("event_type", [EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED,
                                        EventType.EVALUATION_COMPLETED, EventType.LOSS_DEGRADED])
def test_the_html_part_shows_the_loss_curve_as_an_inline_png(notifier, starttls_server, make_event,
                                                             matplotlib_installed, event_type):
    event = curve_event(make_event, event_type)
    assert notifier.send(event)
    message = starttls_server.recorder.parsed()
    assert tree(message) == [
        "multipart/alternative",
        "  text/plain",
        "  multipart/related",
        "    text/html",
        "    image/png (inline)",
    ]
    text_part, related = message.iter_parts()
    html_part, image = related.iter_parts()
    assert related.get_param("type") == "text/html" and related.get_boundary() != message.get_boundary()
    summary = loss_summary(event)
    assert f"\n{summary}\nThe loss curve is attached inline in the HTML version.\n" in text_part.get_content().replace("\r\n", "\n")
    cid = image["Content-ID"]
    assert cid.startswith("<") and cid.endswith("@afs.localhost>") and "loss-curve" in cid
    assert image.get_filename() == "loss.png" and image["Content-Transfer-Encoding"] == "base64"
    assert f'<img src="cid:{cid[1:-1]}" width="800" height="400" alt="{summary}"' in html_part.get_content()
    png = image.get_content()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (800, 400)


def test_each_email_gets_its_own_content_id(notifier, starttls_server, make_event, matplotlib_installed):
    assert notifier.send(curve_event(make_event)) and notifier.send(curve_event(make_event))
    ids = [starttls_server.recorder.parsed(i).get_payload()[1].get_payload()[1]["Content-ID"] for i in (0, 1)]
    assert ids[0] != ids[1]


def test_without_matplotlib_both_parts_carry_the_line_and_no_picture(notifier, starttls_server, make_event,
                                                                     without_matplotlib):
    event = curve_event(make_event)
    assert notifier.send(event)
    message = starttls_server.recorder.parsed()
    assert tree(message) == ["multipart/alternative", "  text/plain", "  text/html"]
    text, html = [part.get_content().replace("\r\n", "\n") for part in message.iter_parts()]
    assert f"\n{loss_summary(event)}\n\n" in text and "attached" not in text
    assert f">{loss_summary(event)}</p>" in html and "<img" not in html


def test_an_event_without_a_curve_is_the_report_as_before(notifier, starttls_server, make_event):
    assert notifier.send(make_event(context={"loss_curve": "garbage"}))
    message = starttls_server.recorder.parsed()
    assert tree(message) == ["multipart/alternative", "  text/plain", "  text/html"]
    assert "loss" not in message.get_payload()[0].get_content().lower()
