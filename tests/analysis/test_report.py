"""The nightly HTML report on real thumbnails: figures, escaping, self-containment, and what a browser shows."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from aesq.analysis.palette import version_colours
from aesq.analysis.report import ReportData, Thumbnail, render_report
from aesq.core.pipeline_status import FailureExample, FailureReason
from tests.helpers import REPORT_HOSTILE, REPORT_VERSIONS, report_thumbnail, sample_report

REPO_ROOT = Path(__file__).resolve().parents[2]
SCORERS = ["ernie-aes", "technical"]
# The colour of sdxl/lora-7's lines in every plot, as the dashboard draws that version.
LORA_COLOUR = version_colours(REPORT_VERSIONS)["sdxl/lora-7"]
LORA_RGB = tuple(int(LORA_COLOUR[i : i + 2], 16) for i in (1, 3, 5))

EXPECTED_LEADERBOARD = [
    ["Version", "Scorer", "n", "Mean [95 %]", "Median", "Share above", "Change"],
    ["sdxl/lora-7", "ernie-aes", "1,250", "72.1 [70.3, 73.8]", "72.0", "64%", "▲ +1.4"],
    ["sdxl/base", "ernie-aes", "980", "65.5 [63.2, 67.9]", "66.0", "41%", "▼ -3.1"],
    [REPORT_HOSTILE, "ernie-aes", "12", "58.0", "57.5", "–", "new"],
    ["sdxl/lora-7", "technical", "1,250", "6.43 [6.31, 6.55]", "6.50", "70%", "±0.00"],
    ["sdxl/base", "technical", "980", "5.90 [5.71, 6.08]", "5.88", "52%", "▼ -0.25"],
]


def empty_report() -> ReportData:
    """A report over an empty database."""
    return ReportData(
        title="empty",
        generated_at=datetime(2024, 5, 6, 3, 0),
        since=None,
        leaderboard=[],
        distributions={},
        trends={},
        changes=[],
        defects={},
        best={},
        worst={},
    )


class _TableReader(HTMLParser):
    """Collects the text of each cell of one table, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.in_table, self.in_cell, self.rows = table_id, False, False, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self.in_table = True
        elif self.in_table and tag == "tr":
            self.rows.append([])
        elif self.in_table and tag in ("td", "th"):
            self.in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.in_table = False
        elif tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_table and self.in_cell:
            self.rows[-1][-1] += data


