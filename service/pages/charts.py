"""Server-side SVG charts: numbers in, coordinates and plain-text labels out.

No markup is built here: the template draws the elements, so Jinja's autoescape covers every
label. Nor any ``style`` attribute, which the page CSP (style-src 'self') would block: colours are
SVG presentation attributes, which CSS may still override.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Series:
    key: str      # the status the bar counts
    label: str
    fill: str


# Bottom to top in each stack. The colours differ in lightness as well as hue, so the stacks
# still read without colour vision; the page's "Chart data" table has every number anyway.
FINISHED_SERIES = (Series("succeeded", "Succeeded", "#1a7f37"), Series("failed", "Failed", "#d1242f"),
                   Series("cancelled", "Cancelled", "#afb8c1"))

WIDTH, HEIGHT = 640, 270
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 34, 46   # the top margin holds the legend, the bottom the hours
BAR_SHARE = 0.72                            # of each hour's width; the rest is the gap between bars
MIN_BAR = 1.0                               # a non-zero count never draws thinner than this
LABEL_EVERY = 3                             # hours between axis labels, counted back from now


def hourly_stacked_bars(hours: list[dict], series: tuple[Series, ...] = FINISHED_SERIES) -> dict:
    """A stacked bar per hour of ``hours`` ([{"start", "end", <series key>: n}], oldest first)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_h
    slot = plot_w / max(1, len(hours))
    totals = [sum(h[s.key] for s in series) for h in hours]
    step, top = nice_scale(max(totals, default=0))
    groups = []
    for i, hour in enumerate(hours):
        x = LEFT + i * slot + slot * (1 - BAR_SHARE) / 2
        span = f"{hhmm(hour['start'])}–{hhmm(hour['end'])} UTC"
        counts = {s.key: hour[s.key] for s in series}
        bars, y = [], baseline
        for s in series:
            n = counts[s.key]
            if n == 0:
                continue
            height = max(MIN_BAR, n / top * plot_h)
            y -= height
            bars.append({"series": s.key, "fill": s.fill, "count": n, "x": _r(x), "y": _r(y),
                         "width": _r(slot * BAR_SHARE), "height": _r(height), "title": f"{span}: {n} {s.key}"})
        labelled = (len(hours) - 1 - i) % LABEL_EVERY == 0
        groups.append({"span": span, "counts": counts, "total": totals[i], "bars": bars,
                       "axis_label": hhmm(hour["end"]) if labelled else None,
                       "label_x": _r(x + slot * BAR_SHARE / 2)})
    ticks = [{"value": v, "y": _r(baseline - v / top * plot_h)} for v in range(0, top + 1, step)]
    legend = [{"label": s.label, "fill": s.fill, "x": LEFT + 110 * i, "y": 10} for i, s in enumerate(series)]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "baseline": baseline,
            "groups": groups, "ticks": ticks, "legend": legend, "series": series,
            "desc": _describe(hours, totals, series)}


def nice_scale(largest: int, ticks: int = 4) -> tuple[int, int]:
    """(step, top) for an axis from 0 that shows ``largest``: the smallest step of 1, 2 or 5
    times a power of ten that needs at most ``ticks`` steps, and the first multiple of it at or
    above ``largest`` (at least one step, so an empty chart still has an axis)."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if step * ticks >= largest:
                return step, max(step, -(-largest // step) * step)
        magnitude *= 10


def hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M")


def _describe(hours: list[dict], totals: list[int], series: tuple[Series, ...]) -> str:
    """The chart in one sentence, for screen readers (the svg is one image to them)."""
    if not hours:
        return "No hours to show."
    end = datetime.fromtimestamp(hours[-1]["end"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ", ".join(f"{sum(h[s.key] for h in hours)} {s.key}" for s in series)
    text = f"{sum(totals)} jobs finished in the {len(hours)} hours to {end}: {parts}."
    if any(totals):
        busiest = max(range(len(hours)), key=lambda i: (totals[i], i))
        text += (f" The busiest hour was {hhmm(hours[busiest]['start'])}–{hhmm(hours[busiest]['end'])} UTC "
                 f"with {totals[busiest]}.")
    return text


def _r(v: float) -> float:
    return round(v, 2)
