"""Claimed work: how any number of workers share ingest and scoring without doing anything twice.

Objects to ingest wait in `ingest_queue`; assets to score are the pending ones (and scored ones lacking
a model enabled since: backfill). A worker claims a batch of either with `FOR UPDATE SKIP LOCKED`, which
sets a lease on the rows: other workers skip them until the work is written (ingest deletes the queue
rows, scoring ends the claim, in the same transaction as the results) or the lease lapses, when a
killed worker's batch returns to the others. A worker renews, ends and defers only the claims it holds.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

if TYPE_CHECKING:
    from aesq.core.storage import Location

# Who holds a lease: host and process (shown to operators), made unique for containers that share both.
WORKER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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
    listed: bool = True
    sidecar_etag: str | None = None  # as listed: another than the asset was ingested with queues it again


# Objects already recorded with the same ETag (and, when listed, the same sidecar) are left out in the same
# statement that queues the rest, so an ingest committing meanwhile cannot have its object queued again;
# `changed` (a known key with other bytes) is decided here too.
_QUEUE = text(
    """
    INSERT INTO ingest_queue AS q (storage, bucket, key, etag, sidecar, changed, listed)
    SELECT :storage, :bucket, o.key, o.etag, o.sidecar,
           coalesce(a.status <> 'deleted' AND (o.etag IS NULL OR a.etag IS DISTINCT FROM o.etag), false), o.listed
    FROM jsonb_to_recordset(CAST(:objects AS jsonb))
        AS o(key text, etag text, sidecar text, sidecar_etag text, listed bool)
    LEFT JOIN assets a ON a.storage = :storage AND a.bucket = :bucket AND a.key = o.key
    WHERE a.id IS NULL OR a.status = 'deleted' OR o.etag IS NULL OR a.etag IS DISTINCT FROM o.etag
       OR o.listed AND (a.sidecar_key, a.sidecar_etag) IS DISTINCT FROM (o.sidecar, o.sidecar_etag)
    ORDER BY o.key
    ON CONFLICT (storage, bucket, key) DO UPDATE
        SET etag = excluded.etag, sidecar = coalesce(excluded.sidecar, q.sidecar),
            changed = q.changed OR excluded.changed, listed = excluded.listed OR q.sidecar IS NOT NULL
        WHERE q.etag IS DISTINCT FROM excluded.etag
           OR excluded.sidecar IS NOT NULL AND q.sidecar IS DISTINCT FROM excluded.sidecar
    RETURNING q.key
    """
)


def queue_objects(connection: Connection, storage: str, bucket: str, objects: Sequence[Listed]) -> int:
    """Put the objects not yet recorded with their ETag (or, when listed, their sidecar's) in the ingest queue;
    one already waiting takes the newer ETag (and keeps any claim on it). Returns how many were queued or
    updated."""
    if not objects:
        return 0
    payload = [
        {"key": o.key, "etag": o.etag, "sidecar": o.sidecar, "sidecar_etag": o.sidecar_etag, "listed": o.listed}
        for o in objects
    ]
    return len(connection.execute(_QUEUE, {"storage": storage, "bucket": bucket, "objects": json.dumps(payload)}).all())


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
        {
            "storage": storage,
            "bucket": bucket,
            "prefix": prefix,
            "limit": limit,
            "owner": WORKER,
            "lease": lease_seconds,
        },
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
    WHERE (q.storage, q.bucket, q.key) = (:storage, :bucket, done.key) AND q.lease_owner = :owner
      AND q.key NOT IN (SELECT key FROM removed)
    """
)


def finish_objects(connection: Connection, storage: str, bucket: str, done: dict[str, set[str | None]]) -> None:
    """Take ingested objects out of the queue: `done` maps each key to the ETags it was claimed and read
    with. One queued again with yet another ETag meanwhile stays, unclaimed, for the next worker."""
    payload = [{"key": key, "etag": etag} for key, etags in done.items() for etag in etags]
    if payload:
        connection.execute(
            _FINISH_OBJECTS, {"storage": storage, "bucket": bucket, "objects": json.dumps(payload), "owner": WORKER}
        )


