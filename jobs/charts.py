"""Charts for the dashboard as inline SVG drawn on the server: no JavaScript, no CDN, nothing
to vendor, and a test can read the numbers in the markup (each bar and point has a <title>).

Two shapes: bars (one or two stacked series per label) and lines (one series per network).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH = 560
HEIGHT = 180
LEFT = 70
BOTTOM = 22
TOP = 10
RIGHT = 8
# Colours of the series, in order (colour-blind safe: Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]


def _scale_max(values: Sequence[float]) -> float:
    top = max(values, default=0.0)
    return top if top > 0 else 1.0


def _px(value: float) -> str:
    """A coordinate, to a tenth of a unit (format_html escapes its arguments as text)."""
    return f"{value:.1f}"


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _frame(
    *, chart_id: str, title: str, top: float, unit: str, labels: Sequence[str], body: SafeString
) -> SafeString:
    plot_height = HEIGHT - BOTTOM - TOP
    # Only a few x labels, so that they never overlap.
    step = max(1, len(labels) // 6)
    plot_width = WIDTH - LEFT - RIGHT
    slot = plot_width / max(1, len(labels))
    ticks = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="middle">{}</text>',
        (
            (_px(LEFT + slot * (index + 0.5)), HEIGHT - 6, label)
            for index, label in enumerate(labels)
            if index % step == 0
        ),
    )
    return format_html(
        '<figure class="autopay-chart" id="{}"><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="100%" role="img" aria-label="{}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="10" fill="currentColor">'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>'
        '<text x="{}" y="{}" text-anchor="end">{}</text>'
        '<text x="{}" y="{}" text-anchor="end">0</text>'
        "{}{}</svg></figure>",
        chart_id,
        title,
        WIDTH,
        HEIGHT,
        title,
        LEFT,
        TOP + plot_height,
        WIDTH - RIGHT,
        TOP + plot_height,
        LEFT - 4,
        TOP + 8,
        f"{_number(top)}{unit}",
        LEFT - 4,
        TOP + plot_height,
        body,
        ticks,
    )


def _legend(series: Sequence[Series]) -> SafeString:
    return format_html_join(
        "",
        '<rect x="{}" y="{}" width="8" height="8" fill="{}"/><text x="{}" y="{}">{}</text>',
        (
            (
                LEFT + 6 + index * 130,
                TOP,
                PALETTE[index % len(PALETTE)],
                LEFT + 18 + index * 130,
                TOP + 8,
                entry.name,
            )
            for index, entry in enumerate(series)
        ),
    )


def bar_chart(
    *, chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> SafeString:
    """Stacked bars, one per label; the series stack in order from the bottom."""
    totals = [
        sum(float(entry.values[index] or 0) for entry in series) for index in range(len(labels))
    ]
    top = _scale_max(totals)
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    bars = []
    for index, label in enumerate(labels):
        base = 0.0
        for number, entry in enumerate(series):
            value = float(entry.values[index] or 0)
            if value <= 0:
                continue
            height = value / top * plot_height
            y = TOP + plot_height - (base + value) / top * plot_height
            bars.append(
                (
                    _px(LEFT + slot * index + slot * 0.15),
                    _px(y),
                    _px(slot * 0.7),
                    _px(height),
                    PALETTE[number % len(PALETTE)],
                    f"{label} {entry.name}: {_number(value)}{unit}",
                )
            )
            base += value
    body = format_html(
        "{}{}",
        format_html_join(
            "",
            '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
            bars,
        ),
        _legend(series) if len(series) > 1 else "",
    )
    return _frame(chart_id=chart_id, title=title, top=top, unit=unit, labels=labels, body=body)


def line_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    unit: str = "",
    top: float | None = None,
) -> SafeString:
    """One line per series; a None value is a gap (no sample), not a zero."""
    values = [float(value) for entry in series for value in entry.values if value is not None]
    top = top if top is not None else _scale_max(values)
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    lines: list[tuple[str, str]] = []
    points: list[tuple[str, str, str, str]] = []
    for number, entry in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        segment: list[str] = []
        segments = []
        for index, value in enumerate(entry.values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = LEFT + slot * (index + 0.5)
            y = TOP + plot_height - float(value) / top * plot_height
            segment.append(f"{x:.1f},{y:.1f}")
            points.append(
                (
                    _px(x),
                    _px(y),
                    colour,
                    f"{labels[index]} {entry.name}: {_number(float(value))}{unit}",
                )
            )
        if segment:
            segments.append(segment)
        lines.extend((" ".join(part), colour) for part in segments)
    body = format_html(
        "{}{}{}",
        format_html_join(
            "",
            '<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>',
            lines,
        ),
        format_html_join(
            "",
            '<circle cx="{}" cy="{}" r="2" fill="{}"><title>{}</title></circle>',
            points,
        ),
        _legend(series),
    )
    return _frame(chart_id=chart_id, title=title, top=top, unit=unit, labels=labels, body=body)
