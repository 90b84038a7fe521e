"""The loss curve an event carries: read safely, drawn as text everywhere, as a picture where matplotlib is."""

import io
import math
import struct
import zlib

import pytest

from afs_core import EventType, send_now
from afs_core.default_plugins.console import ConsoleChannel
from afs_core.formatting import event_fields, loss_curve, loss_summary, render_text, sparkline
from afs_core.plots import HEIGHT, WIDTH, loss_curve_png

CURVE = [[float(step), 2.31 * math.exp(-step / 40) + 0.41] for step in range(0, 200, 2)]


def curve_event(make_event, curve=None, event_type=EventType.TRAINING_COMPLETED):
    return make_event(event_type, context={"loss_curve": CURVE if curve is None else curve})


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk, checking both are there."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return struct.unpack(">II", data[16:24])


# -- reading the curve -------------------------------------------------------------------


def test_the_curve_is_read_as_float_pairs_oldest_first(make_event):
    assert loss_curve(curve_event(make_event, [[0, 2], [10, 1.5]])) == [(0.0, 2.0), (10.0, 1.5)]


@pytest.mark.parametrize("curve", [
    "2,1", [[0, 1], [1]], [[0, 1], [1, "0.5"]], [[0, 1], [True, 0.5]], [[0, 1], None], {"0": 1},
    [[math.nan, 1], [1, 0.5]], [[0, 1], [10**400, 0.5]],
])
def test_anything_malformed_is_no_curve(make_event, curve):
    assert loss_curve(curve_event(make_event, curve)) == []
    assert loss_summary(curve_event(make_event, curve)) is None


@pytest.mark.parametrize("event_type", [EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED,
                                        EventType.EVALUATION_COMPLETED, EventType.LOSS_DEGRADED])
def test_the_events_that_close_a_stretch_of_training_carry_it(make_event, event_type):
    assert len(loss_curve(curve_event(make_event, event_type=event_type))) == len(CURVE)


def test_other_events_never_show_one(make_event):
    assert loss_curve(curve_event(make_event, event_type=EventType.EPOCH_COMPLETED)) == []


def test_a_longer_curve_is_thinned_to_200_keeping_both_ends(make_event):
    points = loss_curve(curve_event(make_event, [[i, 1.0 / (i + 1)] for i in range(1000)]))
    assert len(points) == 200 and points[0] == (0.0, 1.0) and points[-1] == (999.0, 0.001)


def test_the_curve_is_never_a_field(make_event):
    event = curve_event(make_event)
    assert all(label != "Loss curve" for label, _ in event_fields(event))
    assert "[" not in render_text(event).split("\n", 2)[2]


# -- as text -----------------------------------------------------------------------------


def test_a_sparkline_falls_with_the_loss_and_fits_its_width():
    assert sparkline([8, 7, 6, 5, 4, 3, 2, 1]) == "█▇▆▅▄▃▂▁"
    assert sparkline([float(v) for v in range(100)], width=10) == "▁▂▃▃▄▅▆▆▇█"  # means 4.5 … 94.5


def test_a_short_series_gets_one_block_a_value():
    assert sparkline([2.0, 1.0, 1.5], width=20) == "█▁▅"


def test_a_flat_series_is_drawn_mid_height():
    assert sparkline([0.5] * 30, width=6) == "▄" * 6
    assert sparkline([0.0, 0.0]) == "▄▄"


def test_nan_and_infinity_are_marked_never_drawn_low():
    assert sparkline([3.0, math.nan, 1.0, math.inf]) == "█×▁×"
    assert sparkline([math.nan] * 4) == "××××"
    assert sparkline([1.0] * 9 + [math.nan], width=5) == "▄▄▄▄×"


def test_an_empty_series_or_no_width_is_no_sparkline():
    assert sparkline([]) == "" and sparkline([1.0, 2.0], width=0) == ""


def test_the_summary_says_first_best_and_last(make_event):
    event = curve_event(make_event, [[0, 2.31], [1, 0.9], [2, 0.41], [3, 0.43]])
    assert loss_summary(event) == "loss █▃▁▁ 2.31 → best 0.41 · last 0.43"


def test_the_summary_of_a_diverged_run_says_nan(make_event):
    event = curve_event(make_event, [[0, 2.0], [1, 1.0], [2, math.nan]])
    assert loss_summary(event) == "loss █▁× 2 → best 1 · last NaN"


def test_one_point_or_none_is_no_summary(make_event):
    assert loss_summary(curve_event(make_event, [[0, 1.0]])) is None
    assert loss_summary(make_event()) is None


