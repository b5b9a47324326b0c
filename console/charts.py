"""Charts as server-rendered SVG: no JavaScript library, nothing fetched, and colours from
the admin's CSS variables (console/static/console/console.css), so they follow its light
and dark themes."""

from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from knowledge.activity_selectors import Bin

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 150, 44, 18, 8


@dataclass
class Series:
    label: str
    values: list[float | None]


def _nice(top: float) -> float:
    """A round axis maximum at or above `top`."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(top))) - 1) if top >= 1 else 1
    for step in (1, 2, 2.5, 5, 10):
        if top <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def line_chart(*, title: str, series: list[Series], labels: list[str], unit: str = "", ymax: float | None = None) -> SafeString:
    """A line per series over the same x positions; None values leave a gap. `labels`: one
    per x position (a few are drawn)."""
    n = max((len(s.values) for s in series), default=0)
    top = ymax or _nice(max((v for s in series for v in s.values if v is not None), default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP

    def x(i):
        return LEFT + (plot_w * i / max(n - 1, 1))

    def y(v):
        return TOP + plot_h - plot_h * min(v, top) / top

    paths = []
    for k, s in enumerate(series):
        d, pen = [], "M"
        for i, v in enumerate(s.values):
            if v is None:
                pen = "M"
                continue
            d.append(f"{pen}{x(i):.1f},{y(v):.1f}")
            # A point without neighbours draws no line: a dot shows it.
            alone = (i == 0 or s.values[i - 1] is None) and (i == len(s.values) - 1 or s.values[i + 1] is None)
            if alone:
                paths.append(format_html('<circle class="dot s{}" cx="{}" cy="{}" r="2.5"></circle>', k, f"{x(i):.1f}", f"{y(v):.1f}"))
            pen = "L"
        paths.append(format_html('<path class="line s{}" d="{}"><title>{}</title></path>', k, " ".join(d) or "M0,0", s.label))
    grid = format_html_join(
        "", '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"></line><text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
        ((LEFT, WIDTH - 4, f"{y(top * f):.1f}", f"{y(top * f):.1f}", LEFT - 4, f"{y(top * f) + 4:.1f}", _fmt(top * f)) for f in (0, 0.5, 1)),
    )  # fmt: skip
    ticks = [i for i in range(0, n, max(1, n // 6))] if n else []
    xlabels = format_html_join(
        "", '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>', ((f"{x(i):.1f}", HEIGHT - 4, labels[i]) for i in ticks)
    )
    legend = format_html_join("", '<span class="key s{}">{}</span>', ((k, s.label) for k, s in enumerate(series)))
    svg = format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}" preserveAspectRatio="none">{}{}{}</svg>',
        WIDTH, HEIGHT, title, grid, xlabels, mark_safe("".join(paths)),
    )  # fmt: skip
    return format_html('<figure class="console-chart"><figcaption>{} <small>{}</small> {}</figcaption>{}</figure>', title, unit, legend, svg)


def activity_charts(bins: list[Bin]) -> list[SafeString]:
    """The console's four charts of a series of bins (site, organization or agent)."""
    labels = [b.start.strftime("%H:%M") for b in bins]
    def per_minute(name):
        return [b.counts[name] / b.minutes for b in bins]

    searches = per_minute("searches")
    return [
        line_chart(title="Searches", unit="per minute", labels=labels, series=[Series("searches/min", searches)]),
        line_chart(title="Latency", unit="ms", labels=labels, series=[
            Series("p50", [b.percentile(0.5) for b in bins]), Series("p95", [b.percentile(0.95) for b in bins]),
        ]),  # fmt: skip
        line_chart(title="Cache hit rate", unit="%", labels=labels, ymax=100, series=[
            Series("hit rate", [None if b.hit_rate is None else 100 * b.hit_rate for b in bins]),
        ]),  # fmt: skip
        line_chart(title="Embedding calls and errors", unit="per minute", labels=labels, series=[
            Series("embedding calls", per_minute("embedding_calls")), Series("embedding errors", per_minute("embedding_errors")),
            Series("errors", per_minute("errors")),
        ]),  # fmt: skip
    ]
