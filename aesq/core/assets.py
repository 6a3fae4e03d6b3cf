"""Reads of assets: listings under filters, one asset in full, a generator's best, nearest neighbours by
embedding, and the values the filters offer. Read-only; every value is a bound parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import text

from aesq.core import vectors
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.tables import EMBEDDING_DIMENSIONS, SOURCE_KINDS

ASSET_ORDERS = {
    "score_desc": "value DESC NULLS LAST, a.id",
    "score_asc": "value ASC NULLS LAST, a.id",
    "newest": "a.id DESC",
}


UNREADABLE = "unreadable"  # shown in place of a stored value that is not in the shape aesq writes


class NotFound(LookupError):
    """A version, asset or report the caller named does not exist."""


@dataclass(frozen=True)
class AssetFilter:
    """Which assets a listing shows; None means any."""

    scorer: str
    generator: str | None = None
    version: str | None = None
    source_kind: str | None = None
    since: date | None = None
    until: date | None = None
    min_score: float | None = None
    max_score: float | None = None
    defect: str | None = None


def split_version(label: str) -> tuple[str, str]:
    """("name", "version") of a "name:version" label; ValueError otherwise."""
    name, colon, version = label.partition(":")
    if not colon or not name or not version:
        raise ValueError(f"a version is named NAME:VERSION, not {label!r}")
    return name, version


def filter_options(settings: Settings) -> dict[str, list[str]]:
    """Values the dashboard's filters offer: generators, versions, scorers, source kinds, defect categories."""
    queries = {
        "generators": "SELECT DISTINCT name FROM generators ORDER BY 1",
        "versions": "SELECT name || ':' || version FROM generators ORDER BY name, version",
        "scorers": "SELECT DISTINCT scorer FROM version_stats ORDER BY 1",
        "defects": "SELECT DISTINCT category FROM defects ORDER BY 1",
    }
    with get_engine(settings).connect() as connection:
        options = {name: list(connection.execute(text(sql)).scalars()) for name, sql in queries.items()}
    return {**options, "source_kinds": list(SOURCE_KINDS)}  # a fixed set; finding the ones in use scans every asset


def _asset_where(filters: AssetFilter) -> tuple[str, dict]:
    """The WHERE clause and parameters of an asset listing."""
    params = {
        "scorer": filters.scorer, "generator": filters.generator, "version": filters.version,
        "source_kind": filters.source_kind, "since": filters.since, "until": filters.until,
        "min_score": filters.min_score, "max_score": filters.max_score, "defect": filters.defect,
    }  # fmt: skip
    where = """
        a.status = 'scored'
        AND (CAST(:generator AS text) IS NULL OR g.name = :generator)
        AND (CAST(:version AS text) IS NULL OR g.version = :version)
        AND (CAST(:source_kind AS text) IS NULL OR a.source_kind::text = :source_kind)
        AND (CAST(:since AS date) IS NULL OR a.scored_at >= :since)
        AND (CAST(:until AS date) IS NULL OR a.scored_at < CAST(:until AS date) + 1)
        AND (CAST(:min_score AS float8) IS NULL OR s.value >= :min_score)
        AND (CAST(:max_score AS float8) IS NULL OR s.value <= :max_score)
        AND (CAST(:defect AS text) IS NULL OR EXISTS (
             SELECT 1 FROM defects d WHERE d.asset_id = a.id AND (d.category = :defect OR :defect = '*')))
    """
    return where, params


