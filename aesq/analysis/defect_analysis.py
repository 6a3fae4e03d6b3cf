"""Defect analysis: pick the low scorers, say what is wrong with them, store one row per defect."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from aesq.analysis.defects import Finding, detect_defects
from aesq.core.assets import nearest_assets
from aesq.core.batches import in_batches
from aesq.core.config import Settings
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


def _near_duplicate(settings: Settings, asset_id: int, embedder: str, max_distance: float) -> Finding | None:
    """The closest other asset by embedding when it is within `max_distance`, named as the copy to keep."""
    nearest = nearest_assets(settings, asset_id, embedder, limit=1)
    if not nearest or nearest[0][1] > max_distance:
        return None
    other, distance = nearest[0]
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
    with engine.connect() as connection:
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
    embedders = [name for name in settings.enabled_embedders if name in EMBEDDING_DIMENSIONS]
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
