"""Where the pipeline stands: assets per status, work in progress, failures with their reasons, a source's
progress. Read-only."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.tables import Asset


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


def source_progress(settings: Settings, storage: str, bucket: str, prefix: str) -> tuple[int, int]:
    """(finished, total) assets of one source, for progress display; duplicates count as finished."""
    query = select(func.count().filter(Asset.status != "pending"), func.count()).where(
        Asset.storage == storage, Asset.bucket == bucket, Asset.key.startswith(prefix)
    )
    with get_engine(settings).connect() as connection:
        done, total = connection.execute(query).one()
    return int(done), int(total)