def list_assets(
    settings: Settings, filters: AssetFilter, order: str = "score_desc", limit: int = 50, offset: int = 0
) -> tuple[list[dict], int]:
    """One page of scored assets with their `filters.scorer` score, and how many match in all."""
    where, params = _asset_where(filters)
    # The latest score of each asset under the scorer: the scorer condition reaches inside the view, which reads
    # the scorer's rows in order from ix_scores_latest (no sort), so the planner can merge or probe it per asset.
    matching = f"""
        WITH latest AS NOT MATERIALIZED (SELECT asset_id, value FROM latest_scores WHERE scorer = :scorer)
        SELECT a.id, a.bucket, a.key, a.prompt, a.seed, a.source_kind::text AS source_kind,
               g.name AS generator, g.version, s.value, a.scored_at, count(*) OVER () AS total
        FROM assets a
        LEFT JOIN generators g ON g.id = a.generator_id
        LEFT JOIN latest s ON s.asset_id = a.id
        WHERE {where}
    """
    page = text(f"{matching} ORDER BY {ASSET_ORDERS[order]} LIMIT :limit OFFSET :offset")
    with get_engine(settings).connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(page, {**params, "limit": limit, "offset": offset})]
        if rows:
            total = rows[0]["total"]  # the window count sees every matching row, before LIMIT
        else:
            total = (
                connection.execute(text(f"SELECT count(*) FROM ({matching}) matching"), params).scalar_one()
                if offset
                else 0
            )
        defects: dict[int, list[str]] = dict(
            connection.execute(
                text(
                    "SELECT asset_id, array_agg(category ORDER BY category) FROM defects WHERE asset_id = ANY(:ids) GROUP BY asset_id"
                ),
                {"ids": [row["id"] for row in rows]},
            ).all()
        )
    for row in rows:
        del row["total"]
        row["defects"] = defects.get(row["id"], [])
    return rows, int(total)


def asset_detail(settings: Settings, asset_id: int) -> dict:
    """Everything about one asset: provenance, every scorer's latest score, defects, its critique if any."""
    with get_engine(settings).connect() as connection:
        asset = connection.execute(
            text(
                """
                SELECT a.id, a.storage::text AS storage, a.bucket, a.key, a.sha256, a.size_bytes, a.width, a.height,
                       a.format, a.color_mode, a.source_kind::text AS source_kind, a.prompt, a.seed, a.extra,
                       a.status::text AS status, a.error, a.created_at, a.scored_at, a.analysed_at,
                       g.name AS generator, g.version, g.kind::text AS generator_kind
                FROM assets a LEFT JOIN generators g ON g.id = a.generator_id WHERE a.id = :id
                """
            ),
            {"id": asset_id},
        ).one_or_none()
        if asset is None:
            raise NotFound(f"no asset {asset_id}")
        scores = connection.execute(
            text(
                "SELECT scorer, scorer_version, value, raw, created_at FROM latest_scores WHERE asset_id = :id ORDER BY scorer"
            ),
            {"id": asset_id},
        ).all()
        defects = connection.execute(
            text(
                "SELECT category, severity, detail FROM defects WHERE asset_id = :id ORDER BY severity DESC, category"
            ),
            {"id": asset_id},
        ).all()
        critique = connection.execute(
            text("SELECT critic, critic_score AS score, aspects, created_at FROM critiques WHERE asset_id = :id"),
            {"id": asset_id},
        ).one_or_none()
        embedders = (
            connection.execute(
                text("SELECT embedder FROM embeddings WHERE asset_id = :id ORDER BY embedder"), {"id": asset_id}
            )
            .scalars()
            .all()
        )
    return _readable(
        {
            **dict(asset._mapping),
            "scores": [dict(row._mapping) for row in scores],
            "defects": [dict(row._mapping) for row in defects],
            "critique": None if critique is None else dict(critique._mapping),
            "embedders": [name for name in embedders if name in EMBEDDING_DIMENSIONS],
        }
    )


