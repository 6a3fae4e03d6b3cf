"""The JSON API on the scored demo data, through FastAPI's test client against the real database."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from aesq.cli.output import scientific
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.pipeline_status import failure_reasons
from aesq.core.tables import EMBEDDING_DIMENSIONS, Critique
from aesq.web.app import create_app
from aesq.web.pages import p_value
from aesq.web.thumbnails import folders_outside_storage
from tests.helpers import defect_shares_from_rows, png_bytes, transparent_sticker

BASE, LORA, SFT = "demo-diffusion:v1.0-base", "demo-diffusion:v1.1-lora", "demo-diffusion:v2.0-sft"


@pytest.fixture
def client(demo_settings) -> TestClient:
    return TestClient(create_app())


def test_leaderboard_compare_assets_and_neighbours(client, demo_settings):
    versions = client.get("/api/versions", params={"scorer": "technical"}).json()
    labels = [f"{row['generator']}:{row['version']}" for row in versions]
    assert sorted(labels) == sorted([BASE, LORA, SFT, "other-model:v1"])
    assert [row["mean"] for row in versions] == sorted((row["mean"] for row in versions), reverse=True)
    base = next(row for row in versions if row["version"] == "v1.0-base")
    assert (
        base["count"] == 8 and base["mean_low"] <= base["mean"] <= base["mean_high"] and base["interval"] == "bootstrap"
    )
    only_demo = client.get("/api/versions", params={"generator": "demo-diffusion"}).json()
    assert {row["generator"] for row in only_demo} == {"demo-diffusion"} and len(only_demo) == 3
    live = client.get("/api/versions", params={"scorer": "technical", "source_kind": "generated"}).json()
    assert {r["interval"] for r in live} == {"normal"} and next(r for r in live if r["version"] == "v1.0-base")[
        "mean"
    ] == pytest.approx(base["mean"])

    compared = client.get("/api/compare", params={"a": BASE, "b": SFT, "scorer": "technical"}).json()
    assert compared["count_a"] == compared["count_b"] == 8
    assert compared["paired"]["pairs"] == 8  # the demo renders every photo (prompt + seed) in each version
    pairs = client.get("/api/pairs", params={"a": BASE, "b": SFT, "scorer": "technical", "limit": 3}).json()
    assert len(pairs) == 3 and all(p["prompt"].startswith("a photograph") for p in pairs)

    page = client.get(
        "/api/assets", params={"scorer": "technical", "version": "v1.0-base", "limit": 5, "offset": 5}
    ).json()
    assert page["total"] == 8 and len(page["items"]) == 3 and page["offset"] == 5
    ordered = client.get("/api/assets", params={"scorer": "technical", "order": "score_asc", "limit": 200}).json()[
        "items"
    ]
    assert [a["value"] for a in ordered] == sorted(a["value"] for a in ordered)
    worst = ordered[0]
    detail = client.get(f"/api/assets/{worst['id']}").json()
    assert detail["key"] == worst["key"] and [s["scorer"] for s in detail["scores"]] == ["technical"]
    assert detail["embedders"] == ["efficientnet-lite0"] and detail["prompt"] == worst["prompt"]
    neighbours = client.get(f"/api/assets/{worst['id']}/neighbours", params={"limit": 3}).json()
    assert len(neighbours) == 3 and neighbours[0]["distance"] <= neighbours[-1]["distance"]
    assert worst["id"] not in [n["id"] for n in neighbours]
    defective = client.get("/api/assets", params={"scorer": "technical", "defect": "*", "limit": 200}).json()
    flagged = _defects_of_scored_assets(demo_settings)
    assert {item["id"]: item["defects"] for item in defective["items"]} == flagged
    assert defective["total"] == len(flagged)
    noise_images = [item for item in defective["items"] if item["generator"] == "other-model"]
    assert len(noise_images) == 2 and all("noise" in item["defects"] for item in noise_images)  # random pixels


def _defects_of_scored_assets(settings) -> dict[int, list[str]]:
    """Each scored asset's defect categories, sorted, read from the defect rows themselves."""
    query = """
        SELECT d.asset_id, array_agg(d.category ORDER BY d.category) FROM defects d
        JOIN assets a ON a.id = d.asset_id AND a.status = 'scored' GROUP BY d.asset_id
    """
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(sa.text(query)).all())


