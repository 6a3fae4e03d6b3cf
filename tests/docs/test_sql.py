"""Every query in docs/sql.md runs on a migrated database with seeded data and returns what the seed implies.

The expectations are computed here in Python from the seed, independently of the SQL they check.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.core import database
from aesq.core.config import Settings
from tests.helpers import (
    SQL_ASSETS,
    SQL_CRITIQUES,
    SQL_DEFECTS,
    SQL_EMBEDDINGS,
    SQL_GENERATORS,
    SQL_LAION,
    SQL_SCORED,
    SQL_VERSION,
    SqlExampleAsset,
    seed_sql_examples,
    sparse_vector,
    sql_example_daily,
    sql_example_key,
    sql_example_scored,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
STABLE_VIEWS = (
    "asset_overview",
    "asset_scores",
    "version_summary",
    "version_daily",
    "asset_defects",
    "version_defect_shares",
    "asset_critiques",
)


def doc_queries() -> list[tuple[str, str]]:
    """(heading, query) of every ```sql block in docs/sql.md, in order."""
    queries, heading, block = [], "", None
    for line in DOC.read_text().splitlines():
        if block is not None:
            if line.startswith("```"):
                queries.append((heading, "\n".join(block)))
                block = None
            else:
                block.append(line)
        elif line.startswith("```sql"):
            block = []
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return queries


def documented_view_columns() -> dict[str, list[str]]:
    """The columns docs/sql.md lists for each stable view, in order."""
    section = DOC.read_text().split("## Stable views", 1)[1].split("\n## ", 1)[0]
    columns = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            columns[cells[0].strip("`")] = re.findall(r"`(\w+)`", cells[2])
    return columns


Check = Callable[[list[tuple], date], None]
CHECKS: dict[str, Check] = {}


def check(heading: str) -> Callable[[Check], Check]:
    """Register the check of the query under `heading`."""

    def register(function: Check) -> Check:
        CHECKS[heading] = function
        return function

    return register


def rounded(row: tuple) -> tuple:
    """Floats rounded, so rows computed in SQL and Python compare exactly."""
    return tuple(round(value, 6) if isinstance(value, float) else value for value in row)


def table(rows: list[tuple]) -> list[tuple]:
    """Result rows with floats rounded."""
    return [rounded(tuple(float(v) if hasattr(v, "is_finite") else v for v in row)) for row in rows]


@check("Leaderboard: versions ranked by mean score")
def _leaderboard(rows: list[tuple], today: date) -> None:
    means = {gid: statistics.mean(a.technical for a in sql_example_scored(gid)) for gid in SQL_GENERATORS}
    expected = [
        rounded(
            (
                "sdxl",
                SQL_VERSION[gid],
                len(sql_example_scored(gid)),
                means[gid],
                means[gid] - 1,
                means[gid] + 1,
                statistics.mean(a.technical >= 5 for a in sql_example_scored(gid)),
            )
        )
        for gid in sorted(means, key=means.get, reverse=True)
    ]
    assert table(rows) == expected
    assert [row[1] for row in rows] == ["1.1", "1.0"]


@check("Top-k images per version")
def _top_k(rows: list[tuple], today: date) -> None:
    expected = []
    for gid in SQL_GENERATORS:
        best = sorted(sql_example_scored(gid), key=lambda a: (-a.technical, a.id))[:2]
        expected += [("sdxl", SQL_VERSION[gid], a.id, "images", sql_example_key(a), a.technical) for a in best]
    assert table(rows) == expected
    assert [row[2] for row in rows] == [4, 2, 12, 9]  # asset 1's stale 9.5 does not count


@check("Mean per version per day")
def _daily(rows: list[tuple], today: date) -> None:
    expected = sorted(
        rounded((today.toordinal() - ago, "sdxl", SQL_VERSION[gid], n, mean))
        for gid, ago, n, mean in sql_example_daily()
        if ago <= 30
    )
    assert [(day.toordinal(), *rest) for day, *rest in table(rows)] == expected
    assert len(expected) == len(sql_example_daily()) - 1


