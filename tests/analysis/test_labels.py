"""Benchmarks against human labels: statistics with known answers, label-file validation, the command end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from aesq.analysis.labels import Label, LabelError, Pair, label_report, labelled_pairs, read_labels
from aesq.cli.main import _one_line, app
from aesq.core import database
from aesq.core.config import ConfigurationError, get_settings
from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.namespaces import namespace_settings, prepare_namespace
from aesq.core.pipeline_status import Failure
from aesq.core.provenance import Provenance
from aesq.core.tables import Asset
from aesq.core.writes import AssetRecord, ScoreValue, upsert_assets, write_scores
from tests.helpers import noise_image, photo, run_once


def _pairs(predicted, human, categories=None) -> list[Pair]:
    """Pairs from parallel sequences."""
    categories = categories if categories is not None else [None] * len(human)
    return [Pair(float(p), float(h), c) for p, h, c in zip(predicted, human, categories, strict=True)]


def test_a_monotone_prediction_has_srcc_one_and_a_linear_one_plcc_one_and_no_bias():
    human = np.linspace(1, 9, 30)
    monotone = label_report(_pairs(np.exp(human), human), n_resamples=200)
    assert monotone.srcc.value == pytest.approx(1.0)
    assert monotone.plcc.value < 0.95  # exp is monotone but far from linear

    categories = ["photo", "anime", "monochrome"] * 10
    linear = label_report(_pairs(2 * human + 1, human, categories), n_resamples=200)
    assert linear.plcc.value == pytest.approx(1.0)
    assert (linear.slope, linear.intercept) == (pytest.approx(0.5), pytest.approx(-0.5))
    assert [row.category for row in linear.categories] == ["anime", "monochrome", "photo"]
    for row in linear.categories:
        assert row.count == 10 and row.srcc == pytest.approx(1.0) and row.bias == pytest.approx(0.0, abs=1e-9)


def test_a_category_scored_c_too_high_shows_a_bias_of_about_c():
    rng = np.random.default_rng(3)
    human = rng.uniform(0, 10, 60)
    categories = ["anime" if index % 10 == 0 else "photo" for index in range(60)]
    shift = 1.5
    predicted = human + rng.normal(0, 0.1, 60) + np.where(np.array(categories) == "anime", shift, 0.0)
    rows = {row.category: row for row in label_report(_pairs(predicted, human, categories), n_resamples=200).categories}
    assert rows["anime"].bias - rows["photo"].bias == pytest.approx(shift, abs=0.15)
    assert rows["anime"].bias > 0.8 * shift and rows["photo"].bias < 0


def test_bootstrap_intervals_contain_the_estimates_and_follow_the_seed():
    rng = np.random.default_rng(7)
    human = rng.uniform(0, 10, 40)
    pairs = _pairs(human + rng.normal(0, 2, 40), human)
    report = label_report(pairs, n_resamples=500, seed=1)
    for estimate in (report.srcc, report.plcc):
        assert estimate.low < estimate.value < estimate.high
        assert estimate.high - estimate.low > 0.02
    assert label_report(pairs, n_resamples=500, seed=1) == report
    assert label_report(pairs, n_resamples=500, seed=2).srcc.low != report.srcc.low


def test_too_few_or_constant_samples_give_no_statistic_and_a_note():
    two = label_report(_pairs([1, 2], [3, 4]))
    assert two.srcc.value is None and two.plcc.value is None and two.slope is None
    assert "at least 3" in two.notes[0]

    flat = label_report(_pairs([5, 5, 5, 5], [1, 2, 3, 4]))
    assert flat.srcc.value is None and "all equal" in flat.notes[0]

    human = [1, 2, 3, 4, 5, 6, 7, 8]
    categories = ["a", "a", "a", "b", "b", "c", "c", "c"]
    predicted = [1, 2, 3, 4, 5, 6, 6, 6]  # "c" is predicted constant
    report = label_report(_pairs(predicted, human, categories), n_resamples=200)
    rows = {row.category: row for row in report.categories}
    assert rows["a"].srcc == pytest.approx(1.0) and rows["a"].bias is not None
    assert (rows["b"].count, rows["b"].srcc, rows["b"].bias) == (2, None, None)
    assert rows["c"].srcc is None and rows["c"].bias is not None
    assert any("fewer than 3 images" in note and "b" in note for note in report.notes)
    assert any("SRCC undefined" in note and "c" in note for note in report.notes)


def _write_set(folder, entries, name="test.json") -> None:
    """A label file with the given entries and a few real images."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for index in range(3):
        photo("astronaut").resize((64, 64)).save(folder / "img" / f"{index}.png")
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(entries))


