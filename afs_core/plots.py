"""The run's loss curve as a PNG, for channels that can show a picture (Discord, email).

Optional: with the ``afs-core[plots]`` extra (matplotlib) installed, channels attach
the picture; without it they send their text alone. matplotlib is imported inside
:func:`loss_curve_png` only, so ``import afs_core`` never pays for it and only the
thread that delivers imports it; the object-oriented API (a ``Figure`` on its own Agg
canvas) keeps no global state, so deliveries on several threads cannot draw into one
another's figures.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from afs_core.formatting import one_line

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

logger = logging.getLogger("afs.plots")

#: The picture's size in pixels: wide enough for a curve, small enough for a phone.
WIDTH, HEIGHT = 800, 400
_DPI = 100
#: The attachment's file name, as channels refer to it (``attachment://loss.png``).
FILE_NAME = "loss.png"
_LINE, _BEST = "#1f6feb", "#1a7f37"
# One picture at a time: figures share nothing, but matplotlib's font and text caches are
# not documented as safe across threads, and two channels may deliver at once.
_DRAWING = threading.Lock()


def loss_curve_png(points: Sequence[tuple[float, float]], *, title: str | None = None) -> bytes | None:
    """``points`` (``(step, value)``, as :func:`afs_core.formatting.loss_curve` gives them)
    drawn as a :data:`WIDTH` x :data:`HEIGHT` PNG, the lowest value marked; NaN and
    infinite values leave a gap. None when matplotlib is not installed, when fewer than
    two values are finite, or when drawing fails (logged): the message then goes without
    its picture, never without its text.
    """
    steps = [step for step, _ in points]
    values = [value if math.isfinite(value) else math.nan for _, value in points]
    if sum(1 for value in values if not math.isnan(value)) < 2:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    try:
        with _DRAWING:
            return _draw(Figure, FigureCanvasAgg, steps, values, title)
    except Exception:  # a picture is extra: its failure must not cost the message
        logger.warning("afs: the loss curve could not be drawn; sent without it", exc_info=True)
        return None


def _draw(
    figure_class: type[Figure], canvas_class: type[FigureCanvasAgg], steps: list[float], values: list[float],
    title: str | None,
) -> bytes:
    figure = figure_class(figsize=(WIDTH / _DPI, HEIGHT / _DPI), dpi=_DPI, layout="constrained")
    canvas_class(figure)
    axes = figure.add_subplot()
    axes.plot(steps, values, color=_LINE, linewidth=1.8)
    finite = [(value, step) for step, value in zip(steps, values, strict=True) if not math.isnan(value)]
    best_value, best_step = min(finite)
    axes.plot([best_step], [best_value], "o", color=_BEST, label=f"best {best_value:.4g}")
    low, high = min(v for v, _ in finite), max(v for v, _ in finite)
    if low > 0 and high / low >= 100:  # a loss falling by orders of magnitude reads best on a log scale
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    # User text (a model name) is shown as written: "$x$" must not become mathtext.
    axes.set_title(one_line(title or "Loss", 120), parse_math=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