@check("Versions whose share of a defect rose")
def _rising(rows: list[tuple], today: date) -> None:
    categories = sorted({category for _, category in SQL_DEFECTS})
    expected = []
    for gid in SQL_GENERATORS:
        previous = [a for a in sql_example_scored(gid) if 7 <= a.days_ago < 14]
        recent = [a for a in sql_example_scored(gid) if a.days_ago < 7]
        for category in categories:
            before, now = (
                statistics.mean((a.id, category) in SQL_DEFECTS for a in group) for group in (previous, recent)
            )
            if now > before:
                expected.append(("sdxl", SQL_VERSION[gid], category, float(before), float(now)))
    expected.sort(key=lambda row: (row[3] - row[4], row[:3]))
    assert table(rows) == [rounded(row) for row in expected]
    assert [row[1:3] for row in rows] == [("1.0", "blur"), ("1.1", "noise")]


@check("Nearest neighbours of an asset")
def _neighbours(rows: list[tuple], today: date) -> None:
    unit = {
        asset_id: sparse_vector(parts, 1280) / np.linalg.norm(list(parts.values()))
        for asset_id, parts in SQL_EMBEDDINGS.items()
    }
    distances = {asset_id: 1 - float(unit[asset_id] @ unit[1]) for asset_id in unit if asset_id != 1}
    order = sorted(distances, key=distances.get)
    assert [row[0] for row in rows] == order == [2, 3, 4, 5]
    assert [row[4] for row in rows] == pytest.approx([distances[i] for i in order], abs=2e-3)
    assert [row[1:4] for row in rows] == [("sdxl", "1.0", sql_example_key(SQL_ASSETS[i - 1])) for i in order]


@check("Assets scored by one scorer but not another")
def _scored_by_one(rows: list[tuple], today: date) -> None:
    assert (
        [row[0] for row in rows] == sorted(a.id for a in SQL_SCORED if a.id not in SQL_LAION) == [*range(5, 14), 17, 18]
    )
    assert rows[8][1:3] == (None, None)  # the crawled asset


@check("Defect breakdown per version")
def _breakdown(rows: list[tuple], today: date) -> None:
    categories = {category for _, category in SQL_DEFECTS}  # critiques are no defect category
    expected = []
    for gid in SQL_GENERATORS:
        scored = sql_example_scored(gid)
        for category in categories:
            found = sum((a.id, category) in SQL_DEFECTS for a in scored)
            expected.append(("sdxl", SQL_VERSION[gid], category, found, len(scored), found / len(scored)))
    expected.sort(key=lambda row: (row[1], -row[5], row[2]))
    assert table(rows) == [rounded(row) for row in expected]
    assert ("sdxl", "1.1", "blur", 1, 7, round(1 / 7, 6)) in table(rows)  # the crawled blur is no version's
    assert ("sdxl", "1.0", "compression", 0, 7, 0.0) in table(rows)  # seen only on a crawled image