def test_the_plain_text_carries_the_summary(make_event):
    assert "\nloss █" in render_text(curve_event(make_event))


def test_the_console_shows_the_summary_line(afs_plugins, make_event):
    stream = io.StringIO()
    assert send_now(ConsoleChannel(stream=stream), curve_event(make_event)).delivered
    assert f"      {loss_summary(curve_event(make_event))}\n" in stream.getvalue()


# -- as a picture ------------------------------------------------------------------------


def test_without_matplotlib_there_is_no_picture_and_the_console_still_works(
        without_matplotlib, afs_plugins, make_event):
    assert loss_curve_png(loss_curve(curve_event(make_event))) is None
    stream = io.StringIO()
    assert send_now(ConsoleChannel(stream=stream), curve_event(make_event)).delivered
    assert "loss █" in stream.getvalue()


def test_fewer_than_two_finite_values_is_no_picture():
    assert loss_curve_png([]) is None
    assert loss_curve_png([(0.0, 1.0)]) is None
    assert loss_curve_png([(0.0, 1.0), (1.0, math.nan), (2.0, math.inf)]) is None


def test_the_picture_is_an_800_by_400_png_with_a_curve_on_it(make_event):
    pytest.importorskip("matplotlib", reason="the [plots] extra is not installed here")
    from matplotlib.image import imread

    data = loss_curve_png(loss_curve(curve_event(make_event)), title="tiny-model")
    assert data is not None and png_size(data) == (WIDTH, HEIGHT) == (800, 400)
    pixels = imread(io.BytesIO(data), format="png")[:, :, :3]
    assert pixels.shape == (400, 800, 3)
    background = (pixels > 0.98).all(axis=2)
    assert 0.5 < background.mean() < 0.99  # mostly white, not blank
    blue = (abs(pixels - [0x1F / 255, 0x6F / 255, 0xEB / 255]) < 0.1).all(axis=2)
    assert blue.sum() > 500  # the curve itself is drawn


def test_a_title_with_dollars_is_shown_literally_not_as_mathtext():
    pytest.importorskip("matplotlib", reason="the [plots] extra is not installed here")
    assert loss_curve_png([(0.0, 2.0), (1.0, 1.0)], title="$\\frac{broken") is not None


def test_a_curve_with_gaps_is_still_drawn():
    pytest.importorskip("matplotlib", reason="the [plots] extra is not installed here")
    data = loss_curve_png([(0.0, 2.0), (1.0, math.nan), (2.0, 1.0), (3.0, math.inf), (4.0, 0.5)])
    assert data is not None and png_size(data) == (800, 400)


def test_import_afs_core_does_not_import_matplotlib():
    import subprocess
    import sys

    probe = "import sys, afs_core, afs_core.plots, afs_core.formatting; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_pictures_drawn_on_several_delivery_threads_at_once_are_each_whole(make_event):
    pytest.importorskip("matplotlib", reason="the [plots] extra is not installed here")
    from concurrent.futures import ThreadPoolExecutor

    points = loss_curve(curve_event(make_event))
    alone = loss_curve_png(points, title="run")
    with ThreadPoolExecutor(4) as pool:
        drawn = list(pool.map(lambda _: loss_curve_png(points, title="run"), range(8)))
    assert alone is not None and drawn == [alone] * 8


def test_a_run_that_logged_its_loss_ends_with_the_line_on_the_console(tmp_path, afs_plugins):
    from afs_core import NotificationManager
    from afs_core.delivery.store import Store

    stream = io.StringIO()
    manager = NotificationManager(plugins=afs_plugins, store=Store(tmp_path / "afs.db"))
    manager.register_channel("console", ConsoleChannel(stream=stream))
    for step in range(300):
        manager.log_metrics(step=step, run_id="r", model_name="m", loss=2.0 * math.exp(-step / 50) + 0.4)
    manager.notify_training_completed("m", "r", 60.0)
    manager.close(timeout=10)
    line = next(line.strip() for line in stream.getvalue().splitlines() if line.strip().startswith("loss "))
    assert line.startswith("loss █▆") and line.endswith("▁ 2.4 → best 0.4051 · last 0.4051")  # 2·e^(-299/50) + 0.4


def test_a_sparkline_over_the_whole_float_range_is_drawn_not_raised():
    from afs_core.formatting import sparkline

    assert sparkline([1e308, 1e308, -1e308, -1e308]) == "██▁▁"
    assert sparkline([1e308] * 40 + [-1e308] * 40, width=2) == "█▁"
