"""Bar charts as SVG geometry, computed on the server: the page draws rectangles, no script.

Pure arithmetic over counts; the templates turn the bars into ``<rect>`` elements (with a
``<title>`` each, so a pointer or a screen reader gets the number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 200
_LEFT = 40  # room for the axis labels
_BOTTOM = 22
_TOP = 8


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # the CSS class suffix: webhook, reconcile, replay, loss
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]  # labels along the bottom
    top_label: str  # the value at the top of the scale
    plot_left: int
    plot_bottom: int
    total: int


def stacked_bars(
    buckets: Sequence[tuple[str, Mapping[str, int]]],
    series: Sequence[str],
    *,
    label_every: int = 1,
) -> Chart:
    """One stacked bar per bucket (label, counts by series), in the order given."""
    plot_width = WIDTH - _LEFT
    plot_height = HEIGHT - _BOTTOM - _TOP
    peak = max((sum(counts.get(s, 0) for s in series) for _, counts in buckets), default=0)
    scale = _nice_ceiling(peak)
    slot = plot_width / max(1, len(buckets))
    bar_width = max(1.0, slot * 0.7)
    bars: list[Bar] = []
    ticks: list[Tick] = []
    for index, (label, counts) in enumerate(buckets):
        x = _LEFT + index * slot + (slot - bar_width) / 2
        base = float(HEIGHT - _BOTTOM)
        for name in series:
            value = counts.get(name, 0)
            if value <= 0:
                continue
            height = plot_height * value / scale
            base -= height
            bars.append(Bar(round(x, 1), round(base, 1), round(bar_width, 1), round(height, 1),
                            name, f"{label}: {value} {name}"))  # fmt: skip
        if index % label_every == 0:
            ticks.append(Tick(round(x + bar_width / 2, 1), label))
    total = sum(sum(counts.get(s, 0) for s in series) for _, counts in buckets)
    return Chart(WIDTH, HEIGHT, bars, ticks, str(scale), _LEFT, HEIGHT - _BOTTOM, total)


def _nice_ceiling(value: int) -> int:
    """The scale's top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10
