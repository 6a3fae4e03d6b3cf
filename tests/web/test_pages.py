"""The dashboard in headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium) on the
scored demo data: the leaderboard, a filter, picking two versions to compare, the comparison page, thumbnails, the
asset page, failures, and the charts (trends and the report's) with the demo's one day of data."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from aesq.analysis.nightly_report import build_report
from aesq.analysis.palette import version_colours
from aesq.analysis.report import render_report
from aesq.analysis.versions import daily_means
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.pipeline_status import failure_reasons
from aesq.web.app import create_app
from tests.helpers import add_scored_assets, defect_shares_from_rows, free_port, serving_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def dashboard(demo_settings, live_app) -> str:
    """The live application on the scored demo data; its base URL."""
    return live_app


@pytest.fixture
def live_app(settings) -> Iterator[str]:
    """`aesq serve`'s application on a loopback port, in this process; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=free_port(), log_level="warning"))
    with serving_in_thread(server) as base:
        yield base


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


def _links(page: str, pattern: str) -> list[str]:
    """The hrefs of a page that match `pattern`, as a browser reads them (entities decoded)."""
    return [
        html.unescape(href) for href in re.findall(r'href="([^"]*)"', page) if re.match(pattern, html.unescape(href))
    ]


def _asset_ids(page: str) -> set[int]:
    """The assets a gallery page shows."""
    return {int(asset_id) for asset_id in re.findall(r'href="/assets/(\d+)"', page)}


def test_every_link_opens_the_version_it_names(live_app, settings):
    """Versions whose labels hold URL syntax (`+`, `#`, `&`, `=`, `:`) or share a prefix: each leaderboard, trends,
    asset, gallery "next" and compare link, followed on the live server, shows that version's assets only."""
    from aesq.analysis.aggregate import aggregate_versions

    ids = {
        "m:1.0+lora": add_scored_assets(settings, "1.0+lora", [1.0, 2.0]),
        "m:2.0#rc1": add_scored_assets(settings, "2.0#rc1", [float(i % 10) for i in range(50)]),
        "m:a&b=c": add_scored_assets(settings, "a&b=c", [3.0, 4.0, 5.0]),
        "col:x:v": add_scored_assets(settings, "x:v", [6.0, 7.0, 8.0, 9.0], name="col"),
        "col:x": add_scored_assets(settings, "x", [5.0], name="col"),
        "col/x:v": add_scored_assets(settings, "v", [2.0, 3.0, 4.0, 5.0, 6.0], name="col/x"),  # renamed by 0014
    }
    aggregate_versions(settings)
    with get_engine(settings).begin() as connection:
        connection.execute(
            sa.text("INSERT INTO defects (asset_id, category, severity) VALUES (:id, 'blur', 0.5)"),
            {"id": ids["m:a&b=c"][0]},
        )

    with httpx.Client(base_url=live_app, timeout=60) as client:

        def gallery(href: str) -> str:
            page = client.get(href)
            assert page.status_code == 200, (href, page.text)
            return page.text

        leaderboard = client.get("/", params={"scorer": "technical"}).text
        links = _links(leaderboard, r"/gallery\?")
        assert len(links) == len(ids)
        for href in links:
            version = dict(httpx.URL(href).params)["version"]
            shown = gallery(href)
            expected = ids[version][:48]  # the 2.0#rc1 gallery shows 48, best first
            assert _asset_ids(shown) <= set(ids[version]) and len(_asset_ids(shown)) == len(expected), (href, version)
            assert f"top assets of {html.escape(version)} under technical" in shown
        [next_page] = _links(gallery("/gallery?" + str(httpx.QueryParams(version="m:2.0#rc1"))), r"/gallery\?")
        assert _asset_ids(gallery(next_page)) == set(ids["m:2.0#rc1"]) - _asset_ids(
            gallery("/gallery?" + str(httpx.QueryParams(version="m:2.0#rc1")))
        )
        assert len(_asset_ids(gallery(next_page))) == 2

        [defective] = _links(client.get("/trends").text, r"/gallery\?show=defective")
        assert _asset_ids(gallery(defective)) == {ids["m:a&b=c"][0]}

        for version in ("col:x:v", "col/x:v", "m:a&b=c"):
            asset_page = client.get(f"/assets/{ids[version][0]}").text
            [own] = _links(asset_page, r"/gallery\?")
            assert _asset_ids(gallery(own)) == set(ids[version])

        compared = client.get("/compare", params={"a": "col:x:v", "b": "col/x:v", "scorer": "technical"}).text
        assert re.search(r"<th>n \(A, B\)</th><td>4, 5</td>", compared), compared
        [swap] = _links(compared, r"/compare\?")
        assert re.search(r"<th>n \(A, B\)</th><td>5, 4</td>", gallery(swap))
        api = client.get("/api/compare", params={"a": "col:x:v", "b": "m:a&b=c", "scorer": "technical"}).json()
        assert (api["count_a"], api["count_b"]) == (4, 3)
        listed = client.get("/api/assets", params={"scorer": "technical", "generator": "col", "version": "x:v"})
        assert {item["id"] for item in listed.json()["items"]} == set(ids["col:x:v"])


def test_a_malformed_stored_row_reads_as_unreadable(live_app, settings):
    """JSON written by hand or another tool in a shape aesq never writes: the asset's page and its API answer
    show it as unreadable, and everything else about the asset."""
    [odd, mixed] = add_scored_assets(settings, "1", [4.0, 5.0])
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text("UPDATE assets SET extra = '[1, 2]' WHERE id = :id"), {"id": odd})
        connection.execute(sa.text("UPDATE assets SET extra = '{\"rating\": 5}' WHERE id = :id"), {"id": mixed})
        connection.execute(sa.text("UPDATE scores SET raw = '\"text\"' WHERE asset_id = :id"), {"id": odd})
        connection.execute(
            sa.text(
                "INSERT INTO critiques (asset_id, critic, critic_score, aspects) VALUES"
                " (:odd, 'ernie-aes', 40, '[\"not\", \"aspects\"]'),"
                ' (:mixed, \'ernie-aes\', 50, \'{"Light": "soft", "Composition": 3, "Colour": "\\ud800"}\')'
            ),
            {"odd": odd, "mixed": mixed},
        )

    with httpx.Client(base_url=live_app, timeout=60) as client:
        answer = client.get(f"/api/assets/{odd}")
        assert answer.status_code == 200, answer.text
        detail = answer.json()
        assert detail["unreadable"] == ["extra", "scores.technical.raw", "critique.aspects"]
        assert (detail["extra"], detail["scores"][0]["raw"], detail["critique"]["aspects"]) == ({}, {}, {})
        assert (detail["scores"][0]["value"], detail["critique"]["score"]) == (4.0, 40.0)
        page = client.get(f"/assets/{odd}")
        assert page.status_code == 200, page.text
        assert "shown as unreadable: extra, scores.technical.raw, critique.aspects" in page.text
        assert '<td id="asset-extra">unreadable</td>' in page.text
        assert '<p class="empty" id="critique">unreadable</p>' in page.text

        detail = client.get(f"/api/assets/{mixed}").json()
        assert (detail["unreadable"], detail["extra"]) == (["critique.aspects"], {"rating": 5})
        assert detail["critique"]["aspects"] == {"Light": "soft", "Composition": "unreadable", "Colour": "unreadable"}
        page = client.get(f"/assets/{mixed}").text
        assert "<dt>Light</dt><dd>soft</dd><dt>Composition</dt><dd>unreadable</dd>" in page
        assert '<td id="asset-extra">rating: 5</td>' in page