def _encodable(value: Any) -> bool:
    """Whether a stored JSON value can be sent as UTF-8: a JSON (not JSONB) column keeps an escaped lone surrogate,
    which decodes to a string no page or answer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(key) and _encodable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_encodable(item) for item in value)
    return True


def _readable(detail: dict) -> dict:
    """An asset's detail whose stored JSON values that are not in the shape aesq writes (a row edited by hand, or
    written by another tool) are replaced by empty ones or UNREADABLE, and named in `unreadable`, instead of
    failing the page or the answer that shows them."""
    unreadable: list[str] = []
    if not isinstance(detail["extra"], dict) or not _encodable(detail["extra"]):
        detail["extra"] = {}
        unreadable.append("extra")
    for score in detail["scores"]:
        if not isinstance(score["raw"], dict) or not _encodable(score["raw"]):
            score["raw"] = {}
            unreadable.append(f"scores.{score['scorer']}.raw")
    critique = detail["critique"]
    if critique is not None:
        aspects = critique["aspects"]
        if not isinstance(aspects, dict) or not _encodable(list(aspects)):
            critique["aspects"] = {}
            unreadable.append("critique.aspects")
        elif not all(isinstance(text, str) and _encodable(text) for text in aspects.values()):
            critique["aspects"] = {
                aspect: text if isinstance(text, str) and _encodable(text) else UNREADABLE
                for aspect, text in aspects.items()
            }
            unreadable.append("critique.aspects")
    return {**detail, "unreadable": unreadable}


def neighbours(settings: Settings, asset_id: int, embedder: str | None = None, limit: int = 8) -> list[dict]:
    """The nearest assets by embedding (the asset's first indexed embedder by default), with keys, versions and
    distance, in one read of the assets."""
    with get_engine(settings).connect() as connection:
        embedders = connection.execute(
            text(
                "SELECT array(SELECT embedder FROM embeddings WHERE asset_id = a.id ORDER BY embedder) FROM assets a WHERE a.id = :id"
            ),
            {"id": asset_id},
        ).scalar_one_or_none()
    if embedders is None:
        raise NotFound(f"no asset {asset_id}")
    embedder = embedder or next((name for name in embedders if name in EMBEDDING_DIMENSIONS), None)
    if embedder is None:
        return []
    nearest = nearest_assets(settings, asset_id, embedder, limit)
    if not nearest:
        return []
    with get_engine(settings).connect() as connection:
        found = {
            row.id: row
            for row in connection.execute(
                text(
                    "SELECT a.id, a.key, g.name AS generator, g.version FROM assets a"
                    " LEFT JOIN generators g ON g.id = a.generator_id WHERE a.id = ANY(:ids)"
                ),
                {"ids": [i for i, _ in nearest]},
            )
        }
    return [
        {
            "id": other,
            "key": found[other].key if other in found else None,
            "generator": found[other].generator if other in found else None,
            "version": found[other].version if other in found else None,
            "distance": distance,
            "embedder": embedder,
        }
        for other, distance in nearest
    ]


def top_assets(settings: Settings, generator: str, version: str | None, scorer: str, limit: int) -> list[dict]:
    """A generator's (or one version's) best-scored assets by their latest score."""
    query = text(
        """
        SELECT a.id, a.bucket, a.key, g.version, a.prompt, ls.value
        FROM latest_scores ls
        JOIN assets a ON a.id = ls.asset_id
        JOIN generators g ON g.id = a.generator_id
        WHERE g.name = :generator AND (CAST(:version AS text) IS NULL OR g.version = :version) AND ls.scorer = :scorer
        ORDER BY ls.value DESC, a.id
        LIMIT :limit
        """
    )
    params = {"generator": generator, "version": version, "scorer": scorer, "limit": limit}
    with get_engine(settings).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query, params)]


def nearest_assets(settings: Settings, asset_id: int, embedder: str, limit: int = 10) -> list[tuple[int, float]]:
    """Assets closest to `asset_id` by cosine distance, through the embedder's vector index ([] if it has none).

    Only canonical assets are neighbours: a failed one keeping its content's outputs is no image to show. The
    status filter runs inside the index scan (aesq.core.vectors) so failed neighbours hide none.
    """
    if embedder not in EMBEDDING_DIMENSIONS:
        raise ValueError(f"no vector index for embedder {embedder!r}: use one of {', '.join(EMBEDDING_DIMENSIONS)}")
    own = text(f"SELECT e.vector FROM embeddings e WHERE e.asset_id = :asset_id AND e.embedder = '{embedder}'")
    with get_engine(settings).begin() as connection:
        query_vector = connection.execute(own, {"asset_id": asset_id}).scalar_one_or_none()
        if query_vector is None:
            return []
        return vectors.nearest(
            connection,
            embedder,
            query_vector,
            limit,
            ["e.asset_id <> :asset_id", "a.status IN ('pending', 'scored')"],
            {"asset_id": asset_id},
        )