def test_trends_and_defect_shares_are_the_figures_of_the_demo_rows(client, demo_settings):
    versions = client.get("/api/versions", params={"scorer": "technical"}).json()
    trends = client.get("/api/trends", params={"scorer": "technical"}).json()
    # The demo is scored at once: one day per version, whose mean and count are the version's.
    assert {
        version: [(p["count"], pytest.approx(p["mean"])) for p in points] for version, points in trends.items()
    } == {f"{row['generator']}:{row['version']}": [(row["count"], row["mean"])] for row in versions}
    assert [len(trends[v]) for v in (BASE, LORA, SFT, "other-model:v1")] == [1, 1, 1, 1]
    assert client.get("/api/trends", params={"scorer": "technical", "generator": "other-model"}).json().keys() == {
        "other-model:v1"
    }
    expected = defect_shares_from_rows(demo_settings)
    assert client.get("/api/defects").json() == expected
    assert {"version": "other-model:v1", "category": "noise", "assets": 2, "scored": 2, "share": 1.0} in expected
    assert {row["scored"] for row in expected} <= {8, 2}  # every demo version has 8 scored images, other-model 2


def test_a_critique_is_its_own_field_and_section_and_no_defect(client, demo_settings):
    """The asset detail carries the critique beside the defects; no defect listing or figure counts it."""
    best = client.get("/api/assets", params={"scorer": "technical", "limit": 1}).json()["items"][0]
    assert best["defects"] == []  # the best image is no low scorer, so it was never analysed
    aspects = {"Overall Gestalt": "balanced", "Composition & Design": "centred"}
    with get_engine(demo_settings).begin() as connection:
        connection.execute(
            sa.insert(Critique).values(asset_id=best["id"], critic="ernie-aes", critic_score=81.5, aspects=aspects)
        )
    detail = client.get(f"/api/assets/{best['id']}").json()
    assert (detail["critique"]["critic"], detail["critique"]["score"]) == ("ernie-aes", 81.5)
    assert list(detail["critique"]["aspects"].items()) == list(aspects.items())  # in the order asked
    assert detail["defects"] == []
    defective = client.get("/api/assets", params={"scorer": "technical", "defect": "*", "limit": 200}).json()
    assert best["id"] not in [item["id"] for item in defective["items"]]
    page = client.get(f"/assets/{best['id']}").text
    assert "Critique by ernie-aes" in page and "81.5" in page and "<dd>centred</dd>" in page
    others = client.get("/api/assets", params={"scorer": "technical", "limit": 2}).json()["items"]
    assert client.get(f"/api/assets/{others[1]['id']}").json()["critique"] is None


def test_thumbnails_are_resized_cached_and_only_from_the_configured_storage(client, demo_settings):
    asset_id = client.get("/api/assets", params={"scorer": "technical", "limit": 1}).json()["items"][0]["id"]
    response = client.get(f"/api/assets/{asset_id}/thumbnail", params={"size": 128})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) == 128
    assert len(list((demo_settings.data_dir / "thumbnails").glob("*-128.jpg"))) == 1
    assert client.get(f"/api/assets/{asset_id}/thumbnail", params={"size": 128}).content == response.content
    # An asset row pointing outside the configured storage is refused (and storage credentials never appear).
    with get_engine(demo_settings).begin() as connection:
        outside = connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, status) "
                "VALUES ('file', '/etc', 'passwd', 'x', 1, 'crawled', 'scored') RETURNING id"
            )
        ).scalar_one()
    refused = client.get(f"/api/assets/{outside}/thumbnail")
    assert refused.status_code == 403
    assert (
        refused.json()["detail"]
        == f"asset {outside} is not shown: /etc is not in the configured storage (AESQ_SOURCES)"
    )
    assert demo_settings.s3_secret_key.get_secret_value() not in client.get(f"/api/assets/{asset_id}").text
    # The pages' images show the same JPEG, and for the outside asset a placeholder naming its folder, not /etc/passwd.
    assert client.get(f"/thumbnails/{asset_id}", params={"size": 128}).content == response.content
    placeholder = client.get(f"/thumbnails/{outside}", params={"size": 128})
    assert placeholder.status_code == 200 and placeholder.headers["content-type"] == "image/svg+xml"
    assert "<title>not shown: /etc is not in AESQ_SOURCES — add it to see thumbnails</title>" in placeholder.text
    assert "root:" not in placeholder.text and placeholder.headers["cache-control"] == "no-store"
    assert folders_outside_storage(demo_settings) == ["/etc"]  # what `aesq serve` names once at start


