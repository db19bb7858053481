"""``bench --plot FILE.png``: per-stage latency over the measured pass and a histogram
of the frames' latency, drawn with OpenCV (no plotting library on a 10-watt device).

A :class:`Series` is a named list of (time in s, value in ms) samples; the picture has
a title, a line chart of every series over time (with a legend), and below it a
histogram of one series with its p50 / p95 / p99 marked. Axes carry their units.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from agent.perception.video import cv2_module

WHITE = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
# Tableau-like colours (BGR), distinguishable and readable on white
PALETTE = [
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
]
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Series:
    name: str
    times_s: np.ndarray
    values_ms: np.ndarray


def nice_ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering lo..hi."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


class _Panel:
    """A plotting area with axes: maps data to pixels inside (x0, y0, x1, y1)."""

    def __init__(self, image, box, xs: Sequence[float], ys: Sequence[float], xlabel, ylabel):
        self.image, self.box = image, box
        self.xt, self.yt = list(xs), list(ys)
        self.xlabel, self.ylabel = xlabel, ylabel

    def x(self, v: float) -> int:
        x0, _, x1, _ = self.box
        lo, hi = self.xt[0], self.xt[-1]
        return round(x0 + (x1 - x0) * (v - lo) / (hi - lo))

    def y(self, v: float) -> int:
        _, y0, _, y1 = self.box
        lo, hi = self.yt[0], self.yt[-1]
        return round(y1 - (y1 - y0) * (min(max(v, lo), hi) - lo) / (hi - lo))

    def axes(self) -> None:
        cv2 = cv2_module()
        x0, y0, x1, y1 = self.box
        for v in self.yt:
            cv2.line(self.image, (x0, self.y(v)), (x1, self.y(v)), GRID, 1)
            text = _label(v)
            (tw, th), _ = cv2.getTextSize(text, FONT, 0.45, 1)
            cv2.putText(self.image, text, (x0 - tw - 8, self.y(v) + th // 2), FONT, 0.45, INK, 1,
                        cv2.LINE_AA)  # fmt: skip
        for v in self.xt:
            cv2.line(self.image, (self.x(v), y1), (self.x(v), y1 + 5), INK, 1)
            text = _label(v)
            (tw, th), _ = cv2.getTextSize(text, FONT, 0.45, 1)
            cv2.putText(self.image, text, (self.x(v) - tw // 2, y1 + 8 + th), FONT, 0.45, INK, 1,
                        cv2.LINE_AA)  # fmt: skip
        cv2.rectangle(self.image, (x0, y0), (x1, y1), INK, 1)
        (tw, th), _ = cv2.getTextSize(self.xlabel, FONT, 0.5, 1)
        cv2.putText(self.image, self.xlabel, ((x0 + x1 - tw) // 2, y1 + 44), FONT, 0.5, INK, 1,
                    cv2.LINE_AA)  # fmt: skip
        cv2.putText(self.image, self.ylabel, (x0 - 60, y0 - 12), FONT, 0.5, INK, 1, cv2.LINE_AA)


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def draw_bench_plot(
    path: Path,
    title: str,
    series: Sequence[Series],
    histogram: Series,
    size: Tuple[int, int] = (1200, 900),
) -> Path:
    """Write the picture to ``path`` (PNG); return it."""
    cv2 = cv2_module()
    width, height = size
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, title, (24, 36), FONT, 0.7, INK, 2, cv2.LINE_AA)
    shown = [s for s in series if len(s.values_ms)]

    # -- top: every series over time --------------------------------------------------
    box = (90, 90, width - 300, int(height * 0.52))
    t0 = min((float(s.times_s.min()) for s in shown), default=0.0)
    t1 = max((float(s.times_s.max()) for s in shown), default=1.0)
    # the y range: up to the largest p99, so that one outlier does not flatten the rest
    top = max((_percentile(s.values_ms, 99) for s in shown), default=1.0) * 1.1
    panel = _Panel(image, box, nice_ticks(0, max(t1 - t0, 1e-3)), nice_ticks(0, max(top, 1e-3)),
                   "time since the start of the measured frames (s)", "ms")  # fmt: skip
    panel.axes()
    for i, s in enumerate(shown):
        color = PALETTE[i % len(PALETTE)]
        points = np.stack(
            [[panel.x(t - t0) for t in s.times_s], [panel.y(v) for v in s.values_ms]], axis=1
        ).astype(np.int32)
        cv2.polylines(image, [points], False, color, 2, cv2.LINE_AA)
        ly = box[1] + 10 + 26 * i
        cv2.line(image, (box[2] + 16, ly), (box[2] + 40, ly), color, 3)
        p50 = _percentile(s.values_ms, 50)
        cv2.putText(image, f"{s.name} (p50 {p50:.1f} ms)", (box[2] + 46, ly + 5), FONT, 0.45,
                    INK, 1, cv2.LINE_AA)  # fmt: skip

    # -- bottom: histogram of one series ------------------------------------------------
    values = histogram.values_ms
    box = (90, int(height * 0.52) + 110, width - 300, height - 70)
    cv2.putText(image, f"histogram: {histogram.name}", (90, box[1] - 20), FONT, 0.55, INK, 1,
                cv2.LINE_AA)  # fmt: skip
    hi = max(_percentile(values, 99.5) * 1.05, 1e-3) if len(values) else 1.0
    xt = nice_ticks(0, hi)
    bins = np.linspace(xt[0], xt[-1], 41)
    counts, _ = np.histogram(np.clip(values, xt[0], xt[-1]), bins=bins)
    yt = nice_ticks(0, max(1.0, 1.1 * int(counts.max()) if len(counts) else 1.0))
    panel = _Panel(image, box, xt, yt, "ms", "frames")
    panel.axes()
    for k, count in enumerate(counts):
        if count:
            cv2.rectangle(image, (panel.x(bins[k]) + 1, panel.y(count)),
                          (panel.x(bins[k + 1]) - 1, box[3]), PALETTE[0], -1)  # fmt: skip
    for q, color in ((50, PALETTE[2]), (95, PALETTE[1]), (99, PALETTE[3])):
        if not len(values):
            break
        v = _percentile(values, q)
        cv2.line(image, (panel.x(v), box[1]), (panel.x(v), box[3]), color, 2)
        ly = box[1] + 10 + 26 * [50, 95, 99].index(q)
        cv2.line(image, (box[2] + 16, ly), (box[2] + 40, ly), color, 3)
        cv2.putText(image, f"p{q} {v:.1f} ms", (box[2] + 46, ly + 5), FONT, 0.45, INK, 1,
                    cv2.LINE_AA)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = cv2.imwrite(str(path), image)
    except cv2.error:
        written = False
    if not written:
        raise OSError(f"cannot write {path} (OpenCV writes .png, .jpg, ...)")
    return path
