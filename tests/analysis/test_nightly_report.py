"""The nightly report's figures, gathered from a real database with known answers: the stored statistics, the
daily means inside the trend window, defect counts, changes against the previous report, and its records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.analysis.aggregate import aggregate_versions
from aesq.analysis.nightly_report import build_report, publish_report, recorded_reports, report_location
from aesq.analysis.statistics import mean_interval
from aesq.analysis.versions import daily_means
from aesq.core.assets import NotFound
from aesq.core.database import get_engine
from aesq.core.pipeline_status import failure_reasons
from tests.helpers import add_scored_assets, ingest_all


@pytest.fixture
def settings(settings, s3_client):
    """The test settings, with the bucket the assets name (their objects are absent: the report shows no thumbnail)."""
    if not s3_client.bucket_exists("bkt"):
        s3_client.make_bucket("bkt")
    return settings


ONE_TO_FORTY = [float(v) for v in range(1, 41)]
THREE_TO_NINE = [float(v) for v in np.linspace(3, 9, 25)]  # 3, 3.25, ..., 9: 17 of them at or above 5


def test_leaderboard_distributions_and_changes_against_the_previous_report(settings):
    add_scored_assets(settings, "1", ONE_TO_FORTY)
    add_scored_assets(settings, "2", THREE_TO_NINE)
    aggregate_versions(settings)

    data, summary = build_report(settings)
    first, second = data.leaderboard
    assert (first.version, first.scorer, first.count) == ("m:1", "technical", 40)
    assert (first.mean, first.median, first.share_above) == pytest.approx((20.5, 20.5, 36 / 40))  # threshold 5.0
    interval = mean_interval(ONE_TO_FORTY)
    assert (first.low, first.high) == pytest.approx((interval.low, interval.high))
    assert (second.version, second.count) == ("m:2", 25)
    assert (second.mean, second.median, second.share_above) == pytest.approx((6.0, 6.0, 17 / 25))
    assert first.change is None and second.change is None
    assert data.changes == ["new: m:1 under technical", "new: m:2 under technical"]
    assert sorted(data.distributions[("m:1", "technical")]) == ONE_TO_FORTY
    assert summary == {"means": {"m:1|technical": 20.5, "m:2|technical": pytest.approx(6.0)}, "versions": 2}

    location, _ = publish_report(settings)
    add_scored_assets(settings, "2", [10.0] * 5, offset=25)
    aggregate_versions(settings)
    data, _ = build_report(settings)
    lines = {line.version: line for line in data.leaderboard}
    assert lines["m:2"].count == 30 and lines["m:2"].mean == pytest.approx((6.0 * 25 + 50) / 30)
    assert lines["m:2"].change == pytest.approx((6.0 * 25 + 50) / 30 - 6.0)
    assert lines["m:1"].change == 0.0
    assert data.changes == ["m:2 under technical: mean +0.67"]

    [record] = recorded_reports(settings)
    assert record["location"] == location and report_location(settings, record["id"]) == location
    with pytest.raises(NotFound):
        report_location(settings, record["id"] + 1)


def test_trends_keep_the_stored_days_inside_the_window_and_defects_count_scored_assets(settings):
    ids = add_scored_assets(settings, "1", ONE_TO_FORTY)
    old, failed = ids[:10], ids[10]
    with get_engine(settings).begin() as connection:
        connection.execute(
            sa.text("UPDATE assets SET scored_at = now() - interval '20 days' WHERE id = ANY(:ids)"), {"ids": old}
        )
        connection.execute(
            sa.text("INSERT INTO defects (asset_id, category, severity) VALUES (:a, :c, 0.5)"),
            [
                {"a": ids[20], "c": "blur"},
                {"a": ids[21], "c": "blur"},
                {"a": ids[21], "c": "noise"},
                {"a": old[0], "c": "blur"},
                {"a": failed, "c": "noise"},
            ],
        )
        connection.execute(sa.text("UPDATE assets SET status = 'failed' WHERE id = :id"), {"id": failed})
    aggregate_versions(settings)
    now = datetime.now(UTC)

    data, _ = build_report(settings, now)
    today = now.date()
    assert data.trends == {("m:1", "technical"): [(today, pytest.approx(np.mean(ONE_TO_FORTY[11:])), 29)]}
    every_day = daily_means(settings, "technical")["m:1"]  # the 20-day-old scores are stored, outside the window
    assert [(day, count) for day, _, count in every_day] == [(today - timedelta(days=20), 10), (today, 29)]
    assert data.defects == {"m:1": {"blur": 3, "noise": 1}}  # the failed asset's defect does not count
    assert data.leaderboard[0].count == 39


def test_failed_images_are_in_the_report_by_reason(settings, tmp_path):
    folder = tmp_path / "source" / "generated" / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "blank.png").write_bytes(b"")
    ingest_all(str(tmp_path / "source"), settings)

    data, _ = build_report(settings)
    assert data.failures == failure_reasons(settings)
    assert [(reason.count, len(reason.examples)) for reason in data.failures] == [(2, 2), (1, 1)]
    assert {example.location.rsplit("/", 1)[1] for reason in data.failures for example in reason.examples} == {
        "notes.jpg", "empty.jpg", "blank.png"
    }  # fmt: skip