def test_a_transparent_images_thumbnail_shows_it_on_white(client, demo_settings):
    """Where aesq itself shows an image, transparent areas are white (a JPEG has no transparency), not the
    photograph stored under them."""
    data = png_bytes(transparent_sticker())
    folder = demo_settings.data_dir / "demo"
    (folder / "sticker.png").write_bytes(data)
    with get_engine(demo_settings).begin() as connection:
        asset_id = connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, status) "
                "VALUES ('file', :folder, 'sticker.png', :sha, :size, 'crawled', 'scored') RETURNING id"
            ),
            {"folder": str(folder), "sha": hashlib.sha256(data).hexdigest(), "size": len(data)},
        ).scalar_one()
    response = client.get(f"/api/assets/{asset_id}/thumbnail", params={"size": 128})
    assert response.status_code == 200, response.text
    thumbnail = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    width = thumbnail.shape[1]
    assert (thumbnail[:, : width // 2 - 4] >= 250).all()  # JPEG keeps white within a few levels
    assert thumbnail[:, width // 2 + 4 :].mean() < 200


def test_a_folder_becomes_shown_only_by_configuring_it(client, demo_settings, monkeypatch):
    demo = str(demo_settings.data_dir / "demo")
    asset_id = client.get("/api/assets", params={"scorer": "technical", "limit": 1}).json()["items"][0]["id"]
    monkeypatch.setenv("AESQ_SOURCES", "s3://elsewhere")
    monkeypatch.setenv("AESQ_DATA_DIR", str(demo_settings.data_dir.parent / "other-data"))
    get_settings.cache_clear()
    assert folders_outside_storage(get_settings()) == [demo]
    assert client.get(f"/api/assets/{asset_id}/thumbnail").status_code == 403
    assert f"not shown: {demo} is not in AESQ_SOURCES" in client.get(f"/thumbnails/{asset_id}").text
    monkeypatch.setenv("AESQ_SOURCES", f"s3://elsewhere,{demo}")
    get_settings.cache_clear()
    assert folders_outside_storage(get_settings()) == []
    shown = client.get(f"/thumbnails/{asset_id}")
    assert shown.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(shown.content)).format == "JPEG"


def test_favicon_is_linked_from_every_page_and_served(client):
    for path in ("/", "/gallery", "/failures", "/no-such-page"):
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in client.get(path).text
    for path in ("/static/favicon.svg", "/favicon.ico"):
        icon = client.get(path)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.startswith("<svg")


@pytest.mark.parametrize("value", [0.5, 0.0078125, 0.001, 0.00099, 1.554e-4, 3.2e-7, 1e-300, 0.0, 1.0, None])
def test_p_values_read_as_the_cli_prints_them(value):
    assert p_value(value) == scientific(value)


def test_compare_page_shows_p_values_like_the_cli(client):
    compared = client.get("/api/compare", params={"a": BASE, "b": SFT, "scorer": "technical"}).json()
    page = client.get("/compare", params={"a": BASE, "b": SFT, "scorer": "technical"}).text
    assert f"<th>Mann–Whitney p</th><td>{scientific(compared['mann_whitney_p'])}</td>" in page
    assert f"Wilcoxon p {scientific(compared['paired']['wilcoxon_p'])}," in page


def test_crawled_images_read_crawled_and_no_page_shows_none(client, demo_settings):
    crawled = client.get("/api/assets", params={"scorer": "technical", "source_kind": "crawled"}).json()["items"]
    assert crawled and all(item["generator"] is None for item in crawled)
    pages = {
        path: client.get(path, params=params).text
        for path, params in [
            ("/gallery", {"show": "bottom", "scorer": "technical"}),
            (f"/assets/{crawled[0]['id']}", {}),
            ("/compare", {"a": BASE, "b": SFT, "scorer": "technical"}),
            ("/failures", {}),
            ("/", {}),
            ("/trends", {}),
        ]
    }
    assert pages["/gallery"].count("<figcaption>crawled · ") == len(crawled)
    assert "<tr><th>version</th><td>crawled</td></tr>" in pages[f"/assets/{crawled[0]['id']}"]
    leaks = {
        path: page[page.find("None") - 100 : page.find("None") + 20] for path, page in pages.items() if "None" in page
    }
    assert leaks == {}


def test_failures_page_suggests_retrying_each_reasons_source(client, demo_settings):
    demo = str(demo_settings.data_dir / "demo")
    [source] = demo_settings.sources
    assert source == demo
    for page in (client.get("/failures").text, client.get("/failures", params={"source": demo}).text):
        reasons = page.count('<tr class="failure-reason"')
        assert reasons and page.count(f"<code>aesq retry --source {demo}</code>") == reasons


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/assets", {"scorer": "technical", "limit": 0}, 422, "greater than or equal to 1"),
        ("/api/assets", {"scorer": "technical", "limit": "many"}, 422, "valid integer"),
        ("/api/assets", {}, 422, "scorer"),
        ("/api/assets", {"scorer": "technical", "order": "random"}, 422, "score_desc"),
        ("/api/assets", {"scorer": "technical", "generator": "a\x00b"}, 422, "invalid parameter"),
        ("/api/versions", {"since": "2026-02-30"}, 422, "date"),
        ("/api/versions", {"since": "0"}, 422, "since: Value error, a date is written YYYY-MM-DD"),  # not 1970
        ("/api/assets", {"scorer": "technical", "until": "1700000000"}, 422, "until: Value error, a date is written"),
        ("/api/compare", {"a": "nocolon", "b": BASE, "scorer": "technical"}, 422, "a: must be NAME:VERSION, e.g."),
        (
            "/api/compare",
            {"a": "nobody:1", "b": BASE, "scorer": "technical"},
            404,
            "no technical scores for version 'nobody:1'",
        ),
        ("/api/assets/999999", {}, 404, "no asset 999999"),
        ("/api/assets/abc", {}, 422, "valid integer"),
        ("/api/assets/1/thumbnail", {"size": 100}, 422, "128, 256, 512"),
        ("/api/assets/1/neighbours", {"embedder": "nope"}, 422, "embedder: must be one of efficientnet-lite0"),
        ("/api/assets/1/neighbours", {"embedder": ""}, 422, "embedder: must be one of efficientnet-lite0"),
        ("/api/failures", {"source": "ftp://host/x"}, 422, "source: must be s3://bucket/prefix"),
        ("/api/assets/999999/neighbours", {"embedder": "efficientnet-lite0"}, 404, "no asset 999999"),
    ],
)
def test_invalid_parameters_get_a_4xx_with_a_message(client, path, params, status, message):
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert message in response.text


