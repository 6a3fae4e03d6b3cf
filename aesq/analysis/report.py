"""Nightly quality report as one self-contained HTML file, so it opens offline, from a mail or an archive."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter, DayLocator, date2num
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from aesq.analysis.palette import version_colours

if TYPE_CHECKING:
    from aesq.core.pipeline_status import FailureReason


@dataclass(frozen=True)
class VersionLine:
    """One generator version under one scorer in the leaderboard."""

    version: str  # display name e.g. "sdxl/lora-7"
    scorer: str
    count: int
    mean: float
    low: float | None  # 95 % interval of the mean
    high: float | None
    median: float
    share_above: float | None
    change: float | None  # mean now minus mean in the previous report; None when new


@dataclass(frozen=True)
class Thumbnail:
    """A small JPEG of one asset, shown in the best/worst strips."""

    asset_id: int
    caption: str  # e.g. key and score
    jpeg: bytes  # already resized (<= 256 px), embedded as a data URI


@dataclass(frozen=True)
class ReportData:
    """Everything the nightly report shows."""

    title: str
    generated_at: datetime
    since: datetime | None  # start of the trend window
    leaderboard: list[VersionLine]  # sorted by the caller
    distributions: dict[tuple[str, str], list[float]]  # (version, scorer) -> scores
    trends: dict[tuple[str, str], list[tuple[date, float, int]]]  # (version, scorer) -> (day, mean, count)
    changes: list[str]  # human sentences: "new version x", "y mean -3.1", ...
    defects: dict[str, dict[str, int]]  # version -> category -> count
    best: dict[str, list[Thumbnail]]  # version -> best assets
    worst: dict[str, list[Thumbnail]]  # version -> worst assets
    failures: list[FailureReason] = field(default_factory=list)  # failed assets by reason, most frequent first


PLOT_SIZE_INCHES = (7.5, 3.2)
HISTOGRAM_BINS = 30
DAY_TICKS_UP_TO = 8  # trend plots over at most this many days label every day
TREND_Y_MARGIN = 0.15  # of the means' span above and below, so no marker sits on the plot's edge
# Leaderboard figures show about this many significant digits of a scorer's largest mean: 72.1, 6.43, 0.532.
SIGNIFICANT_DIGITS = 3
_PLOT_SETTINGS: dict[RcKeyType, object] = {
    "svg.fonttype": "none",  # text stays <text> with a generic font fallback: smaller, selectable, no font files
    "text.parse_math": False,  # a "$" in a version name is text, not mathtext
    "font.size": 9,
}
# Every SVG metadata field off: no creation date, no tool version, no links to RDF vocabularies.
_NO_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

_TEMPLATE_SOURCE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 1100px; margin: 0 auto; padding: 1em 1.5em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
.up { color: #1a7f37; } .down { color: #c62828; } .new, .empty, .meta { color: #777; }
figure { margin: .5em 0; }
svg { max-width: 100%; height: auto; }
.strip { display: flex; gap: .5em; overflow-x: auto; }
.strip figure { flex: none; width: 160px; font-size: 12px; }
.strip img { width: 160px; height: 160px; object-fit: cover; display: block; }
.strip figcaption { overflow-wrap: anywhere; } .folder { font-weight: normal; font-size: 13px; color: #777; }
td.examples { white-space: normal; font-size: 12px; max-width: 60em; } td.examples div + div { margin-top: .3em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Generated {{ generated_at }}{% if since %} · trends since {{ since }}{% endif %}</p>

<h2>Leaderboard</h2>
{% if leaderboard %}
<table id="leaderboard">
<thead><tr><th>Version</th><th>Scorer</th><th>n</th><th>Mean [95 %]</th><th>Median</th><th>Share above</th>
<th>Change</th></tr></thead>
<tbody>
{% for row in leaderboard %}
<tr><td>{{ row.version }}</td><td class="text">{{ row.scorer }}</td><td>{{ row.count }}</td><td>{{ row.mean }}</td>
<td>{{ row.median }}</td><td>{{ row.share_above }}</td><td class="{{ row.direction }}">{{ row.change }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="empty">No scores yet.</p>
{% endif %}

<h2>What changed</h2>
{% if changes %}
<ul>
{% for change in changes %}
<li>{{ change }}</li>
{% endfor %}
</ul>
{% else %}
<p class="empty">Nothing changed since the previous report.</p>
{% endif %}

<h2>Score distributions</h2>
{% for scorer, svg in distribution_plots %}
<figure class="plot"><figcaption><h3>{{ scorer }}</h3></figcaption>{{ svg }}</figure>
{% else %}
<p class="empty">No scores to plot yet.</p>
{% endfor %}

<h2>Daily mean</h2>
{% for scorer, svg in trend_plots %}
<figure class="plot"><figcaption><h3>{{ scorer }}</h3></figcaption>{{ svg }}</figure>
{% else %}
<p class="empty">No daily means yet.</p>
{% endfor %}

<h2>Defects</h2>
{% if defect_rows %}
<table id="defects">
<thead><tr><th>Version</th>{% for category in defect_categories %}<th>{{ category }}</th>{% endfor %}
<th>Total</th></tr></thead>
<tbody>
{% for version, counts, total in defect_rows %}
<tr><td>{{ version }}</td>{% for count in counts %}<td>{{ count }}</td>{% endfor %}<td>{{ total }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="empty">No defects found yet.</p>
{% endif %}

<h2>Failures</h2>
{% if failures %}
<table id="failures">
<thead><tr><th>Reason</th><th>Assets</th><th class="text">Examples</th></tr></thead>
<tbody>
{% for failure in failures %}
<tr><td>{{ failure.reason }}</td><td>{{ "{:,}".format(failure.count) }}</td>
<td class="text examples">{% for example in failure.examples %}<div><code>{{ example.location }}</code>: {{ example.error }}</div>{% endfor %}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="empty">No failed images.</p>
{% endif %}

<h2>Best and worst images</h2>
{% for version, folder, best, worst in strips %}
<h3>{{ version }}{% if folder %} <span class="folder">in {{ folder }}</span>{% endif %}</h3>
{% for label, thumbnails in [("Best", best), ("Worst", worst)] %}
<p>{{ label }}</p>
{% if thumbnails %}
<div class="strip">
{% for thumbnail in thumbnails %}
<figure title="{{ thumbnail.caption }}"><img src="{{ thumbnail.uri }}" alt="asset {{ thumbnail.asset_id }}">
<figcaption>{{ thumbnail.caption | replace(folder, "", 1) if folder else thumbnail.caption }}</figcaption></figure>
{% endfor %}
</div>
{% else %}
<p class="empty">None yet.</p>
{% endif %}
{% endfor %}
{% else %}
<p class="empty">No images yet.</p>
{% endfor %}
</body>
</html>
"""
_TEMPLATE = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True).from_string(
    _TEMPLATE_SOURCE
)