def _table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cell texts of the table with this id, entities decoded."""
    reader = _TableReader(table_id)
    reader.feed(html)
    return reader.rows


@pytest.fixture(scope="module")
def report() -> ReportData:
    """The sample report, built once for the module."""
    return sample_report()


@pytest.fixture(scope="module")
def html(report: ReportData) -> str:
    """The sample report rendered once for the module."""
    return render_report(report)


def test_leaderboard_shows_every_line_formatted_in_caller_order(html: str) -> None:
    assert _table_rows(html, "leaderboard") == EXPECTED_LEADERBOARD


def test_header_changes_and_defects_are_shown(html: str) -> None:
    assert "<title>aesq nightly report</title>" in html
    assert "Generated 2024-05-06 03:00 UTC · trends since 2024-04-30 00:00 UTC" in html
    assert "<li>sdxl/base ernie-aes mean -3.1 &amp; share above 41% &lt; 50%</li>" in html
    assert _table_rows(html, "defects") == [
        ["Version", "blur", "noise", "overexposure", "Total"],
        ["sdxl/lora-7", "3", "1", "0", "4"],
        ["sdxl/base", "5", "0", "2", "7"],
        [REPORT_HOSTILE, "0", "0", "0", "0"],
    ]


def test_user_strings_are_escaped_everywhere(html: str) -> None:
    assert "<script" not in html.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    # Leaderboard, change list, defects, thumbnail heading, and the legend of the ernie-aes distribution.
    assert html.count(escaped) == 5


def test_nothing_is_loaded_from_elsewhere(html: str) -> None:
    # XML namespace names are identifiers, never fetched; anything else naming a URL would be.
    without_namespaces = re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", html)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    assert not re.search(r'\s(src|href)="(?!data:|#)', html)
    assert not re.search(r"url\((?!#)", html)
    assert "<link" not in html and "@import" not in html


def test_thumbnails_are_embedded_jpegs(html: str, report: ReportData) -> None:
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    originals = [t.jpeg for strip in [*report.best.values(), *report.worst.values()] for t in strip]
    assert len(sources) == len(originals) == 5
    prefix = "data:image/jpeg;base64,"
    decoded = []
    for source in sources:
        assert source.startswith(prefix)
        payload = base64.b64decode(source.removeprefix(prefix), validate=True)
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            assert image.format == "JPEG" and max(image.size) <= 128
        decoded.append(payload)
    assert sorted(decoded) == sorted(originals)


def test_plots_are_inline_svg_per_scorer_with_every_version(report: ReportData) -> None:
    open_figures = plt.get_fignums()
    html = render_report(report)
    assert plt.get_fignums() == open_figures
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)
    # Distributions and trends for two scorers; the hostile version has no technical scores and no trend.
    assert len(svgs) == 4
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    ernie_distribution, technical_distribution, ernie_trend, technical_trend = svgs
    escaped_hostile = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert all(f">{v}</text>" in ernie_distribution for v in ["sdxl/lora-7", "sdxl/base", escaped_hostile])
    assert all(f">{v}</text>" in technical_distribution for v in ["sdxl/lora-7", "sdxl/base"])
    assert "script" not in technical_distribution and "script" not in ernie_trend
    assert all(f">{v}</text>" in svg for svg in [ernie_trend, technical_trend] for v in ["sdxl/lora-7", "sdxl/base"])
    # Ids are salted per plot, so no two inline SVGs define the same referenced id.
    referenced = [set(re.findall(r'id="([mp][0-9a-f]{8,})"', svg)) for svg in svgs]
    assert all(referenced) and sum(map(len, referenced)) == len(set().union(*referenced))


def test_same_data_renders_the_same_bytes_in_another_process(html: str) -> None:
    script = (
        "import sys; from aesq.analysis.report import render_report; from tests.helpers import sample_report; "
        "sys.stdout.buffer.write(render_report(sample_report()).encode())"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.decode() == html


def test_empty_report_renders_a_sentence_per_section() -> None:
    html = render_report(empty_report())
    for sentence in [
        "No scores yet.",
        "Nothing changed since the previous report.",
        "No scores to plot yet.",
        "No daily means yet.",
        "No defects found yet.",
        "No failed images.",
        "No images yet.",
    ]:
        assert sentence in html
    assert "<svg" not in html and "<table" not in html and "<img" not in html


def _x_ticks(svg: str) -> dict[str, float]:
    """The x-axis tick labels of a matplotlib SVG and where each tick is drawn."""
    groups = re.findall(r'<g id="xtick_\d+">(.*?)</text>', svg, flags=re.DOTALL)
    return {
        re.search(r"<text[^>]*>([^<]*)$", group).group(1): float(re.search(r'<use [^>]*x="([^"]+)"', group).group(1))
        for group in groups
    }


def _axes_x_range(svg: str) -> tuple[float, float]:
    """Left and right edge of the plot's axes (its background patch)."""
    corners = re.search(r'<g id="patch_2">\s*<path d="M ([\d.]+) [\d.]+\s*L ([\d.]+)', svg)
    return float(corners.group(1)), float(corners.group(2))


def _markers_in(svg: str, colour: str, left: float, right: float) -> list[float]:
    """The x of every marker of this colour inside the axes (the legend's sample lies outside them)."""
    xs = re.findall(rf'<use [^>]*x="([\d.]+)" y="[\d.]+" style="fill: {colour}', svg)
    return [float(x) for x in xs if left <= float(x) <= right]


def test_one_day_of_trends_is_that_day_between_its_neighbours() -> None:
    day = date(2024, 5, 1)
    one_day = replace(sample_report(), trends={("sdxl/lora-7", "technical"): [(day, 6.4, 120)]})
    trend = re.findall(r"<svg\b.*?</svg>", render_report(one_day), flags=re.DOTALL)[-1]
    ticks = _x_ticks(trend)
    assert list(ticks) == ["Apr 30", "May 01", "May 02"]
    left, right = _axes_x_range(trend)
    assert ticks["Apr 30"] == pytest.approx(left) and ticks["May 02"] == pytest.approx(right)
    # The one point is drawn at its day, in the middle, not clipped at an edge of a years-wide axis.
    assert _markers_in(trend, LORA_COLOUR, left, right) == [pytest.approx(ticks["May 01"])]


def test_every_version_has_its_dashboard_colour_in_every_plot(html: str) -> None:
    colours = version_colours(REPORT_VERSIONS)
    svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)
    for version in ("sdxl/lora-7", "sdxl/base"):
        assert all(f"stroke: {colours[version]}" in svg for svg in svgs), version
    assert colours["sdxl/lora-7"] != colours["sdxl/base"]