def test_a_version_label_filters_assets_as_its_generator_and_version_do(client):
    label = {"scorer": "technical", "version": BASE, "limit": 200}
    split = {"scorer": "technical", "generator": "demo-diffusion", "version": "v1.0-base", "limit": 200}
    by_label, by_parts = client.get("/api/assets", params=label).json(), client.get("/api/assets", params=split).json()
    assert by_label["total"] == 8 and by_label == by_parts
    assert {(item["generator"], item["version"]) for item in by_label["items"]} == {("demo-diffusion", "v1.0-base")}
    described = client.get("/openapi.json").json()["paths"]["/api/assets"]["get"]["parameters"]
    meanings = {parameter["name"]: parameter.get("description", "") for parameter in described}
    assert "NAME:VERSION" in meanings["version"] and "first colon" in meanings["version"]
    assert "NAME" in meanings["generator"]


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/versions", {"scorer": "nope"}, "no scorer 'nope' (known: "),
        ("/api/versions", {"generator": "nope"}, "no generator 'nope' (known: demo-diffusion, other-model;"),
        ("/api/trends", {"scorer": "nope"}, "no scorer 'nope' (known: "),
        ("/api/trends", {"scorer": "technical", "generator": "nope"}, "no generator 'nope'"),
        ("/api/assets", {"scorer": "nope"}, "no scorer 'nope' (known: "),
        ("/api/assets", {"scorer": "technical", "generator": "nope"}, "no generator 'nope'"),
        ("/api/assets", {"scorer": "technical", "version": "nope:x"}, "no version 'nope:x' (known: "),
        ("/api/assets", {"scorer": "technical", "version": "demo-diffusion:v9"}, "no version 'demo-diffusion:v9'"),
        ("/api/assets", {"scorer": "technical", "version": "v9"}, "no version 'v9' (known: "),
        (
            "/api/assets",
            {"scorer": "technical", "generator": "demo-diffusion", "version": "v1:x"},
            "no version 'demo-diffusion:v1:x'",
        ),
    ],
)
def test_an_unknown_scorer_generator_or_version_is_a_404_naming_the_known_ones(client, path, params, message):
    response = client.get(path, params=params)
    assert response.status_code == 404 and list(response.json()) == ["detail"], response.text
    detail = response.json()["detail"]
    assert detail.startswith(message) and detail.endswith("; GET /api/options lists them)")
    if "scorer" in message:
        assert "technical" in detail
    if "version" in message:
        assert BASE in detail