def test_labels_are_read_from_test_json_or_test_subfolder(tmp_path):
    entries = [{"image": "img/0.png", "gt_score": 7, "category": "photo"}, {"image": "./img/1.png", "gt_score": 2.5}]
    _write_set(tmp_path / "flat", entries)
    _write_set(tmp_path / "nested", entries, name="test/test.json")
    expected = [Label("img/0.png", 7.0, "photo"), Label("img/1.png", 2.5, None)]
    assert read_labels(tmp_path / "flat") == expected
    assert read_labels(tmp_path / "nested") == expected


@pytest.mark.parametrize(
    ("content", "messages"),
    [
        (None, ["no label file (test.json or test/test.json)"]),
        ("{not json", ["not valid JSON"]),
        ({"image": "img/0.png", "gt_score": 1}, ["expected a JSON list of labels, got dict"]),
        ([], ["no labels"]),
        (
            [{"image": "img/0.png", "gt_score": 1}, {"gt_score": 2}, {"image": "img/1.png"}, "img/2.png"],
            ["3 bad entries", "entry 1: missing image", "entry 2: missing gt_score", "entry 3: not an object"],
        ),
        (
            [
                {"image": "img/0.png", "gt_score": "7"},
                {"image": "img/1.png", "gt_score": True},
                {"image": "img/2.png", "gt_score": float("nan")},
                {"image": "img/2.png", "gt_score": 1, "category": 3},
            ],
            [
                "entry 0: gt_score '7' is not a finite number",
                "entry 1: gt_score True",
                "entry 2: gt_score nan",
                "entry 3: category 3 is not text",
            ],
        ),
        (
            [
                {"image": "../outside.png", "gt_score": 1},
                {"image": "/etc/hostname", "gt_score": 1},
                {"image": "img/9.png", "gt_score": 1},
                {"image": "img/0.png", "gt_score": 1},
            ],
            [
                "3 bad entries",
                "entry 0: image '../outside.png' is outside",
                "entry 1: image '/etc/hostname' is outside",
                "entry 2: image 'img/9.png' does not exist",
            ],
        ),
        (
            [{"image": "img/0.png", "gt_score": 1}, {"image": "img/./0.png", "gt_score": 2}],
            ["entry 1: image 'img/0.png' repeats entry 0"],
        ),
    ],
)
def test_bad_label_files_say_which_entries_are_wrong(tmp_path, content, messages):
    folder = tmp_path / "set"
    _write_set(folder, [])
    (tmp_path / "outside.png").write_bytes((folder / "img" / "0.png").read_bytes())
    if content is None:
        (folder / "test.json").unlink()
    else:
        (folder / "test.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(LabelError) as raised:
        read_labels(folder)
    for message in messages:
        assert message in str(raised.value)


def test_the_command_reports_a_bad_label_file_as_one_error(tmp_path):
    _write_set(tmp_path, [{"image": "img/0.png", "gt_score": "high"}])
    result = CliRunner().invoke(app, ["bench", "labels", "--data", str(tmp_path), "--scorer", "technical"])
    assert result.exit_code == 1 and "entry 0: gt_score 'high'" in str(result.exception)


def _degraded(image: Image.Image, level: int) -> Image.Image:
    """The image blurred and noised more at each level (0 = clean)."""
    blurred = image.filter(ImageFilter.GaussianBlur((0, 1.0, 2.0, 3.5)[level]))
    noise = np.random.default_rng(level).normal(0, (0, 4, 10, 20)[level], (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(blurred, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _labelled_set(folder) -> None:
    """Three photographs at four degradation levels (cleaner = higher human score), a copy and a broken file."""
    entries = []
    for name in ("astronaut", "coffee", "chelsea"):
        for level in range(4):
            key = f"images/{name}-{level}.png"
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            _degraded(photo(name), level).save(folder / key)
            entries.append({"image": key, "gt_score": 9.0 - 2 * level, "category": name})
    shutil.copy(folder / "images/astronaut-0.png", folder / "images/astronaut-copy.png")
    entries.append({"image": "images/astronaut-copy.png", "gt_score": 9.0, "category": "astronaut"})
    (folder / "images/broken.png").write_bytes((folder / "images/coffee-0.png").read_bytes()[:3000])
    entries.append({"image": "images/broken.png", "gt_score": 5.0, "category": "coffee"})
    (folder / "test.json").write_text(json.dumps(entries))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_bench_labels_scores_the_set_through_the_flows(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("AESQ_SCORERS", "")  # the command enables the named scorer for its run
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    get_settings.cache_clear()
    folder = tmp_path / "eria"
    _labelled_set(folder)
    result = CliRunner().invoke(
        app,
        ["bench", "labels", "--data", str(folder), "--scorer", "technical", "--bootstrap", "500"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    output = result.output
    assert "excluded 1 of 14 labelled images" in output and "images/broken.png" in output
    assert "technical against human scores: 13 images" in output
    srcc = re.search(r"│ SRCC\s+│\s+(-?[\d.]+)\s+│\s+\[(-?[\d.]+), (-?[\d.]+)\]", output)
    assert srcc, output
    value, low, high = map(float, srcc.groups())
    assert value > 0.8 and low <= value <= high
    categories = output[output.index("per category") :]
    for name, count in (("astronaut", 5), ("chelsea", 4), ("coffee", 4)):
        row = re.search(rf"│ {name}\s+│\s+(\d+)\s+│\s+(-?[\d.]+)\s+│\s+([+-][\d.]+)", categories)
        assert row and int(row.group(1)) == count and float(row.group(2)) > 0.5, categories
    assert "nan" not in output.lower()
    assert os.environ["AESQ_SCORERS"] == ""  # the run's scorer setting is not left behind


def _production_view(settings, folder) -> dict:
    """Everything production shows of its data: asset lists (core and API), version figures, the nightly
    report's figures and the export manifest."""
    from fastapi.testclient import TestClient

    from aesq.analysis.export import export_manifest
    from aesq.analysis.nightly_report import build_report
    from aesq.analysis.versions import defect_shares, leaderboard, version_statistics
    from aesq.core.assets import AssetFilter, list_assets
    from aesq.web.app import create_app

    client = TestClient(create_app())
    api_assets = client.get("/api/assets", params={"scorer": "technical", "limit": 200})
    api_versions = client.get("/api/versions", params={"scorer": "technical"})
    assert api_assets.status_code == api_versions.status_code == 200
    manifest = export_manifest(settings, folder / f"manifest-{uuid.uuid4().hex}.jsonl", "technical").path
    report, _ = build_report(settings, now=datetime(2026, 11, 30, tzinfo=UTC))
    return {
        "assets": list_assets(settings, AssetFilter(scorer="technical"), limit=200),
        "api assets": api_assets.json(),
        "api versions": api_versions.json(),
        "statistics": version_statistics(settings),
        "leaderboard": leaderboard(settings, "technical"),
        "defect shares": defect_shares(settings),
        "report": (report.leaderboard, report.distributions, report.trends, report.defects, report.best),
        "export": [json.loads(line) for line in manifest.read_text().splitlines()],
    }


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_labelled_set_is_scored_in_its_own_database_and_never_reaches_production(
    settings, empty_database_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)  # a fresh server database: no labels one yet
    monkeypatch.setenv("AESQ_SCORERS", "technical")
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    get_settings.cache_clear()
    production = get_settings()
    database.upgrade(settings=production)
    # Production: version m:1, one of whose images is also in the labelled set, byte for byte.
    source = tmp_path / "production"
    shared = tmp_path / "shared.png"
    _degraded(photo("coffee"), 1).save(shared)
    for index in range(4):
        (source / "generated/m/1").mkdir(parents=True, exist_ok=True)
        _degraded(photo("chelsea"), index).save(source / f"generated/m/1/{index}.png")
    shutil.copy(shared, source / "generated/m/1/shared.png")
    run_once(str(source), production)
    # The labelled set's images are laid out as generated by the same version m:1.
    folder = tmp_path / "eria"
    (folder / "generated/m/1").mkdir(parents=True)
    entries = []
    for level in range(4):
        _degraded(photo("astronaut"), level).save(folder / f"generated/m/1/astronaut-{level}.png")
        entries.append({"image": f"generated/m/1/astronaut-{level}.png", "gt_score": 9.0 - 2 * level})
    shutil.copy(shared, folder / "generated/m/1/coffee.png")
    entries.append({"image": "generated/m/1/coffee.png", "gt_score": 7.0})
    (folder / "test.json").write_text(json.dumps(entries))
    before = _production_view(production, tmp_path)
    assert len(before["assets"][0]) == 5 and before["statistics"] and before["export"]  # there is something to see

    result = CliRunner().invoke(
        app,
        ["bench", "labels", "--data", str(folder), "--scorer", "technical", "--bootstrap", "200"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "technical against human scores: 5 images" in result.output  # the shared image scored in both
    assert "excluded" not in result.output

    after = _production_view(production, tmp_path)
    for view, shown in before.items():
        assert after[view] == shown, view
    labels_url = sa.engine.make_url(namespace_settings(production, "labels").database_url)
    assert labels_url.database == sa.engine.make_url(empty_database_url).database + "_labels"
    query = "SELECT bucket, key, status, duplicate_of FROM assets ORDER BY bucket, key"
    with get_engine(production).connect() as connection:
        in_production = connection.execute(sa.text(query)).all()
    with database.engine(labels_url.render_as_string(hide_password=False)).connect() as connection:
        in_labels = connection.execute(sa.text(query)).all()
    assert {row.bucket for row in in_production} == {str(source.resolve())}
    assert {row.bucket for row in in_labels} == {str(folder.resolve())}
    assert len(in_production) == 5 and len(in_labels) == 5
    # The same bytes are two assets, each scored in its own namespace, neither a duplicate of the other.
    for rows, key in ((in_production, "generated/m/1/shared.png"), (in_labels, "generated/m/1/coffee.png")):
        row = next(row for row in rows if row.key == key)
        assert (row.status, row.duplicate_of) == ("scored", None)


def test_bench_forget_removes_only_the_images_its_label_file_names_and_never_a_configured_source(
    settings, tmp_path, monkeypatch
):
    monkeypatch.setenv("AESQ_SCORERS", "technical")
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    # A production folder where someone labelled some images in place: six labelled, one not.
    folder = tmp_path / "production"
    (folder / "images").mkdir(parents=True)
    for level in range(7):
        noise_image(level).save(folder / f"images/rocket-{level}.png")
    labelled = [f"images/rocket-{level}.png" for level in range(6)]
    (folder / "test.json").write_text(json.dumps([{"image": key, "gt_score": 5} for key in labelled]))
    get_settings.cache_clear()
    run_once(str(folder), get_settings())  # as `aesq bench labels` (or production) ran it before the labels namespace
    keys = "SELECT key FROM assets WHERE bucket = :folder ORDER BY key"

    def in_production() -> list[str]:
        with get_engine(settings).connect() as connection:
            return connection.execute(sa.text(keys), {"folder": str(folder.resolve())}).scalars().all()

    def forget(*options: str) -> str:
        result = CliRunner().invoke(app, ["bench", "forget", "--data", str(folder), *options], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    monkeypatch.setenv("AESQ_SOURCES", str(folder))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["bench", "forget", "--data", str(folder), "--yes"])
    refused = _one_line(result.exception)  # what `aesq` prints, with exit status 1
    assert result.exit_code == 1 and isinstance(result.exception, ConfigurationError), result.output
    assert f"is or overlaps the configured source {folder.resolve()} (AESQ_SOURCES)" in refused, refused
    assert "nothing was removed" in refused and len(in_production()) == 7
    monkeypatch.delenv("AESQ_SOURCES")
    get_settings.cache_clear()

    found = f"6 labelled assets under {folder.resolve()} in production (6 scored)"
    sample = ", ".join(labelled[:5])
    assert forget() == f"{found}: {sample}, … 1 more; run again with --yes to remove them"
    assert len(in_production()) == 7
    assert forget("--yes") == f"removed {found}"
    assert in_production() == ["images/rocket-6.png"]  # not in the label file: still production's
    assert forget("--yes") == f"no labelled assets under {folder.resolve()} in production"
    assert in_production() == ["images/rocket-6.png"]


def test_a_failed_labelled_image_is_excluded_even_while_it_keeps_its_score(settings, empty_database_url, tmp_path):
    """An image scored, then failed (its sidecar broke), still holds its content's score: it is excluded with its
    reason, never a pair."""
    production = settings.model_copy(update={"database_url": empty_database_url})
    folder = tmp_path / "set"
    facts = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)
    crawled = Provenance("crawled", None, None, None, {})
    records = [
        AssetRecord("file", str(folder.resolve()), key, f"sha-{key}", None, 10, facts, crawled, None)
        for key in ("good.png", "broken.png")
    ]
    with get_engine(prepare_namespace(production, "labels")).begin() as connection:
        ids = upsert_assets(connection, records)
        write_scores(connection, [ScoreValue(asset_id, "technical", "1", 5.0, {}) for asset_id in ids])
        connection.execute(sa.update(Asset).values(status="scored", scored_at=sa.func.now()))
        connection.execute(
            sa.update(Asset).where(Asset.key == "broken.png").values(status="failed", error="sidecar: not JSON")
        )

    labels = [Label("good.png", 7.0, None), Label("broken.png", 3.0, None)]
    pairs, excluded = labelled_pairs(production, folder, labels, "technical")
    assert pairs == [Pair(5.0, 7.0, None)]
    assert excluded == [Failure("broken.png", "sidecar: not JSON")]
