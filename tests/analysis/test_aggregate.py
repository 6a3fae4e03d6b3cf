"""Per-version statistics against the real database: the figures, their interval, days, and incremental runs."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.analysis.aggregate import aggregate_versions
from aesq.analysis.statistics import mean_interval
from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.provenance import GeneratorRef, Provenance
from aesq.core.writes import AssetRecord, upsert_assets
from tests.helpers import add_scored_assets, assert_statistics_match_rows

FACTS = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)
VALUES = {"1": [float(v) for v in range(1, 41)], "2": [float(v) for v in np.linspace(3, 9, 25)]}


def _stats(settings) -> dict[str, sa.Row]:
    query = "SELECT g.version, v.* FROM version_stats v JOIN generators g ON g.id = v.generator_id"
    with get_engine(settings).connect() as connection:
        return {row.version: row for row in connection.execute(sa.text(query))}


def test_figures_interval_days_and_incremental_runs(settings):
    for version, values in VALUES.items():
        add_scored_assets(settings, version, values)
    assert aggregate_versions(settings) == 2
    stats = _stats(settings)
    for version, values in VALUES.items():
        row, scores = stats[version], np.array(values)
        assert row.count == len(values)
        assert (row.mean, row.std, row.median, row.p10, row.p90) == pytest.approx(
            (scores.mean(), scores.std(ddof=1), np.median(scores), *np.percentile(scores, [10, 90]))
        )
        assert (row.threshold, row.share_above) == pytest.approx((5.0, np.mean(scores >= 5.0)))
        interval = mean_interval(values)  # the values were written in asset order, the order the aggregate reads
        assert (row.mean_low, row.mean_high) == pytest.approx((interval.low, interval.high))
        assert row.mean_low < row.mean < row.mean_high
    with get_engine(settings).connect() as connection:
        days = connection.execute(sa.text("SELECT scorer, count, mean FROM version_daily_stats ORDER BY count")).all()
    assert [(d.count, round(d.mean, 6)) for d in days] == [(25, 6.0), (40, 20.5)]

    assert aggregate_versions(settings) == 0  # nothing new: nothing recomputed
    assert _stats(settings)["1"].computed_at == stats["1"].computed_at

    add_scored_assets(settings, "2", [100.0], offset=100)
    assert aggregate_versions(settings) == 1  # only version 2 received a score
    after = _stats(settings)
    assert after["1"].computed_at == stats["1"].computed_at and after["2"].count == 26
    assert after["2"].mean == pytest.approx(np.mean(VALUES["2"] + [100.0]))


def test_a_score_committed_while_the_aggregate_runs_is_counted_by_the_next_run(settings):
    add_scored_assets(settings, "1", [1.0, 2.0])
    assert aggregate_versions(settings) == 1
    generator = GeneratorRef("m", "1")
    with get_engine(settings).begin() as connection:
        ids = upsert_assets(
            connection,
            [
                AssetRecord(
                    "s3",
                    "bkt",
                    "1/late.png",
                    "late",
                    None,
                    10,
                    FACTS,
                    Provenance("generated", generator, "p", 9, {}),
                    None,
                )
            ],
        )

    # The late asset's scoring transaction is open (its queue row invisible) while an aggregate runs; the
    # old clock watermark (computed_at = now() > the score's created_at) never counted it.
    engine = get_engine(settings)
    scoring_transaction = engine.connect()
    with scoring_transaction.begin():
        scoring_transaction.execute(
            sa.text("INSERT INTO scores (asset_id, scorer, scorer_version, value) VALUES (:id, 'technical', '1', 5)"),
            {"id": ids[0]},
        )
        scoring_transaction.execute(
            sa.text("UPDATE assets SET status = 'scored', scored_at = now() WHERE id = :id"), {"id": ids[0]}
        )
        add_scored_assets(settings, "1", [3.0], offset=10)  # another batch of the version commits meanwhile
        assert aggregate_versions(settings) == 1
    scoring_transaction.close()
    aggregate_versions(settings)
    assert_statistics_match_rows(settings)
    assert _stats(settings)["1"].count == 4 and _stats(settings)["1"].mean == pytest.approx(11 / 4)