def test_an_enabled_scorer_without_statistics_yet_lists_assets_instead_of_a_404(demo_settings, monkeypatch):
    """A scorer that runs but has not been aggregated yet is known, as on the pages (its scores may be on their way)."""
    monkeypatch.setenv("AESQ_SCORERS", "technical,laion-aes-v2")
    get_settings.cache_clear()
    response = TestClient(create_app()).get("/api/assets", params={"scorer": "laion-aes-v2"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] > 0 and {item["value"] for item in page["items"]} == {None}


def test_a_pattern_failure_says_what_the_parameter_must_be_not_the_regex(client):
    compared = client.get("/api/compare", params={"a": "x", "b": "y", "scorer": "technical"})
    label = "must be NAME:VERSION, e.g. demo-diffusion:v1.0-base (GET /api/options lists the versions)"
    assert compared.status_code == 422
    assert compared.json() == {"detail": f"invalid parameter — a: {label}; b: {label}"}
    for params in ({"source": "\x00"}, {"source": "s3://ab/x"}):
        failures = client.get("/api/failures", params=params)
        assert failures.status_code == 422 and failures.json() == {
            "detail": "invalid parameter — source: must be s3://bucket/prefix (a bucket of 3 or more characters) or a"
            " folder, without a NUL character"
        }
    named = client.get("/api/assets", params={"scorer": "a\x00b"}).json()["detail"]
    assert named == "invalid parameter — scorer: must be text without a NUL character"


def test_failures_by_reason_with_examples(client, demo_settings):
    expected = [asdict(reason) for reason in failure_reasons(demo_settings, examples=1)]
    assert expected and client.get("/api/failures", params={"examples": 1}).json() == expected
    demo = str(demo_settings.data_dir / "demo")
    assert client.get("/api/failures", params={"source": demo}).json() == [
        asdict(reason) for reason in failure_reasons(demo_settings, demo)
    ]
    assert client.get("/api/failures", params={"source": str(demo_settings.data_dir / "elsewhere")}).json() == []


def test_openapi_describes_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/versions",
        "/api/compare",
        "/api/assets",
        "/api/assets/{asset_id}",
        "/api/assets/{asset_id}/neighbours",
        "/api/assets/{asset_id}/thumbnail",
        "/api/reports",
        "/api/trends",
        "/api/failures",
    ):
        assert path in paths
    assert not any(path.startswith("/gallery") for path in paths)  # pages are not API