def release_objects(connection: Connection, storage: str, bucket: str, keys: Iterable[str]) -> None:
    """Give claimed objects back at once, their tries uncounted: the storage failed, not these objects."""
    keys = sorted(keys)
    if keys:
        connection.execute(
            text(
                "UPDATE ingest_queue SET lease_owner = NULL, lease_until = NULL "
                "WHERE storage = :storage AND bucket = :bucket AND key = ANY(:keys) AND lease_owner = :owner"
            ),
            {"storage": storage, "bucket": bucket, "keys": keys, "owner": WORKER},
        )


_DEFER_OBJECTS = text(
    """
    UPDATE ingest_queue SET attempts = attempts + 1, lease_owner = NULL,
        lease_until = now() + make_interval(secs => :backoff * 2 ^ attempts)
    WHERE storage = :storage AND bucket = :bucket AND key = ANY(:keys) AND lease_owner = :owner
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
    """Claimed objects the storage failed to hand over (while it handed over others) wait `backoff_seconds`
    × 2^(tries so far) before a worker may claim them again; after `attempts` tries they leave the queue
    (the next full listing finds them again). Returns the keys given up on."""
    params = {
        "storage": storage,
        "bucket": bucket,
        "keys": sorted(keys),
        "limit": attempts,
        "backoff": backoff_seconds,
        "owner": WORKER,
    }
    if not params["keys"]:
        return []
    connection.execute(_DEFER_OBJECTS, params)
    return sorted(connection.execute(_GIVE_UP_OBJECTS, params).scalars())


_CLAIM_PENDING = text(
    """
    WITH claimed AS (
        SELECT id FROM assets
        WHERE status = 'pending' AND (retry_after IS NULL OR retry_after <= now())
          AND (lease_until IS NULL OR lease_until < now())
          AND (CAST(:storage AS text) IS NULL OR storage = :storage AND bucket = :bucket AND starts_with(key, :prefix))
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE assets SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease)
    FROM claimed WHERE assets.id = claimed.id
    RETURNING assets.id
    """
)

# Scored assets after `:after` (in id order, so a run's backfill scans the table once) lacking the output
# of an enabled scorer version or embedder.
_CLAIM_BACKFILL = text(
    """
    WITH claimed AS (
        SELECT a.id FROM assets a
        WHERE a.status = 'scored' AND a.id > :after AND (a.lease_until IS NULL OR a.lease_until < now())
          AND (CAST(:storage AS text) IS NULL
               OR a.storage = :storage AND a.bucket = :bucket AND starts_with(a.key, :prefix))
          AND (EXISTS (SELECT 1 FROM jsonb_to_recordset(CAST(:scorers AS jsonb)) AS w(name text, version text)
                       WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.asset_id = a.id
                                         AND s.scorer = w.name AND s.scorer_version = w.version))
            OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(:embedders AS jsonb)) AS w(name)
                       WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.asset_id = a.id AND e.embedder = w.name)))
        ORDER BY a.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE assets SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease)
    FROM claimed WHERE assets.id = claimed.id
    RETURNING assets.id
    """
)


def _within(location: Location | None) -> dict[str, str | None]:
    """The claim queries' source filter: assets under `location` only, or (None) anywhere."""
    if location is None:
        return {"storage": None, "bucket": "", "prefix": ""}
    return {"storage": location.storage, "bucket": location.bucket, "prefix": location.prefix}


def claim_pending(
    connection: Connection, limit: int, lease_seconds: float, within: Location | None = None
) -> list[int]:
    """Claim up to `limit` pending assets due for scoring (deferred ones once their back-off has passed), of
    the source at `within` only when given."""
    params = {"limit": limit, "owner": WORKER, "lease": lease_seconds, **_within(within)}
    return sorted(connection.execute(_CLAIM_PENDING, params).scalars())