def _axes_y_range(svg: str) -> tuple[float, float]:
    """Top and bottom edge of the plot's axes, in SVG coordinates (y grows downwards)."""
    corners = re.search(r'<g id="patch_2">\s*<path d="M [\d.]+ ([\d.]+)\s*L [\d.]+ [\d.]+\s*L [\d.]+ ([\d.]+)', svg)
    bottom, top = float(corners.group(1)), float(corners.group(2))
    return top, bottom


def test_daily_means_keep_clear_of_the_plots_top_and_bottom(html: str) -> None:
    for trend in re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)[2:]:
        top, bottom = _axes_y_range(trend)
        left, right = _axes_x_range(trend)
        markers = [
            float(y)
            for x, y in re.findall(r'<use [^>]*x="([\d.]+)" y="([\d.]+)" style="fill: #', trend)
            if left <= float(x) <= right
        ]
        assert len(markers) == 10  # two versions, five days
        # The highest and lowest means stand a tenth of the plot's height away from its edges.
        assert min(markers) - top >= 0.1 * (bottom - top) and bottom - max(markers) >= 0.1 * (bottom - top)


def test_strip_captions_name_the_image_below_a_heading_naming_its_folder() -> None:
    def in_folder(asset_id: int, name: str, score: float) -> Thumbnail:
        thumbnail = report_thumbnail(asset_id, name, score)
        return replace(thumbnail, caption=f"generated/demo-diffusion/v1.0-base/{thumbnail.caption}")

    best = {"demo:v1": [in_folder(1, "astronaut", 9.1), in_folder(2, "immunohistochemistry", 8.8)]}
    html = render_report(replace(sample_report(), best=best, worst={"demo:v1": [in_folder(3, "coffee", 2.0)]}))
    assert '<h3>demo:v1 <span class="folder">in generated/demo-diffusion/v1.0-base/</span></h3>' in html
    captions = re.findall(r'<figure title="([^"]*)">.*?<figcaption>([^<]*)</figcaption>', html, flags=re.DOTALL)
    assert captions == [
        (f"generated/demo-diffusion/v1.0-base/{name}.png · {score}", f"{name}.png · {score}")
        for name, score in [("astronaut", 9.1), ("immunohistochemistry", 8.8), ("coffee", 2.0)]
    ]
    assert "overflow-wrap: anywhere" in html  # a long name wraps inside its figure instead of running on


def test_trends_over_a_few_days_have_a_tick_per_day_and_a_day_of_margin(html: str) -> None:
    technical_trend = re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)[-1]
    assert list(_x_ticks(technical_trend)) == ["Apr 30", "May 01", "May 02", "May 03", "May 04", "May 05", "May 06"]


def test_failures_are_listed_by_reason_with_examples() -> None:
    failures = [
        FailureReason("not an image", 2, [
            FailureExample(7, "bucket/a.jpg", "not an image (no known image format)"),
            FailureExample(None, "bucket/<b>.jpg", f"not an image: {REPORT_HOSTILE}"),
        ]),
        FailureReason("empty", 1, [FailureExample(9, "/data/c.png", "empty object (0 bytes)")]),
    ]  # fmt: skip
    html = render_report(replace(sample_report(), failures=failures))
    assert _table_rows(html, "failures") == [
        ["Reason", "Assets", "Examples"],
        ["not an image", "2", f"bucket/a.jpg: not an image (no known image format)bucket/<b>.jpg: not an image: {REPORT_HOSTILE}"],
        ["empty", "1", "/data/c.png: empty object (0 bytes)"],
    ]  # fmt: skip
    assert "<script" not in html.lower() and "bucket/&lt;b&gt;.jpg" in html


@pytest.mark.slow
def test_chromium_shows_leaderboard_and_plots(html: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the chromium binary is not installed (Debian: apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]

    dom = subprocess.run(
        [*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert _table_rows(dom, "leaderboard") == EXPECTED_LEADERBOARD
    assert len(re.findall(r"<svg\b", dom)) == 4
    assert len(re.findall(r'<img [^>]*src="data:image/jpeg;base64,', dom)) == 5

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [*browser, "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        check=True,
        timeout=120,
    )
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 1
    # The plots were painted: some pixels carry sdxl/lora-7's line colour.
    assert (np.abs(pixels - LORA_RGB).max(axis=1) <= 8).sum() > 100