def test_a_configured_token_is_required(demo_settings, monkeypatch):
    monkeypatch.setenv("AESQ_API_TOKEN", "s3cret")
    get_settings.cache_clear()
    client = TestClient(create_app())
    assert client.get("/api/versions").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/versions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/versions", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/login", data={"token": "nope"}).status_code == 401
    assert client.post("/login", data={"token": "s3cret"}).status_code == 200  # redirected to the leaderboard
    assert client.get("/api/versions").status_code == 200  # the cookie now carries it


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/?since=yesterday", 400, "since: not a date"),
        ("/?since=2026-03-02&until=2026-03-01", 400, "the date range is empty"),
        ("/?source_kind=painted", 400, "generated"),
        ("/?scorer=nosuch", 404, "no scorer &#39;nosuch&#39;"),
        ("/?generator=nobody", 404, "no generator &#39;nobody&#39;"),
        ("/gallery?version=nocolon", 400, "NAME:VERSION"),
        ("/gallery?version=nobody:1", 404, "no version &#39;nobody:1&#39;"),
        ("/gallery?offset=-1", 400, "greater than or equal to 0"),
        ("/assets/999999", 404, "no asset 999999"),
        ("/assets/abc", 400, "valid integer"),
        ("/reports/12345", 404, "no report 12345"),
        ("/compare?a=nobody:1&b=demo-diffusion:v1.0-base&scorer=technical", 404, "no version &#39;nobody:1&#39;"),
        ("/compare?version=demo-diffusion:v1.0-base", 400, "pick exactly two versions to compare (1 picked)"),
        ("/trends?scorer=nosuch", 404, "no scorer &#39;nosuch&#39;"),
        ("/failures?source=s3://x", 400, "at least 3 characters"),
        ("/no/such/page", 404, "Not Found"),
        ("/?since=&until=&generator=&source_kind=", 200, "demo-diffusion:v1.0-base"),  # an untouched form
    ],
)
def test_pages_answer_bad_parameters_with_an_html_error_page(client, path, status, message):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text
    assert ('id="error-message"' in response.text) == (status >= 400)  # the dashboard's own page, with its nav


@pytest.mark.parametrize(
    "path", ["/api/no/such", "/api/assets/999999", "/api/assets/abc", "/api/failures?source=s3://x"]
)
def test_the_api_answers_errors_as_json(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422) and response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_a_validation_error_is_one_line_naming_each_parameter(client):
    response = client.get("/api/assets", params={"scorer": "", "limit": 0, "order": "random"})
    assert response.status_code == 422 and list(response.json()) == ["detail"]
    assert response.json()["detail"] == (
        "invalid parameter — scorer: String should have at least 1 character; order: Input should be 'score_desc',"
        " 'score_asc' or 'newest'; limit: Input should be greater than or equal to 1"
    )
    page = client.get("/gallery", params={"offset": -1})  # pages keep their own 400 page
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")


def test_an_empty_date_range_has_no_versions_as_it_has_no_assets(client):
    empty = {"since": "2026-03-02", "until": "2026-03-01"}
    assert client.get("/api/versions", params=empty).json() == []
    assert client.get("/api/assets", params={"scorer": "technical", **empty}).json()["total"] == 0


