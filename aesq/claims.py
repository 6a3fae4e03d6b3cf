"""Claimed work: how any number of workers share ingest and scoring without doing anything twice.

Objects to ingest wait in `ingest_queue`; assets to score are the pending ones (and scored ones lacking
a model enabled since). A worker claims a batch of either with `FOR UPDATE SKIP LOCKED`, which sets a
lease on the rows: other workers skip them until the work is written (ingest deletes the queue rows,
scoring clears the asset's lease, in the same transaction as the results) or the lease lapses, when a
killed worker's batch returns to the others.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

# Who holds a lease: shown in the database, so an operator can tell which process has what.
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Queued:
    """An object waiting in the ingest queue, as a claim hands it out."""

    key: str
    etag: str | None
    sidecar: str | None
    listed: bool  # False: queued by a notification; ingest looks for its sidecar itself


@dataclass(frozen=True)
class Listed:
    """An object a discovery or notification queues."""

    key: str
    etag: str | None
    sidecar: str | None = None
    changed: bool = False
    listed: bool = True


_QUEUE = text(
    """
    INSERT INTO ingest_queue (storage, bucket, key, etag, sidecar, changed, listed)
    SELECT :storage, :bucket, q.key, q.etag, q.sidecar, q.changed, q.listed
    FROM jsonb_to_recordset(CAST(:objects AS jsonb)) AS q(key text, etag text, sidecar text, changed bool, listed bool)
    ON CONFLICT (storage, bucket, key) DO UPDATE
        SET etag = excluded.etag, sidecar = coalesce(excluded.sidecar, ingest_queue.sidecar),
            changed = ingest_queue.changed OR excluded.changed, listed = ingest_queue.listed AND excluded.listed
        WHERE ingest_queue.etag IS DISTINCT FROM excluded.etag OR ingest_queue.sidecar IS DISTINCT FROM excluded.sidecar
    """
)


def queue_objects(connection: Connection, storage: str, bucket: str, objects: Sequence[Listed]) -> None:
    """Put objects in the ingest queue; one already waiting takes the newer ETag (and keeps any claim on it)."""
    if objects:
        payload = [
            {"key": o.key, "etag": o.etag, "sidecar": o.sidecar, "changed": o.changed, "listed": o.listed}
            for o in sorted(objects, key=lambda o: o.key)  # one order: concurrent discoveries never deadlock
        ]
        connection.execute(_QUEUE, {"storage": storage, "bucket": bucket, "objects": json.dumps(payload)})


_CLAIM_OBJECTS = text(
    """
    WITH claimed AS (
        SELECT storage, bucket, key FROM ingest_queue
        WHERE storage = :storage AND bucket = :bucket AND starts_with(key, :prefix)
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY changed DESC, key
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE ingest_queue q SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease)
    FROM claimed WHERE (q.storage, q.bucket, q.key) = (claimed.storage, claimed.bucket, claimed.key)
    RETURNING q.key, q.etag, q.sidecar, q.listed
    """
)


def claim_objects(
    connection: Connection, storage: str, bucket: str, prefix: str, limit: int, lease_seconds: float
) -> list[Queued]:
    """Claim up to `limit` queued objects of one source (changed keys first and together, so contents that
    swapped keys land in one batch); nothing when every waiting object is claimed by a live lease."""
    rows = connection.execute(
        _CLAIM_OBJECTS,
        {"storage": storage, "bucket": bucket, "prefix": prefix, "limit": limit, "owner": WORKER, "lease": lease_seconds},
    ).all()
    return sorted((Queued(row.key, row.etag, row.sidecar, row.listed) for row in rows), key=lambda q: q.key)


_FINISH_OBJECTS = text(
    """
    WITH done AS (
        SELECT * FROM jsonb_to_recordset(CAST(:objects AS jsonb)) AS d(key text, etag text)
    ), removed AS (
        DELETE FROM ingest_queue q USING done
        WHERE (q.storage, q.bucket, q.key) = (:storage, :bucket, done.key) AND q.etag IS NOT DISTINCT FROM done.etag
        RETURNING q.key
    )
    UPDATE ingest_queue q SET lease_owner = NULL, lease_until = NULL FROM done
    WHERE (q.storage, q.bucket, q.key) = (:storage, :bucket, done.key) AND q.key NOT IN (SELECT key FROM removed)
    """
)


def finish_objects(connection: Connection, storage: str, bucket: str, claimed: Iterable[Queued]) -> None:
    """Take ingested objects out of the queue; one queued again with a newer ETag meanwhile stays, unclaimed."""
    payload = [{"key": q.key, "etag": q.etag} for q in claimed]
    if payload:
        connection.execute(_FINISH_OBJECTS, {"storage": storage, "bucket": bucket, "objects": json.dumps(payload)})


_DEFER_OBJECTS = text(
    """
    UPDATE ingest_queue SET attempts = attempts + 1, lease_owner = NULL,
        lease_until = now() + make_interval(secs => :backoff * 2 ^ attempts)
    WHERE storage = :storage AND bucket = :bucket AND key = ANY(:keys)
    """
)
_GIVE_UP_OBJECTS = text(
    """
    DELETE FROM ingest_queue WHERE storage = :storage AND bucket = :bucket AND key = ANY(:keys) AND attempts >= :limit
    RETURNING key
    """
)


def defer_objects(
    connection: Connection, storage: str, bucket: str, keys: Iterable[str], attempts: int, backoff_seconds: float
) -> list[str]:
    """Objects the storage failed to hand over wait `backoff_seconds` × 2^(tries so far) before another worker
    may claim them; after `attempts` tries they leave the queue (a later listing finds them again).
    Returns the keys given up on."""
    params = {"storage": storage, "bucket": bucket, "keys": sorted(keys), "limit": attempts, "backoff": backoff_seconds}
    if not params["keys"]:
        return []
    connection.execute(_DEFER_OBJECTS, params)
    return sorted(connection.execute(_GIVE_UP_OBJECTS, params).scalars())


# Pending assets due for scoring, and scored ones lacking an enabled model's output (backfill).
_NEEDS_SCORING = """
    (a.status = 'pending' AND (a.retry_after IS NULL OR a.retry_after <= now())
     OR a.status = 'scored' AND (
          EXISTS (SELECT 1 FROM jsonb_to_recordset(CAST(:scorers AS jsonb)) AS w(name text, version text)
                  WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.asset_id = a.id
                                    AND s.scorer = w.name AND s.scorer_version = w.version))
       OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(:embedders AS jsonb)) AS w(name)
                  WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.asset_id = a.id AND e.embedder = w.name))))
