"""The dashboard in headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium) on the
scored demo data: the leaderboard, a filter, picking two versions to compare, the comparison page, thumbnails, the
asset page, failures, and the charts (trends and the report's) with the demo's one day of data."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from aesq.analysis.nightly_report import build_report
from aesq.analysis.palette import version_colours
from aesq.analysis.report import render_report
from aesq.analysis.versions import daily_means
from aesq.core.config import get_settings
from aesq.core.pipeline_status import failure_reasons
from aesq.web.app import create_app
from tests.helpers import defect_shares_from_rows, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def dashboard(demo_settings) -> Iterator[str]:
    """`aesq serve`'s application on a loopback port, in this process; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian packages chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


def _wait(browser, condition, seconds: float = 30):
    """Wait for `condition`; elements of the page being left while it polls are simply polled again."""
    return WebDriverWait(browser, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _loaded(browser, image) -> bool:
    """Bring a (lazy) image into view; True once it has loaded with real pixels."""
    browser.execute_script("arguments[0].scrollIntoView()", image)
    return bool(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image))


def _versions_shown(browser) -> list[str]:
    return [row.get_attribute("data-version") for row in browser.find_elements(By.CSS_SELECTOR, "tr.version-row")]


def _rgb(colour: str) -> str:
    """A #rrggbb colour as the browser's computed styles write it."""
    return f"rgb({int(colour[1:3], 16)}, {int(colour[3:5], 16)}, {int(colour[5:7], 16)})"


def _traces(browser, chart: str) -> list[list[str]]:
    """[name, colour] of every trace plotly drew in a chart (markers and lines take the same colour)."""
    return browser.execute_script(
        "return document.getElementById(arguments[0])._fullData.map(t => [t.name, t.marker.color])", chart
    )