def test_openapi_documents_every_answer_in_one_error_shape_and_the_parameters_bounds(client):
    document = client.get("/openapi.json").json()
    operations = {path: item["get"] for path, item in document["paths"].items() if path.startswith("/api/")}
    assert len(operations) == 12
    for path, operation in operations.items():
        errors = {status for status, answer in operation["responses"].items() if status >= "400"}
        assert {"400", "401", "422", "429", "500", "503"} <= errors, path
        for status in errors:
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's list-shaped 422 is gone
    error = document["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["detail"] and error["additionalProperties"] == {"type": "string"}
    for path in ("/api/compare", "/api/assets/{asset_id}", "/api/assets/{asset_id}/neighbours"):
        assert "404" in operations[path]["responses"], path
    thumbnail = operations["/api/assets/{asset_id}/thumbnail"]
    assert {"403", "404"} <= set(thumbnail["responses"]) and list(thumbnail["responses"]["200"]["content"]) == [
        "image/jpeg"
    ]
    parameters = {
        (path, parameter["name"]): parameter["schema"]
        for path, operation in operations.items()
        for parameter in operation.get("parameters", [])
    }
    assert parameters[("/api/assets/{asset_id}/thumbnail", "size")]["enum"] == [128, 256, 512]
    assert parameters[("/api/assets/{asset_id}/neighbours", "embedder")]["enum"] == list(EMBEDDING_DIMENSIONS)
    assert (parameters[("/api/assets", "limit")]["minimum"], parameters[("/api/assets", "limit")]["maximum"]) == (
        1,
        200,
    )
    assert parameters[("/api/assets", "offset")]["minimum"] == 0
    assert parameters[("/api/versions", "since")]["anyOf"][0] == {"type": "string", "format": "date"}
    assert parameters[("/api/assets/{asset_id}", "asset_id")]["minimum"] == 1
    bearer = document["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert "security" not in document  # no token configured: nothing to send


def test_with_a_token_openapi_requires_the_bearer_scheme(demo_settings, monkeypatch):
    monkeypatch.setenv("AESQ_API_TOKEN", "s3cret")
    get_settings.cache_clear()
    client = TestClient(create_app())
    assert client.get("/openapi.json").status_code == 401
    document = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    assert document["security"] == [{"bearer": []}]


def test_the_token_checks_answers_carry_the_documented_headers_and_shape(demo_settings, monkeypatch):
    monkeypatch.setenv("AESQ_API_TOKEN", "s3cret")
    monkeypatch.setenv("AESQ_FAILED_TOKEN_LIMIT", "1")
    get_settings.cache_clear()
    client = TestClient(create_app())
    document = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    responses = document["paths"]["/api/versions"]["get"]["responses"]
    refused = client.get("/api/versions", headers={"Authorization": "Bearer wrong"})
    limited = client.get("/api/versions", headers={"Authorization": "Bearer s3cret"})
    for answer, status in ((refused, "401"), (limited, "429")):
        assert str(answer.status_code) == status and isinstance(answer.json()["detail"], str)
        assert {name.lower() for name in responses[status]["headers"]} <= set(answer.headers), status


def test_comparisons_are_kept_until_the_scores_change_and_pages_past_the_end_keep_the_total(client, demo_settings):
    params = {"a": BASE, "b": SFT, "scorer": "technical"}
    first = client.get("/api/compare", params=params).json()
    assert client.get("/api/compare", params=params).json() == first
    with get_engine(demo_settings).begin() as connection:  # a rescored asset of B: a newer, higher score
        connection.execute(sa.text(
            "INSERT INTO scores (asset_id, scorer, scorer_version, value, raw) SELECT a.id, 'technical', 'rescored', 10, '{}' "
            "FROM assets a JOIN generators g ON g.id = a.generator_id WHERE g.version = 'v2.0-sft' ORDER BY a.id LIMIT 1"
        ))  # fmt: skip
    second = client.get("/api/compare", params=params).json()
    assert second["mean_difference"] > first["mean_difference"]
    past = client.get("/api/assets", params={"scorer": "technical", "version": "v1.0-base", "offset": 100}).json()
    assert past["items"] == [] and past["total"] == 8