@dataclass(frozen=True)
class _LeaderboardRow:
    """A leaderboard line with every figure formatted for display."""

    version: str
    scorer: str
    count: str
    mean: str
    median: str
    share_above: str
    change: str
    direction: str  # CSS class: up, down, same or new


@dataclass(frozen=True)
class _EmbeddedThumbnail:
    """A thumbnail with its JPEG as a data URI."""

    asset_id: int
    caption: str
    uri: str


def render_report(data: ReportData) -> str:
    """Render the nightly report as one HTML page that needs no network to view.

    Plots are inline SVG and thumbnails data URIs; every string from `data` is HTML-escaped. The same
    data gives the same page byte for byte. Empty sections say so instead of failing.

    Args:
        data: The figures, scores, trends, changes, defects and thumbnails to show.

    Returns:
        The complete HTML document.
    """
    colours = _colours_by_version(data)
    defect_categories = sorted({category for counts in data.defects.values() for category in counts})
    return _TEMPLATE.render(
        title=data.title,
        generated_at=_format_moment(data.generated_at),
        since=_format_moment(data.since) if data.since else None,
        leaderboard=_leaderboard_rows(data.leaderboard),
        changes=data.changes,
        distribution_plots=_distribution_plots(data.distributions, colours),
        trend_plots=_trend_plots(data.trends, colours),
        defect_categories=defect_categories,
        failures=data.failures,
        defect_rows=[
            (version, [counts.get(c, 0) for c in defect_categories], sum(counts.values()))
            for version, counts in data.defects.items()
        ],
        strips=[
            (
                version,
                _shared_folder([*data.best.get(version, []), *data.worst.get(version, [])]),
                _embedded(data.best.get(version, [])),
                _embedded(data.worst.get(version, [])),
            )
            for version in dict.fromkeys([*data.best, *data.worst])
        ],
    )