def claim_backfill(
    connection: Connection,
    wanted_scores: Sequence[tuple[str, str]],
    embedders: Sequence[str],
    after: int,
    limit: int,
    lease_seconds: float,
    within: Location | None = None,
) -> list[int]:
    """Claim up to `limit` scored assets with ids above `after` (of the source at `within` only, when given)
    that lack the output of one of `wanted_scores` ((scorer, version)) or `embedders`: models enabled since
    they were scored."""
    return sorted(
        connection.execute(
            _CLAIM_BACKFILL,
            {
                "scorers": json.dumps([{"name": name, "version": version} for name, version in wanted_scores]),
                "embedders": json.dumps(list(embedders)),
                "after": after,
                "limit": limit,
                "owner": WORKER,
                "lease": lease_seconds,
                **_within(within),
            },
        ).scalars()
    )


def lease_assets(connection: Connection, asset_ids: Sequence[int], lease_seconds: float) -> list[int]:
    """Claim the assets among `asset_ids` that no other worker holds (this worker scores them next, or keeps
    them from being taken again in this run); returns those it holds now."""
    if not asset_ids:
        return []
    return sorted(
        connection.execute(
            text(
                "UPDATE assets SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease) "
                "WHERE id = ANY(:ids) AND (lease_until IS NULL OR lease_until < now() OR lease_owner = :owner) "
                "RETURNING id"
            ),
            {"owner": WORKER, "lease": lease_seconds, "ids": list(asset_ids)},
        ).scalars()
    )


def renew_assets(connection: Connection, asset_ids: Sequence[int], lease_seconds: float) -> None:
    """Extend this worker's claims on `asset_ids` (ended ones stay ended): the batch is still being worked on."""
    if asset_ids:
        connection.execute(
            text(
                "UPDATE assets SET lease_until = now() + make_interval(secs => :lease) "
                "WHERE id = ANY(:ids) AND lease_owner = :owner"
            ),
            {"lease": lease_seconds, "ids": list(asset_ids), "owner": WORKER},
        )


def release_assets(connection: Connection, asset_ids: Sequence[int]) -> None:
    """End this worker's claims on `asset_ids`: their work is written (or deferred), in this transaction."""
    if asset_ids:
        connection.execute(
            text(
                "UPDATE assets SET lease_owner = NULL, lease_until = NULL WHERE id = ANY(:ids) AND lease_owner = :owner"
            ),
            {"ids": list(asset_ids), "owner": WORKER},
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
    """
    SELECT EXISTS (SELECT 1 FROM assets WHERE lease_until > now() AND lease_owner <> :owner
                   AND (CAST(:storage AS text) IS NULL
                        OR storage = :storage AND bucket = :bucket AND starts_with(key, :prefix)))
    """
)


def others_ingesting(connection: Connection, storage: str, bucket: str, prefix: str) -> bool:
    """Whether other workers hold live claims on this source's queued objects: a run that waits for them ends
    with the source ingested, whoever did it (and takes over a dead worker's batch when its lease lapses)."""
    return bool(
        connection.execute(
            _OTHERS_INGESTING, {"storage": storage, "bucket": bucket, "prefix": prefix, "owner": WORKER}
        ).scalar_one()
    )


def others_scoring(connection: Connection, storage: str | None = None, bucket: str = "", prefix: str = "") -> bool:
    """Whether other workers hold live claims on assets (of one source when `storage` is given): scoring
    them, or keeping deferred ones for later."""
    return bool(
        connection.execute(
            _OTHERS_SCORING, {"owner": WORKER, "storage": storage, "bucket": bucket, "prefix": prefix}
        ).scalar_one()
    )


def release_worker(connection: Connection) -> None:
    """Give back every claim this process holds: it is stopping, and the work should not wait for its leases."""
    for table in ("ingest_queue", "assets"):
        connection.execute(
            text(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :owner"),
            {"owner": WORKER},
        )