"""

_CLAIM_ASSETS = text(
    f"""
    WITH claimed AS (
        SELECT a.id FROM assets a
        WHERE {_NEEDS_SCORING} AND (a.lease_until IS NULL OR a.lease_until < now())
        ORDER BY a.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE assets SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease)
    FROM claimed WHERE assets.id = claimed.id
    RETURNING assets.id
    """
)


def claim_assets(
    connection: Connection, wanted_scores: Sequence[tuple[str, str]], embedders: Sequence[str], limit: int,
    lease_seconds: float,
) -> list[int]:
    """Claim up to `limit` assets that need scoring: pending ones, and scored ones lacking the output of one of
    `wanted_scores` ((scorer, version)) or `embedders`."""
    ids = connection.execute(
        _CLAIM_ASSETS,
        {
            "scorers": json.dumps([{"name": name, "version": version} for name, version in wanted_scores]),
            "embedders": json.dumps(list(embedders)),
            "limit": limit,
            "owner": WORKER,
            "lease": lease_seconds,
        },
    ).scalars()
    return sorted(ids)


def lease_assets(connection: Connection, asset_ids: Sequence[int], lease_seconds: float) -> None:
    """Claim assets this worker just made pending (it scores them next, with the bytes it has in memory)."""
    if asset_ids:
        connection.execute(
            text("UPDATE assets SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease) "
                 "WHERE id = ANY(:ids)"),
            {"owner": WORKER, "lease": lease_seconds, "ids": list(asset_ids)},
        )


def renew_assets(connection: Connection, asset_ids: Sequence[int], lease_seconds: float) -> None:
    """Extend the live claims on `asset_ids` (ended ones stay ended): the batch is still being worked on."""
    if asset_ids:
        connection.execute(
            text("UPDATE assets SET lease_until = now() + make_interval(secs => :lease) "
                 "WHERE id = ANY(:ids) AND lease_until IS NOT NULL"),
            {"lease": lease_seconds, "ids": list(asset_ids)},
        )


def release_assets(connection: Connection, asset_ids: Sequence[int]) -> None:
    """End the scoring claims on `asset_ids`: their work is written (or deferred), in this transaction."""
    if asset_ids:
        connection.execute(
            text("UPDATE assets SET lease_owner = NULL, lease_until = NULL WHERE id = ANY(:ids) AND lease_until IS NOT NULL"),
            {"ids": list(asset_ids)},
        )


def log_work(connection: Connection, stage: str, items: int) -> None:
    """Record that this worker read `items` objects (stage 'fetch') or ran a model on them ('model:<name>')."""
    if items:
        connection.execute(
            text("INSERT INTO work_log (worker, stage, items) VALUES (:worker, :stage, :items)"),
            {"worker": WORKER, "stage": stage, "items": items},
        )


_OTHERS_INGESTING = text(
    """
    SELECT EXISTS (SELECT 1 FROM ingest_queue WHERE storage = :storage AND bucket = :bucket AND starts_with(key, :prefix)
                   AND lease_until > now() AND lease_owner <> :owner)
    """
)
_OTHERS_SCORING = text(
    f"SELECT EXISTS (SELECT 1 FROM assets a WHERE a.lease_until > now() AND a.lease_owner <> :owner AND {_NEEDS_SCORING})"
)


def others_ingesting(connection: Connection, storage: str, bucket: str, prefix: str) -> bool:
    """Whether other workers hold live claims on this source's queued objects: a run that waits for them ends
    with the source ingested, whoever did it (and takes over a dead worker's batch when its lease lapses)."""
    return bool(connection.execute(
        _OTHERS_INGESTING, {"storage": storage, "bucket": bucket, "prefix": prefix, "owner": WORKER}
    ).scalar_one())


def others_scoring(connection: Connection, wanted_scores: Sequence[tuple[str, str]], embedders: Sequence[str]) -> bool:
    """Whether other workers hold live claims on assets that need scoring."""
    return bool(connection.execute(
        _OTHERS_SCORING,
        {"owner": WORKER, "scorers": json.dumps([{"name": name, "version": version} for name, version in wanted_scores]),
         "embedders": json.dumps(list(embedders))},
    ).scalar_one())


def release_worker(connection: Connection) -> None:
    """Give back every claim this process holds: it is stopping, and the work should not wait for its leases."""
    for table in ("ingest_queue", "assets"):
        connection.execute(
            text(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :owner"),
            {"owner": WORKER},
        )
