"""Every query in docs/sql.md runs on a migrated database with seeded data and returns what the seed implies.

The expectations are computed here in Python from the seed, independently of the SQL they check.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.core import database
from aesq.core.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
STABLE_VIEWS = (
    "asset_overview",
    "asset_scores",
    "version_summary",
    "version_daily",
    "asset_defects",
    "version_defect_shares",
)


class Seeded(NamedTuple):
    """One seeded asset; `technical` is its latest score (None: unscored), `days_ago` when scored or created."""

    id: int
    generator_id: int | None
    prompt: str | None
    seed: int | None
    technical: float | None
    days_ago: float
    status: str = "scored"
    error: str | None = None


GENERATORS = {1: ("sdxl", "1.0", "base", None), 2: ("sdxl", "1.1", "lora", 1)}
VERSION = {gid: version for gid, (_, version, _, _) in GENERATORS.items()}
ASSETS = [
    Seeded(1, 1, "a cat", 1, 4.0, 10),
    Seeded(2, 1, "a cat", 2, 6.0, 10),
    Seeded(3, 1, "a dog", 1, 3.0, 9),
    Seeded(4, 1, "a dog", 2, 7.0, 2),
    Seeded(5, 1, "a house", 1, 2.0, 2),
    Seeded(6, 1, "a house", 2, 5.0, 1),
    Seeded(7, 2, "a cat", 1, 5.0, 12),
    Seeded(8, 2, "a cat", 2, 6.5, 8),
    Seeded(9, 2, "a dog", 1, 8.0, 2),
    Seeded(10, 2, "a dog", 2, 6.0, 2),
    Seeded(11, 2, "a house", 1, 1.0, 1),
    Seeded(12, 2, "a house", 3, 9.0, 1),
    Seeded(13, None, None, None, 7.5, 1),
    Seeded(14, 2, "a tree", 1, None, 3, "failed", "cannot identify image file"),
    Seeded(15, None, None, None, None, 2, "failed", "truncated image: 812 of 4096 bytes"),
    Seeded(16, 1, "a tree", 1, None, 0.5, "pending"),
    Seeded(17, 2, "a tree", 2, 4.0, 9),
    Seeded(18, 1, "a tree", 2, 4.0, 11),
    Seeded(19, 1, "a cat", 1, None, 10, "duplicate"),
]
SCORED = [asset for asset in ASSETS if asset.status == "scored"]
STALE_TECHNICAL = {1: 9.5}  # an older scorer version's value: latest_scores must hide it
LAION = {1: 5.0, 2: 6.0, 3: 4.0, 4: 7.5}
DEFECTS = {
    (1, "blur"): 0.4,
    (5, "blur"): 0.7,
    (6, "blur"): 0.5,
    (7, "blur"): 0.6,
    (13, "blur"): 0.9,
    (3, "noise"): 0.3,
    (11, "noise"): 0.8,
    (13, "compression"): 0.5,
}
CRITIQUES = {
    3: {"critic": "artimuse", "score": 31.0, "aspects": {"Technical Execution": "soft focus on the dog"}},
    5: {
        "critic": "artimuse",
        "score": 22.5,
        "aspects": {"Composition & Design": "the house is cut off", "Technical Execution": "flat, grey light"},
    },
    11: {
        "critic": "artimuse",
        "score": 12.0,
        "aspects": {"Composition & Design": "tilted horizon", "Originality & Creativity": "a stock photo"},
    },
}
WITH_DEFECT = set(DEFECTS) | {(asset_id, "critique") for asset_id in CRITIQUES}
EMBEDDINGS = {1: {0: 1.0}, 2: {0: 1.0, 1: 0.1}, 3: {0: 1.0, 1: 1.0}, 4: {1: 1.0}, 5: {0: -1.0, 1: 0.5}}
CLIP_EMBEDDINGS = {6: {0: 1.0}}  # another embedder (768-d) the neighbour query must leave out
OLD_DAILY = (1, 40, 3, 2.0)  # generator, days ago, count, mean: outside the 30-day window


def key(asset: Seeded) -> str:
    """The object key the seed gives an asset, after the layout ingest reads provenance from."""
    if asset.generator_id:
        return f"generated/sdxl/{VERSION[asset.generator_id]}/{asset.id}.png"
    return f"crawled/{asset.id}.jpg"


def by_generator(gid: int) -> list[Seeded]:
    """The scored assets of one generator version."""
    return [asset for asset in SCORED if asset.generator_id == gid]


def daily() -> list[tuple[int, int, int, float]]:
    """(generator, days ago, count, mean) of technical scores per scoring day, as the aggregate flow writes."""
    days: dict[tuple[int, int], list[float]] = {}
    for asset in SCORED:
        if asset.generator_id:
            days.setdefault((asset.generator_id, int(asset.days_ago)), []).append(asset.technical)
    return [(gid, ago, len(values), statistics.mean(values)) for (gid, ago), values in days.items()] + [OLD_DAILY]


def vector(components: dict[int, float], dimension: int) -> np.ndarray:
    """A dense vector from its non-zero components."""
    dense = np.zeros(dimension)
    for index, value in components.items():
        dense[index] = value
    return dense


def seed(settings: Settings) -> None:
    """Write the seed with plain INSERTs, times relative to the database's now()."""
    ago = "now() - CAST(:days AS float8) * interval '1 day'"
    with database.get_engine(settings).begin() as connection:

        def insert(sql: str, rows: list[dict[str, Any]]) -> None:
            connection.execute(sa.text(sql), rows)

        insert(
            "INSERT INTO generators (id, name, version, kind, parent_id) VALUES (:id, :name, :version, :kind, :parent)",
            [
                {"id": gid, "name": name, "version": version, "kind": kind, "parent": parent}
                for gid, (name, version, kind, parent) in GENERATORS.items()
            ],
        )
        insert(
            f"""INSERT INTO assets (id, storage, bucket, key, sha256, size_bytes, width, height, source_kind,
                                       generator_id, prompt, seed, status, error, created_at, scored_at)
                   VALUES (:id, 's3', 'images', :key, :sha, 1000, 1024, 1024, :kind, :generator_id, :prompt, :seed,
                           :status, :error, {ago}, now() - CAST(:scored_days AS float8) * interval '1 day')""",
            [
                {
                    **asset._asdict(),
                    "days": asset.days_ago,
                    "sha": f"sha-{asset.id}",
                    "scored_days": asset.days_ago if asset.status == "scored" else None,
                    "kind": "generated" if asset.generator_id else "crawled",
                    "key": key(asset),
                }
                for asset in ASSETS
            ],
        )
        scores = (
            [(asset.id, "technical", "1", asset.technical, asset.days_ago) for asset in SCORED]
            + [(asset_id, "technical", "0", value, 30) for asset_id, value in STALE_TECHNICAL.items()]
            + [(asset_id, "laion-aes-v2", "2", value, 1) for asset_id, value in LAION.items()]
        )
        insert(
            f"INSERT INTO scores (asset_id, scorer, scorer_version, value, created_at) VALUES (:a, :s, :v, :x, {ago})",
            [{"a": a, "s": s, "v": v, "x": x, "days": days} for a, s, v, x, days in scores],
        )
        embeddings = [(asset_id, "efficientnet-lite0", vector(parts, 1280)) for asset_id, parts in EMBEDDINGS.items()]
        embeddings += [(asset_id, "clip-vit-l-14", vector(parts, 768)) for asset_id, parts in CLIP_EMBEDDINGS.items()]
        insert(
            "INSERT INTO embeddings (asset_id, embedder, vector) VALUES (:a, :e, CAST(:v AS halfvec))",
            [{"a": a, "e": e, "v": "[" + ",".join(map(str, v)) + "]"} for a, e, v in embeddings],
        )
        insert(
            "INSERT INTO defects (asset_id, category, severity, detail) VALUES (:a, :c, :s, :d)",
            [{"a": a, "c": c, "s": s, "d": f"measured {s}"} for (a, c), s in DEFECTS.items()]
            + [
                {"a": a, "c": "critique", "s": 1 - detail["score"] / 100, "d": json.dumps(detail)}
                for a, detail in CRITIQUES.items()
            ],
        )
        stats = [(gid, "technical", [a.technical for a in by_generator(gid)]) for gid in GENERATORS]
        stats.append((1, "laion-aes-v2", [LAION[a.id] for a in by_generator(1) if a.id in LAION]))
        insert(
            """INSERT INTO version_stats (generator_id, scorer, count, mean, mean_low, mean_high, std, median,
                                             p10, p90, threshold, share_above)
                  VALUES (:g, :s, :n, :mean, :low, :high, :std, :median, :p10, :p90, 5.0, :above)""",
            [
                {
                    "g": gid,
                    "s": scorer,
                    "n": len(values),
                    "mean": statistics.mean(values),
                    "low": statistics.mean(values) - 1,
                    "high": statistics.mean(values) + 1,
                    "std": statistics.stdev(values),
                    "median": statistics.median(values),
                    "p10": float(np.percentile(values, 10)),
                    "p90": float(np.percentile(values, 90)),
                    "above": statistics.mean(value >= 5.0 for value in values),
                }
                for gid, scorer, values in stats
            ],
        )
        insert(
            """INSERT INTO version_daily_stats (generator_id, scorer, day, count, mean)
                  VALUES (:g, 'technical', current_date - :days, :n, :mean)""",
            [{"g": gid, "days": days, "n": n, "mean": mean} for gid, days, n, mean in daily()],
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
    means = {gid: statistics.mean(a.technical for a in by_generator(gid)) for gid in GENERATORS}
    expected = [
        rounded(
            (
                "sdxl",
                VERSION[gid],
                len(by_generator(gid)),
                means[gid],
                means[gid] - 1,
                means[gid] + 1,
                statistics.mean(a.technical >= 5 for a in by_generator(gid)),
            )
        )
        for gid in sorted(means, key=means.get, reverse=True)
    ]
    assert table(rows) == expected
    assert [row[1] for row in rows] == ["1.1", "1.0"]


@check("Top-k images per version")
def _top_k(rows: list[tuple], today: date) -> None:
    expected = []
    for gid in GENERATORS:
        best = sorted(by_generator(gid), key=lambda a: (-a.technical, a.id))[:2]
        expected += [("sdxl", VERSION[gid], a.id, "images", key(a), a.technical) for a in best]
    assert table(rows) == expected
    assert [row[2] for row in rows] == [4, 2, 12, 9]  # asset 1's stale 9.5 does not count


@check("Mean per version per day")
def _daily(rows: list[tuple], today: date) -> None:
    expected = sorted(
        rounded((today.toordinal() - ago, "sdxl", VERSION[gid], n, mean)) for gid, ago, n, mean in daily() if ago <= 30
    )
    assert [(day.toordinal(), *rest) for day, *rest in table(rows)] == expected
    assert len(expected) == len(daily()) - 1


@check("Versions whose share of a defect rose")
def _rising(rows: list[tuple], today: date) -> None:
    categories = sorted({category for _, category in DEFECTS})
    expected = []
    for gid in GENERATORS:
        previous = [a for a in by_generator(gid) if 7 <= a.days_ago < 14]
        recent = [a for a in by_generator(gid) if a.days_ago < 7]
        for category in categories:
            before, now = (statistics.mean((a.id, category) in DEFECTS for a in group) for group in (previous, recent))
            if now > before:
                expected.append(("sdxl", VERSION[gid], category, float(before), float(now)))
    expected.sort(key=lambda row: (row[3] - row[4], row[:3]))
    assert table(rows) == [rounded(row) for row in expected]
    assert [row[1:3] for row in rows] == [("1.0", "blur"), ("1.1", "noise")]


@check("Nearest neighbours of an asset")
def _neighbours(rows: list[tuple], today: date) -> None:
    unit = {
        asset_id: vector(parts, 1280) / np.linalg.norm(list(parts.values())) for asset_id, parts in EMBEDDINGS.items()
    }
    distances = {asset_id: 1 - float(unit[asset_id] @ unit[1]) for asset_id in unit if asset_id != 1}
    order = sorted(distances, key=distances.get)
    assert [row[0] for row in rows] == order == [2, 3, 4, 5]
    assert [row[4] for row in rows] == pytest.approx([distances[i] for i in order], abs=2e-3)
    assert [row[1:4] for row in rows] == [("sdxl", "1.0", key(ASSETS[i - 1])) for i in order]


@check("Assets scored by one scorer but not another")
def _scored_by_one(rows: list[tuple], today: date) -> None:
    assert [row[0] for row in rows] == sorted(a.id for a in SCORED if a.id not in LAION) == [*range(5, 14), 17, 18]
    assert rows[8][1:3] == (None, None)  # the crawled asset


@check("Defect breakdown per version")
def _breakdown(rows: list[tuple], today: date) -> None:
    categories = {category for _, category in WITH_DEFECT}
    expected = []
    for gid in GENERATORS:
        scored = by_generator(gid)
        for category in categories:
            found = sum((a.id, category) in WITH_DEFECT for a in scored)
            expected.append(("sdxl", VERSION[gid], category, found, len(scored), found / len(scored)))
    expected.sort(key=lambda row: (row[1], -row[5], row[2]))
    assert table(rows) == [rounded(row) for row in expected]
    assert ("sdxl", "1.1", "blur", 1, 7, round(1 / 7, 6)) in table(rows)  # the crawled blur is no version's
    assert ("sdxl", "1.0", "compression", 0, 7, 0.0) in table(rows)  # seen only on a crawled image


@check("Score histogram per version")
def _histogram(rows: list[tuple], today: date) -> None:
    counts = Counter((VERSION[a.generator_id], int(a.technical // 2) + 1) for a in SCORED if a.generator_id)
    expected = [
        ("sdxl", version, bucket, (bucket - 1) * 2, bucket * 2, n) for (version, bucket), n in sorted(counts.items())
    ]
    assert table(rows) == expected
    assert sum(row[5] for row in rows) == 14


def pairs() -> list[tuple[Seeded, Seeded]]:
    """(1.0 asset, 1.1 asset) rendered from the same prompt and seed."""
    return [(a, b) for a in by_generator(1) for b in by_generator(2) if (a.prompt, a.seed) == (b.prompt, b.seed)]


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
    low = sorted((a for a in SCORED if a.technical < 3 and a.id in CRITIQUES), key=lambda a: (a.technical, a.id))
    expected = [
        (a.id, VERSION[a.generator_id], a.technical, CRITIQUES[a.id]["critic"], CRITIQUES[a.id]["score"], aspect, text)
        for a in low
        for aspect, text in sorted(CRITIQUES[a.id]["aspects"].items())
    ]
    assert table(rows) == expected
    assert {row[0] for row in rows} == {5, 11}  # asset 3 scores exactly 3


@check("Failed assets with their error")
def _failed(rows: list[tuple], today: date) -> None:
    failed = [a for a in ASSETS if a.status == "failed"]
    assert [row[:6] for row in rows] == [
        (a.id, "images", key(a), "sdxl" if a.generator_id else None, VERSION.get(a.generator_id), a.error)
        for a in failed
    ]
    assert [row[0] for row in rows] == [14, 15]


@check("Versions against their parent")
def _parent(rows: list[tuple], today: date) -> None:
    mean = {gid: statistics.mean(a.technical for a in by_generator(gid)) for gid in GENERATORS}
    assert table(rows) == [rounded(("sdxl", "1.1", "1.0", mean[2], mean[1], mean[2] - mean[1]))]


@check("Agreement of two scorers")
def _agreement(rows: list[tuple], today: date) -> None:
    both = [a for a in SCORED if a.id in LAION]
    expected = statistics.correlation([a.technical for a in both], [LAION[a.id] for a in both])
    assert table(rows) == [rounded(("sdxl", "1.0", len(both), expected))]


@check("Assets per version and status")
def _status(rows: list[tuple], today: date) -> None:
    counts = Counter((f"sdxl {VERSION[a.generator_id]}" if a.generator_id else "(crawled)", a.status) for a in ASSETS)
    assert table(rows) == [(*key, n) for key, n in sorted(counts.items())]
    assert ("sdxl 1.1", "failed", 1) in rows


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
    seed(settings)
    with database.get_engine(settings).connect() as connection:
        today = connection.execute(sa.text("SELECT current_date")).scalar_one()
        rows = [tuple(row) for row in connection.exec_driver_sql(query)]
    CHECKS[heading](rows, today)


def test_neighbour_query_can_use_the_hnsw_index(settings: Settings) -> None:
    """As the page says, the documented nearest-neighbour query is one the embedder's HNSW index serves."""
    seed(settings)
    query = dict(QUERIES)["Nearest neighbours of an asset"]
    with database.get_engine(settings).connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")  # a tiny table is cheaper to scan
        plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + query))
    assert "Index Scan using ix_embeddings_hnsw_efficientnet_lite0" in plan


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