def _format_moment(moment: datetime) -> str:
    """Date and minute, with the time zone name when the moment has one."""
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzname() or ''}".rstrip()


def _leaderboard_rows(lines: list[VersionLine]) -> list[_LeaderboardRow]:
    """Leaderboard lines formatted with as many decimals as their scorer's scale needs."""
    largest_mean: dict[str, float] = {}
    for line in lines:
        largest_mean[line.scorer] = max(largest_mean.get(line.scorer, 0.0), abs(line.mean))
    decimals = {scorer: _decimals_for(value) for scorer, value in largest_mean.items()}
    return [_leaderboard_row(line, decimals[line.scorer]) for line in lines]


def _decimals_for(largest: float) -> int:
    """Decimals that show SIGNIFICANT_DIGITS digits of the largest value."""
    magnitude = math.floor(math.log10(largest)) if largest > 0 else 0
    return max(0, SIGNIFICANT_DIGITS - 1 - magnitude)


def _leaderboard_row(line: VersionLine, decimals: int) -> _LeaderboardRow:
    """One leaderboard line formatted: mean with its interval, share as a percentage, change with an arrow."""
    mean = f"{line.mean:.{decimals}f}"
    if line.low is not None and line.high is not None:
        mean += f" [{line.low:.{decimals}f}, {line.high:.{decimals}f}]"
    change, direction = _format_change(line.change, decimals)
    return _LeaderboardRow(
        version=line.version,
        scorer=line.scorer,
        count=f"{line.count:,}",
        mean=mean,
        median=f"{line.median:.{decimals}f}",
        share_above="–" if line.share_above is None else f"{line.share_above:.0%}",
        change=change,
        direction=direction,
    )


def _format_change(change: float | None, decimals: int) -> tuple[str, str]:
    """The change as "▲ +1.4", "▼ -3.1", "±0.0" or "new", and its CSS class."""
    if change is None:
        return "new", "new"
    size = f"{abs(change):.{decimals}f}"
    if float(size) == 0:
        return f"±{size}", "same"
    return (f"▲ +{size}", "up") if change > 0 else (f"▼ -{size}", "down")


def _colours_by_version(data: ReportData) -> dict[str, str]:
    """One colour per version, the same in every plot and as on the dashboard."""
    return version_colours(
        [line.version for line in data.leaderboard]
        + [version for version, _ in data.distributions]
        + [version for version, _ in data.trends]
    )


def _shared_folder(thumbnails: list[Thumbnail]) -> str:
    """The folder (ending in "/") every caption of a version's strips starts with, shown once under its heading
    rather than in each caption; empty when they share none."""
    shared: list[str] = []
    for names in zip(*(thumbnail.caption.split("/")[:-1] for thumbnail in thumbnails)):
        if len(set(names)) > 1:
            break
        shared.append(names[0])
    return "".join(f"{name}/" for name in shared)


def _by_scorer(series: dict[tuple[str, str], list]) -> dict[str, dict[str, list]]:
    """Non-empty series regrouped as scorer -> version -> values, scorers sorted by name."""
    grouped: dict[str, dict[str, list]] = {}
    for (version, scorer), values in series.items():
        if values:
            grouped.setdefault(scorer, {})[version] = values
    return dict(sorted(grouped.items()))


