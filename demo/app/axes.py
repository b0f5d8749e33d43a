"""Axes a reader can trust: the colours of runs, tick labels as plain numbers, log axes whose
labelled ticks enclose the data, accuracy axes on a sensible span, and point labels that neither
clip nor pile up. Pure functions of numbers; `demo.app.plots` applies them to its figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from demo.engine.record import finite

__all__ = ["COLORS", "MIN_ACCURACY_SPAN", "accuracy_range", "color", "label_clusters", "log_ticks", "tick_text"]

# One colour per run for the 20 runs a session may hold (demo.app.limits): the ten of Tableau
# (matplotlib's default cycle) and ten darker or rarer hues, each pair apart by more than 80 in
# the summed RGB channels (tests/app/test_plots.py).
# Red stays second: the masking warnings and "fooled" titles use it.
COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
    "#000080", "#800000", "#006400", "#808000", "#008080", "#ff1493", "#2f4f4f", "#800080", "#000000", "#00ff7f",
)
# An accuracy axis spans at least ten points (0.1): narrower, one test image of a few hundred
# moves a point across a tenth of the panel and reads as a collapse.
MIN_ACCURACY_SPAN = 0.1
ACCURACY_PAD = 0.08  # fraction of the span left free above and below the data (markers, labels, corners)
# Fraction of an axis's span left beyond its end ticks: the lowest y label then clears the x
# axis's "0" at the corner, on a phone's 150 px panels too.
LOG_PAD = 0.08
# A sweep's point labels: the panel they are judged on (px: a phone's stacked panel, the
# smallest), a character's width, a line's height and the gap between a point and its label
# (plotly's 11 px font, a 10 px marker).
LABEL_PANEL_PX = (330, 150)
LABEL_CHAR_PX = 6.5
LABEL_LINE_PX = 14
LABEL_OFFSET_PX = 5


def color(index: int) -> str:
    """The colour of the `index`-th run (cycles only beyond len(COLORS))."""
    return COLORS[index % len(COLORS)]


def tick_text(value: float) -> str:
    """A tick label as a plain number, at most three significant digits: "0.002", "50", "1000",
    never "1e+03" (Python's "{:.3g}") nor a bare mantissa. Beyond 1e6 or below 1e-4, "1e6" / "1e-5"."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-4 <= magnitude < 1e6:
        digits = max(0, 2 - math.floor(math.log10(magnitude)))  # three significant digits
        text = f"{round(value, digits):.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = f"{value:.2e}".split("e")  # "1.50", "+06"
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def log_ticks(values: Sequence[float]) -> dict[str, Any]:
    """Tick values, their labels and the axis range (in decades, as plotly's log axes take it)
    for a log axis over `values`. The first labelled tick is at or below the smallest value and
    the last at or above the largest, so no curve runs past the last number a reader can read.
    Steps: 1-2-5 within about a decade and a half, 1-3 within three, every decade beyond (at most
    about eight labels: a phone's stacked panel is 200 px tall). Empty (plotly's own ticks)
    without a positive finite value."""
    positive = [float(v) for v in values if finite(v) and v > 0]
    if not positive:
        return {}
    low, high = min(positive), max(positive)
    span = high / low
    mantissas = (1,) if span > 1e3 else (1, 3) if span > 30 else (1, 2, 5) if span > 4 else (1, 1.5, 2, 3, 5, 7)
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2)
    grid = sorted(float(f"{m * 10.0**d:.6g}") for d in decades for m in mantissas)  # 0.3, not 0.30000000000000004
    below = max(t for t in grid if t <= low * (1 + 1e-9))
    above = min(t for t in grid if t >= high * (1 - 1e-9))
    ticks = [t for t in grid if below <= t <= above]
    if len(ticks) < 2:  # one value exactly on a tick: the ticks either side of it
        ticks = [max(t for t in grid if t < below), below, min(t for t in grid if t > below)]
    first, last = math.log10(ticks[0]), math.log10(ticks[-1])
    pad = LOG_PAD * (last - first)
    return {"tickvals": ticks, "ticktext": [tick_text(t) for t in ticks], "range": [first - pad, last + pad]}


def accuracy_range(values: Sequence[float], min_span: float = MIN_ACCURACY_SPAN) -> list[float]:
    """The range of an accuracy axis over `values`: the data with a margin, at least `min_span`
    wide, inside [0, 1] (plus the margin, so a point at 1.0 is not cut in half). About [0, 1]
    without finite values: an empty panel still reads as accuracy, not plotly's [-1, 4]."""
    numbers = [float(v) for v in values if finite(v)]
    low, high = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    if high - low < min_span:  # widen about the data's middle, inside [0, 1]
        low = min(max((low + high) / 2 - min_span / 2, 0.0), 1.0 - min_span)
        high = low + min_span
    pad = ACCURACY_PAD * (high - low)
    return [low - pad, high + pad]


def label_clusters(xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], x_range: Sequence[float],
                   y_range: Sequence[float]) -> list[tuple[float, float, str, str]]:
    """One label per cluster of points whose labels would print over each other: their texts
    joined ("0, 0.001"), at the cluster's highest point. A label in the top fifth of the panel
    goes under its point, where the panel's title cannot cover it. Collisions are judged on a
    panel of LABEL_PANEL_PX (a sweep's panel is about that wide on a desktop and, stacked, on a
    phone). Returns (x, y, text, textposition) for each cluster."""
    width, height = LABEL_PANEL_PX
    to_px = (width / ((x_range[1] - x_range[0]) or 1.0), height / ((y_range[1] - y_range[0]) or 1.0))
    points = [(x, y, t) for x, y, t in zip(xs, ys, texts, strict=True) if finite(x) and finite(y)]
    clusters = [[p] for p in sorted(points, key=lambda p: (p[0], p[1]))]

    def label(cluster):
        x, y, _ = max(cluster, key=lambda p: p[1])
        text = ", ".join(dict.fromkeys(t for _, _, t in cluster))
        below = y > y_range[1] - 0.2 * (y_range[1] - y_range[0])
        return x, y, text, "bottom center" if below else "top center"

    def box(cluster):  # (left, right, bottom, top) in px of the cluster's label
        x, y, text, position = label(cluster)
        cx, cy, half = (x - x_range[0]) * to_px[0], (y - y_range[0]) * to_px[1], len(text) * LABEL_CHAR_PX / 2
        low = cy - LABEL_OFFSET_PX - LABEL_LINE_PX if position == "bottom center" else cy + LABEL_OFFSET_PX
        return cx - half, cx + half, low, low + LABEL_LINE_PX

    def clash(a, b):
        (l1, r1, b1, t1), (l2, r2, b2, t2) = box(a), box(b)
        return l1 < r2 and l2 < r1 and b1 < t2 and b2 < t1

    def clashing_pair():
        return next(((a, b) for a in range(len(clusters)) for b in range(a + 1, len(clusters))
                     if clash(clusters[a], clusters[b])), None)

    # Merge a clashing pair until none is left (a merged label is wider: look again).
    while (pair := clashing_pair()) is not None:
        clusters[pair[0]] += clusters.pop(pair[1])
    return [label(c) for c in clusters]