def test_leaderboard_filter_compare_and_thumbnails(dashboard, browser):
    browser.get(dashboard + "/")
    assert sorted(_versions_shown(browser)) == [
        "demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft", "other-model:v1",
    ]  # fmt: skip
    _wait(
        browser, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#means .main-svg"))
    )  # plotly drew
    # Each version's point in its own colour; every interval end a sixth of their span inside the plot's edges.
    colours = version_colours(_versions_shown(browser))
    [[_, point_colours]] = _traces(browser, "means")
    assert point_colours == [colours[version] for version in _versions_shown(browser)]
    ends = browser.execute_script(
        "return JSON.parse(document.getElementById('means-data').textContent).rows"
        ".flatMap(r => [r.mean_low ?? r.mean, r.mean_high ?? r.mean])"
    )
    low, high = browser.execute_script("return document.getElementById('means')._fullLayout.yaxis.range")
    span = max(ends) - min(ends)
    assert low <= min(ends) - span / 7 and high >= max(ends) + span / 7

    Select(browser.find_element(By.NAME, "generator")).select_by_visible_text("other-model")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    _wait(browser, lambda b: _versions_shown(b) == ["other-model:v1"])

    browser.get(dashboard + "/compare?a=demo-diffusion:v1.0-base&b=demo-diffusion:v2.0-sft&scorer=technical")
    assert browser.find_element(By.CSS_SELECTOR, "#comparison .version-a").text == "demo-diffusion:v1.0-base"
    assert browser.find_element(By.CSS_SELECTOR, "#comparison .version-b").text == "demo-diffusion:v2.0-sft"
    assert "8 pairs" in browser.find_element(By.CSS_SELECTOR, "table.stats").text
    _wait(browser, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#distributions .main-svg")))
    strips = browser.find_elements(By.CSS_SELECTOR, ".pair img")
    assert len(strips) >= 2
    _wait(browser, lambda b: _loaded(b, strips[0]) and _loaded(b, strips[1]))

    browser.get(dashboard + "/gallery?show=bottom&scorer=technical")
    first = browser.find_element(By.CSS_SELECTOR, ".tile img")
    _wait(browser, lambda b: _loaded(b, first))
    first.click()
    _wait(browser, expected_conditions.presence_of_element_located((By.ID, "asset-image")))
    assert "technical" in browser.find_element(By.ID, "scores").text
    shown = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
    linked = [
        int(link.get_attribute("href").rsplit("/", 1)[1])
        for link in browser.find_elements(By.CSS_SELECTOR, ".gallery .tile a")
    ]
    assert len(set(linked)) == 8 and shown not in linked  # the 8 nearest of the 26 other embedded assets


def test_trends_and_reports_pages_render(dashboard, browser, demo_settings, tmp_path):
    browser.get(dashboard + "/trends?scorer=technical")
    _wait(browser, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#trend .main-svg")))
    shown = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#defects tbody tr")
    ]
    expected = defect_shares_from_rows(demo_settings)
    assert shown == [
        [row["version"], row["category"], str(row["assets"]), str(row["scored"]), f"{100 * row['share']:.1f} %"]
        for row in expected
    ]
    assert ["other-model:v1", "noise", "2", "2", "100.0 %"] in shown  # its two images are random pixels

    # The demo scores everything on one day: the axis is that day between its neighbours, a tick per day.
    [day] = {day for points in daily_means(demo_settings, "technical").values() for day, _, _ in points}
    around = [(day + timedelta(days=offset)).isoformat() for offset in (-1, 0, 1)]
    colours = version_colours(["demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft",
                               "other-model:v1"])  # fmt: skip
    assert sorted(_traces(browser, "trend")) == sorted([version, colours[version]] for version in colours)
    shown_range = browser.execute_script("return document.getElementById('trend')._fullLayout.xaxis.range")
    assert [end[:10] for end in shown_range] == [around[0], around[2]]
    assert [tick.text for tick in browser.find_elements(By.CSS_SELECTOR, "#trend .xtick text")] == around
    # So is the report's daily-mean chart, rendered by Chromium from the report file.
    report = tmp_path / "report.html"
    report.write_text(render_report(build_report(demo_settings)[0]), encoding="utf-8")
    browser.get(report.as_uri())
    ticks = browser.find_elements(
        By.XPATH, "//h2[.='Daily mean']/following-sibling::figure[1]//*[starts-with(@id, 'xtick_')]//*[name()='text']"
    )
    assert [tick.text for tick in ticks] == [f"{day + timedelta(days=offset):%b %d}" for offset in (-1, 0, 1)]
    browser.get(dashboard + "/reports")
    assert "No report yet" in browser.page_source


def test_pick_two_versions_to_compare_by_keyboard_and_see_failures(dashboard, browser, demo_settings):
    browser.get(dashboard + "/?source_kind=generated")  # filtered: figures computed now, share above included
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.version-row")
    assert len(rows) == 4 and all(row.find_elements(By.TAG_NAME, "td")[-1].text.endswith(" %") for row in rows)
    button = browser.find_element(By.ID, "compare-picked")
    assert not button.is_enabled()
    for version in ("demo-diffusion:v2.0-sft", "demo-diffusion:v1.0-base"):  # picked in this order: A, then B
        box = browser.find_element(By.CSS_SELECTOR, f'input[name="version"][value="{version}"]')
        browser.execute_script("arguments[0].focus()", box)
        box.send_keys(Keys.SPACE)
    assert browser.find_element(By.ID, "picked-count").text == (
        "A: demo-diffusion:v2.0-sft · B: demo-diffusion:v1.0-base"
    )
    button.send_keys(Keys.ENTER)
    _wait(browser, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#comparison .version-a")))
    assert browser.find_element(By.CSS_SELECTOR, "#comparison .version-a").text == "demo-diffusion:v2.0-sft"
    assert browser.find_element(By.CSS_SELECTOR, "#comparison .version-b").text == "demo-diffusion:v1.0-base"
    # A sorts after B by name, yet its histogram takes A's badge colour and B's takes B's.
    _wait(browser, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#distributions .main-svg")))
    badges = [
        tag.value_of_css_property("background-color")
        for tag in browser.find_elements(By.CSS_SELECTOR, "#comparison h2 .tag")
    ]
    traces = _traces(browser, "distributions")
    assert [name for name, _ in traces] == ["demo-diffusion:v2.0-sft", "demo-diffusion:v1.0-base"]
    assert [_rgb(colour) for _, colour in traces] == [
        badge.replace("rgba", "rgb").replace(", 1)", ")") for badge in badges
    ]
    assert badges[0] != badges[1]
    sides = browser.find_elements(By.CSS_SELECTOR, ".pair .side")
    assert len(sides) == 16 and [side.find_element(By.CLASS_NAME, "tag").text for side in sides] == ["A", "B"] * 8
    assert all(
        side.find_element(By.TAG_NAME, "img").get_attribute("alt").startswith(label)
        for side, label in zip(sides, ["A (demo-diffusion:v2.0-sft)", "B (demo-diffusion:v1.0-base)"] * 8)
    )

    browser.find_element(By.LINK_TEXT, "failures").click()
    _wait(browser, expected_conditions.presence_of_element_located((By.ID, "failures")))
    reasons = failure_reasons(demo_settings, examples=5)
    assert reasons  # the demo's crawled folder holds a truncated file
    assert [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")[:2]]
        for row in browser.find_elements(By.CSS_SELECTOR, "tr.failure-reason")
    ] == [[reason.reason, str(reason.count)] for reason in reasons]
    example = reasons[0].examples[0]
    browser.find_element(By.LINK_TEXT, example.location).click()
    _wait(browser, expected_conditions.presence_of_element_located((By.ID, "asset-failure")))
    assert browser.current_url.endswith(f"/assets/{example.asset_id}") and example.error in browser.page_source


def test_images_outside_the_configured_storage_say_which_folder_to_add(dashboard, browser, demo_settings, monkeypatch):
    demo = str(demo_settings.data_dir / "demo")
    monkeypatch.setenv("AESQ_SOURCES", "s3://elsewhere")  # the demo ran from a folder this dashboard is not given
    monkeypatch.setenv("AESQ_DATA_DIR", str(demo_settings.data_dir.parent / "other-data"))
    get_settings.cache_clear()
    browser.get(dashboard + "/gallery?show=bottom&scorer=technical")
    tiles = browser.find_elements(By.CSS_SELECTOR, ".tile img")
    assert tiles
    _wait(browser, lambda b: _loaded(b, tiles[0]) and _loaded(b, tiles[-1]))  # an image, not a broken one
    said = browser.execute_script("return fetch(arguments[0].src).then(r => r.text())", tiles[0])
    assert f"<title>not shown: {demo} is not in AESQ_SOURCES — add it to see thumbnails</title>" in said
