"""Retrying failed assets: each goes back through ingest, the one door into the pipeline.

Ingest decides whether an object's bytes are a usable image, reads its provenance and, by `aesq.core.identity`,
which asset holds its content's scores: an asset that failed at scoring becomes pending again that way
(unless its bytes changed, or a copy became its content's canonical asset meanwhile, which setting it pending
directly would get wrong). Until its new outcome is written the asset stays failed with its old reason, so a
retry that no worker has run yet hides nothing. Queueing is one statement: a key already waiting (or claimed
by a worker) is left as it is, so retrying twice, or while workers run, queues nothing twice. A retry's run
drains the queue under the failed keys' own prefix without listing: nothing it did not queue is ingested,
except what was waiting in the queue there already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Row, text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.storage import Location, parse_location

# Queued without an ETag and unlisted, as a notification would queue them: ingest reads the object and looks
# for its sidecar whatever the asset recorded. The failed keys come back grouped by bucket and by the configured
# source holding them (the longest such prefix; NULL for none), each group with its first and last key in byte
# order, whose common prefix is the group's own: a run drains the queue under it, and nothing else.
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
    ), configured AS (
        SELECT * FROM jsonb_to_recordset(CAST(:configured AS jsonb)) AS c(storage text, bucket text, prefix text)
    ), placed AS (
        SELECT f.storage, f.bucket, f.key,
               (SELECT c.prefix FROM configured c
                WHERE c.storage = f.storage AND c.bucket = f.bucket AND starts_with(f.key, c.prefix)
                ORDER BY length(c.prefix) DESC LIMIT 1) AS configured_prefix
        FROM failed f
    )
    SELECT (SELECT count(*) FROM queued) AS queued, storage, bucket, configured_prefix, count(*) AS failed,
           min(key COLLATE "C") AS first_key, max(key COLLATE "C") AS last_key
    FROM placed GROUP BY storage, bucket, configured_prefix ORDER BY storage, bucket, configured_prefix
    """
)


@dataclass(frozen=True)
class Retried:
    """What a retry did: the failed assets it found, how many it queued (the others were waiting already),
    the places whose queue holds them (a run on each without listing ingests them, and nothing listed anew),
    and how many lie under no configured source (`aesq worker` drains only those)."""

    failed: int
    queued: int
    sources: list[str]
    unconfigured: int


def _common_folder(first: str, last: str, floor: str) -> str:
    """The longest folder (prefix ending in "/") holding every key from `first` to `last` in byte order, or
    `floor` (a prefix of them all, such as the configured source's) when that is longer."""
    length = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    folder = first[: first.rfind("/", 0, length) + 1]
    return max(folder, floor, key=len)


def _place(group: Row) -> Location:
    """Where a group of failed keys is run: its folder, or on S3 the longest prefix holding all its keys that
    ends in "/" (or is its configured source's)."""
    if group.storage == "file":
        return Location("file", group.bucket)
    return Location("s3", group.bucket, _common_folder(group.first_key, group.last_key, group.configured_prefix or ""))


def retry_failed(settings: Settings, source: str | None = None) -> Retried:
    """Queue every failed asset (of the source at `source` only, when given) for ingest again."""
    location = parse_location(source) if source is not None else None
    configured = [parse_location(uri) for uri in settings.sources]
    params = {
        "storage": location.storage if location else None,
        "bucket": location.bucket if location else "",
        "prefix": location.prefix if location else "",
        "configured": json.dumps([{"storage": c.storage, "bucket": c.bucket, "prefix": c.prefix} for c in configured]),
    }
    with get_engine(settings).begin() as connection:
        groups = connection.execute(_QUEUE_FAILED, params).all()
    failed = sum(group.failed for group in groups)
    if location is not None:
        sources = [location.uri] if failed else []
    else:
        sources = list(dict.fromkeys(_place(group).uri for group in groups))
    unconfigured = sum(group.failed for group in groups if group.configured_prefix is None)
    return Retried(failed, groups[0].queued if groups else 0, sources, unconfigured)