@check("Score histogram per version")
def _histogram(rows: list[tuple], today: date) -> None:
    counts = Counter((SQL_VERSION[a.generator_id], int(a.technical // 2) + 1) for a in SQL_SCORED if a.generator_id)
    expected = [
        ("sdxl", version, bucket, (bucket - 1) * 2, bucket * 2, n) for (version, bucket), n in sorted(counts.items())
    ]
    assert table(rows) == expected
    assert sum(row[5] for row in rows) == 14


def pairs() -> list[tuple[SqlExampleAsset, SqlExampleAsset]]:
    """(1.0 asset, 1.1 asset) rendered from the same prompt and seed."""
    return [
        (a, b) for a in sql_example_scored(1) for b in sql_example_scored(2) if (a.prompt, a.seed) == (b.prompt, b.seed)
    ]


@check("Paired comparison: two versions on the same prompt and seed")
def _paired(rows: list[tuple], today: date) -> None:
    expected = sorted(
        ((a.prompt, a.seed, a.id, b.id, a.technical, b.technical, b.technical - a.technical) for a, b in pairs()),
        key=lambda row: (-row[6], row[0], row[1]),
    )
    assert table(rows) == [rounded(row) for row in expected]
    assert len(rows) == 6  # 'a house' seed 3 has no 1.0 counterpart, 'a tree' seed 1 no scores


@check("Paired comparison summary")
def _paired_summary(rows: list[tuple], today: date) -> None:
    differences = [b.technical - a.technical for a, b in pairs()]
    assert table(rows) == [
        rounded(
            (
                len(differences),
                statistics.mean(differences),
                sum(d > 0 for d in differences),
                sum(d < 0 for d in differences),
                sum(d == 0 for d in differences),
            )
        )
    ]
    assert rows[0][2:] == (3, 2, 1)


@check("Low scorers with their critique")
def _critiques(rows: list[tuple], today: date) -> None:
    low = sorted(
        (a for a in SQL_SCORED if a.technical < 3 and a.id in SQL_CRITIQUES), key=lambda a: (a.technical, a.id)
    )
    expected = [
        (
            a.id,
            SQL_VERSION[a.generator_id],
            a.technical,
            SQL_CRITIQUES[a.id]["critic"],
            SQL_CRITIQUES[a.id]["score"],
            aspect,
            text,
        )
        for a in low
        for aspect, text in sorted(SQL_CRITIQUES[a.id]["aspects"].items())
    ]
    assert table(rows) == expected
    assert {row[0] for row in rows} == {5, 11}  # asset 3 scores exactly 3


@check("Failed assets with their error")
def _failed(rows: list[tuple], today: date) -> None:
    failed = [a for a in SQL_ASSETS if a.status == "failed"]
    assert [row[:6] for row in rows] == [
        (
            a.id,
            "images",
            sql_example_key(a),
            "sdxl" if a.generator_id else None,
            SQL_VERSION.get(a.generator_id),
            a.error,
        )
        for a in failed
    ]
    assert [row[0] for row in rows] == [14, 15]


@check("Versions against their parent")
def _parent(rows: list[tuple], today: date) -> None:
    mean = {gid: statistics.mean(a.technical for a in sql_example_scored(gid)) for gid in SQL_GENERATORS}
    assert table(rows) == [rounded(("sdxl", "1.1", "1.0", mean[2], mean[1], mean[2] - mean[1]))]


@check("Agreement of two scorers")
def _agreement(rows: list[tuple], today: date) -> None:
    both = [a for a in SQL_SCORED if a.id in SQL_LAION]
    expected = statistics.correlation([a.technical for a in both], [SQL_LAION[a.id] for a in both])
    assert table(rows) == [rounded(("sdxl", "1.0", len(both), expected))]


@check("Assets per version and status")
def _status(rows: list[tuple], today: date) -> None:
    counts = Counter(
        (f"sdxl {SQL_VERSION[a.generator_id]}" if a.generator_id else "(crawled)", a.status) for a in SQL_ASSETS
    )
    assert table(rows) == [(*key, n) for key, n in sorted(counts.items())]
    assert ("sdxl 1.1", "failed", 1) in rows


def statements(query: str) -> tuple[list[str], str]:
    """A documented block's settings (SET LOCAL ..., in the test's own transaction: BEGIN and COMMIT left out)
    and its one query."""
    parts = [part.strip() for part in query.split(";") if part.strip() not in ("", "BEGIN", "COMMIT")]
    return parts[:-1], parts[-1]


QUERIES = doc_queries()


def test_every_documented_query_has_a_check():
    """At least ten queries, one per heading, and a check for each (and no check without its query)."""
    headings = [heading for heading, _ in QUERIES]
    assert len(QUERIES) >= 10
    assert len(set(headings)) == len(headings)
    assert set(headings) == set(CHECKS)


@pytest.mark.parametrize(("heading", "query"), QUERIES, ids=[heading for heading, _ in QUERIES])
def test_documented_query(heading: str, query: str, settings: Settings) -> None:
    """The query runs on the seeded database and returns what the seed implies."""
    seed_sql_examples(settings)
    session_settings, statement = statements(query)
    with database.get_engine(settings).connect() as connection:
        today = connection.execute(sa.text("SELECT current_date")).scalar_one()
        for setting in session_settings:
            connection.exec_driver_sql(setting)
        rows = [tuple(row) for row in connection.exec_driver_sql(statement)]
    CHECKS[heading](rows, today)


def test_views_have_the_documented_columns(settings: Settings) -> None:
    """The stable views exist with exactly the columns docs/sql.md lists, in that order."""
    documented = documented_view_columns()
    assert set(documented) == set(STABLE_VIEWS)
    inspector = sa.inspect(database.get_engine(settings))
    for view in STABLE_VIEWS:
        assert [column["name"] for column in inspector.get_columns(view)] == documented[view], view


def test_views_come_and_go_with_their_migration(empty_database_url: str) -> None:
    """Upgrading creates the stable views; downgrading to 0004 drops them and leaves the older views."""
    settings = Settings(database_url=empty_database_url)

    def views() -> set[str]:
        return set(sa.inspect(database.engine(empty_database_url)).get_view_names())

    database.upgrade(settings=settings)
    assert set(STABLE_VIEWS) <= views()
    database.downgrade("0004", settings=settings)
    assert views() == {"latest_scores", "generator_stats"}
    database.upgrade(settings=settings)
    assert set(STABLE_VIEWS) <= views()
