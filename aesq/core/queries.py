"""Read-only questions users ask of the database: status, version comparison, top assets, neighbours."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.tables import EMBEDDING_DIMENSIONS, Asset, Generator, VersionStats


@dataclass(frozen=True)
class Failure:
    """An asset that could not be ingested or scored, and why."""

    location: str
    error: str


def status_counts(settings: Settings) -> dict[str, int]:
    """Number of assets per status."""
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(select(Asset.status, func.count()).group_by(Asset.status)).all())


@dataclass(frozen=True)
class WorkInProgress:
    """What workers are doing now: objects waiting for ingest, and live claims."""

    queued: int
    queued_claimed: int
    scoring_claimed: int
    workers: list[str]


def work_in_progress(settings: Settings) -> WorkInProgress:
    """The ingest queue and the live claims on it and on assets, with the workers holding them."""
    query = text(
        """
        SELECT (SELECT count(*) FROM ingest_queue) AS queued,
               (SELECT count(*) FROM ingest_queue WHERE lease_until > now() AND lease_owner IS NOT NULL) AS queued_claimed,
               (SELECT count(*) FROM assets WHERE lease_until > now()) AS scoring_claimed,
               ARRAY(SELECT DISTINCT lease_owner FROM (
                   SELECT lease_owner FROM ingest_queue WHERE lease_until > now()
                   UNION ALL SELECT lease_owner FROM assets WHERE lease_until > now()) AS held
                   WHERE lease_owner IS NOT NULL ORDER BY 1) AS workers
        """
    )
    with get_engine(settings).connect() as connection:
        row = connection.execute(query).one()
    return WorkInProgress(row.queued, row.queued_claimed, row.scoring_claimed, list(row.workers))


def recent_failures(settings: Settings, limit: int = 20) -> list[Failure]:
    """The latest failed assets with their reasons."""
    query = (
        select(Asset.bucket, Asset.key, Asset.error)
        .where(Asset.status == "failed")
        .order_by(Asset.updated_at.desc(), Asset.id.desc())
        .limit(limit)
    )
    with get_engine(settings).connect() as connection:
        return [Failure(f"{bucket}/{key}", error or "") for bucket, key, error in connection.execute(query)]


def version_comparison(settings: Settings, scorer: str | None = None) -> list[dict]:
    """Stored statistics per generator version and scorer, best mean first."""
    query = (
        select(
            Generator.name.label("generator"),
            Generator.version,
            Generator.kind,
            VersionStats.scorer,
            VersionStats.count,
            VersionStats.mean,
            VersionStats.mean_low,
            VersionStats.mean_high,
            VersionStats.std,
            VersionStats.median,
            VersionStats.p10,
            VersionStats.p90,
            VersionStats.threshold,
            VersionStats.share_above,
        )
        .join(Generator, Generator.id == VersionStats.generator_id)
        .order_by(VersionStats.scorer, VersionStats.mean.desc())
    )
    if scorer:
        query = query.where(VersionStats.scorer == scorer)
    with get_engine(settings).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


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
    """Assets closest to `asset_id` by cosine distance, through the embedder's HNSW index ([] if it has none)."""
    if embedder not in EMBEDDING_DIMENSIONS:
        raise ValueError(f"no vector index for embedder {embedder!r}")
    # The embedder name is inlined (it is one of ours) so the planner can match the partial index.
    vector = f"vector::halfvec({EMBEDDING_DIMENSIONS[embedder]})"
    own = text(f"SELECT {vector} FROM embeddings WHERE asset_id = :asset_id AND embedder = '{embedder}'")
    nearest = text(
        f"""
        SELECT asset_id, {vector} <=> :query AS distance
        FROM embeddings
        WHERE embedder = '{embedder}' AND asset_id <> :asset_id
        ORDER BY distance
        LIMIT :limit
        """
    )
    with get_engine(settings).connect() as connection:
        query_vector = connection.execute(own, {"asset_id": asset_id}).scalar_one_or_none()
        if query_vector is None:
            return []
        rows = connection.execute(nearest, {"query": query_vector, "asset_id": asset_id, "limit": limit}).all()
    return [(int(row.asset_id), float(row.distance)) for row in rows]


def source_progress(settings: Settings, storage: str, bucket: str, prefix: str) -> tuple[int, int]:
    """(finished, total) assets of one source, for progress display; duplicates count as finished."""
    query = select(func.count().filter(Asset.status != "pending"), func.count()).where(
        Asset.storage == storage, Asset.bucket == bucket, Asset.key.startswith(prefix)
    )
    with get_engine(settings).connect() as connection:
        done, total = connection.execute(query).one()
    return int(done), int(total)


@dataclass(frozen=True)
class VersionScores:
    """One version's latest scores under one scorer, and the first asset of each prompt + seed for pairing."""

    values: list[float]
    by_prompt: dict[tuple[str, int | None], tuple[int, float]]  # (prompt, seed) -> (asset id, score)


def version_scores(settings: Settings, versions: list[str], scorer: str) -> dict[str, VersionScores]:
    """Latest scores of each "name:version" under `scorer`, in asset order, with what pairing needs."""
    query = text(
        """
        SELECT g.name || ':' || g.version AS version, a.id, a.prompt, a.seed, ls.value
        FROM generators g
        JOIN assets a ON a.generator_id = g.id AND a.status = 'scored'
        JOIN LATERAL (
            SELECT value FROM scores WHERE asset_id = a.id AND scorer = :scorer ORDER BY created_at DESC, id DESC LIMIT 1
        ) ls ON true
        WHERE g.name || ':' || g.version = ANY(:versions)
        ORDER BY a.id
        """
    )
    found = {version: VersionScores([], {}) for version in versions}
    with get_engine(settings).connect() as connection:
        for version, asset_id, prompt, seed, value in connection.execute(
            query, {"scorer": scorer, "versions": versions}
        ):
            found[version].values.append(value)
            if prompt:
                found[version].by_prompt.setdefault((prompt, seed), (asset_id, value))
    return found
