"""Defect analysis: pick the low scorers, say what is wrong with them, store one row per defect."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from aesq.analysis.defects import Finding, detect_defects
from aesq.core import vectors
from aesq.core.batches import in_batches
from aesq.core.config import ConfigurationError, Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Unreadable, fetch_asset
from aesq.core.tables import EMBEDDING_DIMENSIONS, Asset, Defect
from aesq.core.writes import current_holders

# Scored assets not analysed since their last scoring whose latest score breaks a rule: under the
# absolute threshold, or in the bottom share of their generator version (assets without a version
# form one group).
_LOW_SCORERS = text(
    """
    WITH rules AS (
        SELECT key AS scorer, (value->>'below')::float8 AS below, (value->>'bottom_share')::float8 AS bottom_share
        FROM jsonb_each(:rules)
    ), ranked AS (
        SELECT ls.asset_id, ls.value, r.below, r.bottom_share,
               percent_rank() OVER (PARTITION BY a.generator_id, ls.scorer ORDER BY ls.value) AS rank,
               count(*) OVER (PARTITION BY a.generator_id, ls.scorer) AS group_size
        FROM latest_scores ls
        JOIN rules r ON r.scorer = ls.scorer
        JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
    )
    SELECT DISTINCT r.asset_id FROM ranked r JOIN assets a ON a.id = r.asset_id
    WHERE (a.analysed_at IS NULL OR a.analysed_at < a.scored_at)
      AND (r.value < r.below OR (r.bottom_share IS NOT NULL AND r.group_size > 1 AND r.rank < r.bottom_share))
    ORDER BY r.asset_id
    """
).bindparams(bindparam("rules", type_=JSONB))


def low_scorer_batches(settings: Settings) -> list[list[int]]:
    """Ids of the assets defect analysis should look at now, in batches."""
    rules = {scorer: rule.model_dump() for scorer, rule in settings.defect_rules.items()}
    with get_engine(settings).connect() as connection:
        ids = list(connection.execute(_LOW_SCORERS, {"rules": rules}).scalars())
    return in_batches(ids, settings.batch_size)


_PGVECTOR_VERSION = text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")


def check_iterative_scan(pgvector_version: str) -> None:
    """Near-duplicates are sought with iterative index scans, which pgvector has since 0.8 (older ones miss or fail)."""
    major, minor = (int(part) for part in pgvector_version.split(".")[:2])
    if (major, minor) < (0, 8):
        raise ConfigurationError(
            f"near-duplicate detection needs pgvector 0.8 or later; the database has {pgvector_version}: "
            "install pgvector 0.8 or later on the server, then run ALTER EXTENSION vector UPDATE in this database"
        )


def _comparable_nearest(settings: Settings, asset_id: int, embedder: str) -> tuple[int, float] | None:
    """The closest asset by embedding that `asset_id` may duplicate: one of its own generator version, or any
    when either of the two has no version (crawled data). Other versions are never candidates: versions of the
    same prompt and seed are paired generations, expected to look alike, not copies.

    The filter runs inside the embedder's index scan (aesq.core.vectors: pgvector 0.8's iterative scan reads more
    lists until a comparable asset is found), so closer assets of other versions do not hide the nearest
    comparable one.
    """
    own = text(
        f"""
        SELECT e.vector, a.generator_id
        FROM embeddings e JOIN assets a ON a.id = e.asset_id
        WHERE e.asset_id = :asset_id AND e.embedder = '{embedder}'
        """
    )
    conditions = [
        "e.asset_id <> :asset_id",
        "(CAST(:generator_id AS bigint) IS NULL OR a.generator_id IS NULL OR a.generator_id = :generator_id)",
        "a.status IN ('pending', 'scored')",  # a failed asset keeping its outputs is no copy to keep
    ]
    with get_engine(settings).begin() as connection:
        query = connection.execute(own, {"asset_id": asset_id}).first()
        if query is None:
            return None
        found = vectors.nearest(
            connection,
            embedder,
            query.vector,
            1,
            conditions,
            {"asset_id": asset_id, "generator_id": query.generator_id},
        )
    return found[0] if found else None


def _near_duplicate(settings: Settings, asset_id: int, embedder: str, max_distance: float) -> Finding | None:
    """The closest comparable asset by embedding when it is within `max_distance`, named as the copy to keep."""
    nearest = _comparable_nearest(settings, asset_id, embedder)
    if nearest is None or nearest[1] > max_distance:
        return None
    other, distance = nearest
    severity = 1.0 - distance / max_distance if max_distance > 0 else 1.0
    return Finding(
        "near_duplicate",
        round(min(1.0, max(0.0, severity)), 4),
        f"near-duplicate of asset {other} (cosine distance {distance:.4f}); keep asset {other}",
    )


def analyse_assets(asset_ids: list[int], settings: Settings) -> int:
    """Run every defect detector on the assets, replace their defect rows, mark them analysed; returns rows written.

    An image that can no longer be fetched or decoded is recorded as an `unreadable` defect. Findings go
    to the asset holding the analysed content when they are written (`writes.current_holders`).
    """
    engine = get_engine(settings)
    embedders = [name for name in settings.enabled_embedders if name in EMBEDDING_DIMENSIONS]
    with engine.connect() as connection:
        if embedders:
            check_iterative_scan(connection.execute(_PGVECTOR_VERSION).scalar_one())
        rows = connection.execute(
            select(Asset.id, Asset.storage, Asset.bucket, Asset.key, Asset.etag, Asset.sha256).where(
                Asset.id.in_(asset_ids)
            )
        ).all()

    def findings_for(row) -> list[Finding]:
        """The image detectors' findings for one asset."""
        image = fetch_asset(row, settings)
        if isinstance(image, Unreadable):
            return [Finding("unreadable", 1.0, image.reason)]
        return detect_defects(image)

    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        found = dict(zip((row.id for row in rows), pool.map(findings_for, rows)))
    if embedders:
        for asset_id, findings in found.items():
            duplicate = _near_duplicate(settings, asset_id, embedders[0], settings.near_duplicate_distance)
            if duplicate is not None:
                findings.append(duplicate)
    with engine.begin() as connection:
        holder = current_holders(connection, {row.id: row.sha256 for row in rows})
        connection.execute(delete(Defect).where(Defect.asset_id.in_(list(holder.values()))))
        values = [
            {"asset_id": holder[asset_id], "category": f.category, "severity": f.severity, "detail": f.detail}
            for asset_id, findings in found.items()
            if asset_id in holder
            for f in findings
        ]
        # Two assets read as the same content (a duplicate asked about too) find the same rows once.
        statement = insert(Defect).values(values).on_conflict_do_nothing().returning(Defect.id)
        written = len(connection.execute(statement).all()) if values else 0
        connection.execute(update(Asset).where(Asset.id.in_(list(holder.values()))).values(analysed_at=text("now()")))
    return written
