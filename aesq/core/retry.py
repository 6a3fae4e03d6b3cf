"""Retrying failed assets: each goes back through ingest, the one door into the pipeline.

Ingest decides whether an object's bytes are a usable image, reads its provenance and, by `aesq.core.identity`,
which asset holds its content's scores: an asset that failed at scoring becomes pending again that way
(unless its bytes changed, or a copy became its content's canonical asset meanwhile, which setting it pending
directly would get wrong). Until its new outcome is written the asset stays failed with its old reason, so a
retry that no worker has run yet hides nothing. Queueing is one statement: a key already waiting (or claimed
by a worker) is left as it is, so retrying twice, or while workers run, queues nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.storage import Location, parse_location

# Queued without an ETag and unlisted, as a notification would queue them: ingest reads the object and looks
# for its sidecar whatever the asset recorded.
_QUEUE_FAILED = text(
    """
    WITH failed AS (
        SELECT storage, bucket, key FROM assets
        WHERE status = 'failed'
          AND (CAST(:storage AS text) IS NULL OR storage = :storage AND bucket = :bucket AND starts_with(key, :prefix))
    ), queued AS (
        INSERT INTO ingest_queue (storage, bucket, key, etag, sidecar, listed, changed)
        SELECT storage, bucket, key, NULL, NULL, false, false FROM failed ORDER BY storage, bucket, key
        ON CONFLICT (storage, bucket, key) DO NOTHING
        RETURNING key
    )
    SELECT (SELECT count(*) FROM failed) AS failed, (SELECT count(*) FROM queued) AS queued,
           ARRAY(SELECT DISTINCT storage || ':' || bucket FROM failed ORDER BY 1) AS places
    """
)


@dataclass(frozen=True)
class Retried:
    """What a retry did: the failed assets it found, how many it queued (the others were waiting already),
    and the sources that hold them (a run on each ingests them)."""

    failed: int
    queued: int
    sources: list[str]


def retry_failed(settings: Settings, source: str | None = None) -> Retried:
    """Queue every failed asset (of the source at `source` only, when given) for ingest again."""
    location = parse_location(source) if source is not None else None
    params = {
        "storage": location.storage if location else None,
        "bucket": location.bucket if location else "",
        "prefix": location.prefix if location else "",
    }
    with get_engine(settings).begin() as connection:
        row = connection.execute(_QUEUE_FAILED, params).one()
    if location is not None:
        sources = [location.uri] if row.failed else []
    else:
        places = (place.split(":", 1) for place in row.places)
        sources = [Location("s3" if storage == "s3" else "file", bucket).uri for storage, bucket in places]
    return Retried(row.failed, row.queued, sources)