def _distribution_plots(
    distributions: dict[tuple[str, str], list[float]], colours: dict[str, str]
) -> list[tuple[str, Markup]]:
    """Per scorer, the versions' score histograms overlaid on shared bins."""
    return [
        (scorer, _plot_svg(f"distribution-{scorer}", partial(_draw_histograms, scores, colours)))
        for scorer, scores in _by_scorer(distributions).items()
    ]


def _draw_histograms(scores_by_version: dict[str, list[float]], colours: dict[str, str], axes: Axes) -> None:
    """Step histograms normalised to shares, so versions with different counts compare."""
    edges = np.histogram_bin_edges(np.concatenate(list(scores_by_version.values())), bins=HISTOGRAM_BINS)
    for version, scores in scores_by_version.items():
        weights = np.full(len(scores), 1 / len(scores))
        axes.hist(
            scores,
            bins=edges.tolist(),
            weights=weights,
            histtype="step",
            linewidth=1.5,
            color=colours[version],
            label=version,
        )
    axes.set_xlabel("score")
    axes.set_ylabel("share of images")
    _add_legend(axes)


def _trend_plots(
    trends: dict[tuple[str, str], list[tuple[date, float, int]]], colours: dict[str, str]
) -> list[tuple[str, Markup]]:
    """Per scorer, the daily mean of every version over time."""
    return [
        (scorer, _plot_svg(f"trend-{scorer}", partial(_draw_trends, points, colours)))
        for scorer, points in _by_scorer(trends).items()
    ]


def _draw_trends(
    points_by_version: dict[str, list[tuple[date, float, int]]],
    colours: dict[str, str],
    axes: Axes,
) -> None:
    """One line of daily means per version over the days that have them, a day of margin either side (one day of
    data is that day between its neighbours, not years of empty axis); a few days get a tick each."""
    for version, points in points_by_version.items():
        days, means, _counts = zip(*sorted(points))
        axes.plot(days, means, marker="o", markersize=3, linewidth=1.5, color=colours[version], label=version)
    shown = [day for points in points_by_version.values() for day, _, _ in points]
    first, last = min(shown), max(shown)
    axes.set_xlim(date2num(first - timedelta(days=1)), date2num(last + timedelta(days=1)))
    if (last - first).days <= DAY_TICKS_UP_TO:
        axes.xaxis.set_major_locator(DayLocator())
        axes.xaxis.set_major_formatter(DateFormatter("%b %d"))
    else:
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.margins(y=TREND_Y_MARGIN)
    axes.set_ylabel("mean score")
    _add_legend(axes)


def _add_legend(axes: Axes) -> None:
    """Legend to the right of the plot, out of the data's way."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _plot_svg(plot_id: str, draw: Callable[[Axes], None]) -> Markup:
    """A drawn figure as an inline <svg> element whose internal ids are stable and unique to this plot."""
    # A bare Figure, never registered with pyplot, so no global figure list keeps it alive after this call.
    with matplotlib.rc_context({**_PLOT_SETTINGS, "svg.hashsalt": f"aesq-report-{plot_id}"}):
        figure = Figure(figsize=PLOT_SIZE_INCHES, layout="constrained")
        draw(figure.add_subplot())
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata=_NO_SVG_METADATA)
    svg = buffer.getvalue()
    # Matplotlib escapes the text it writes; the XML declaration and DOCTYPE have no place inside HTML.
    return Markup(svg[svg.index("<svg") :])


def _embedded(thumbnails: Iterable[Thumbnail]) -> list[_EmbeddedThumbnail]:
    """Thumbnails with their JPEG bytes as base64 data URIs."""
    return [
        _EmbeddedThumbnail(t.asset_id, t.caption, f"data:image/jpeg;base64,{base64.b64encode(t.jpeg).decode('ascii')}")
        for t in thumbnails
    ]
