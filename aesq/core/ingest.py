"""Ingest: read the bytes of queued objects (found by `aesq.core.discovery` or a notification) once, and record
assets with provenance.

Per-object problems (not an image, truncated, bomb, bad sidecar, any surprise from a decoder) become
failed asset rows with a reason; transient storage or database errors raise so the Prefect task
retries the whole batch. Which asset holds each content's scores follows `aesq.core.identity`.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from aesq.core import claims
from aesq.core.claims import (
    Queued,
    claim_objects,
    defer_objects,
    finish_objects,
    lease_assets,
    log_work,
    release_objects,
)
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.images import (
    ImageFacts,
    ImageRejected,
    PixelBudget,
    inspect_image,
    pixel_budget,
)
from aesq.core.provenance import Provenance, ProvenanceError, read_provenance
from aesq.core.storage import (
    STORAGE_ERRORS,
    ObjectMissing,
    Source,
    StorageUnavailable,
    StoredObject,
    one_line,
    open_source,
    recent_objects,
    sidecar_candidates,
)
from aesq.core.writes import AssetRecord, upsert_assets

log = logging.getLogger(__name__)


def _read_sidecar(source: Source, queued: Queued) -> tuple[str, StoredObject] | None:
    """The sidecar's key and contents, or None when there is none (or it vanished since listing); for an object
    a notification queued, the sidecar names are tried in turn."""
    candidates = [queued.sidecar] if queued.listed else sidecar_candidates(queued.key)
    for key in candidates:
        if key is None:
            continue
        try:
            return key, source.read(key)
        except ObjectMissing:
            continue
    return None


def _examine(source: Source, queued: Queued, max_pixels: int, budget: PixelBudget) -> AssetRecord | None:
    """Read one object into an asset record (failed ones carry the reason); None if it vanished."""
    key = queued.key
    try:
        stored = source.read(key)
    except ObjectMissing as missing:
        log.warning("skipping %s: %s", key, missing)
        return None
    facts: ImageFacts | None = None
    provenance: Provenance | None = None
    error: str | None = None
    sidecar = _read_sidecar(source, queued)  # storage errors raise: the task retries the batch
    try:
        facts = inspect_image(stored.data, max_pixels, budget)
        provenance = read_provenance(key, stored.metadata, sidecar[1].data if sidecar else None)
        recent_objects.put(source, key, stored)
    except (ImageRejected, ProvenanceError) as rejected:
        error = str(rejected)
    except Exception as unexpected:  # one object's surprise never costs the rest of the batch
        log.exception("examining %s failed", key)
        error = f"cannot examine the object: {type(unexpected).__name__}: {one_line(unexpected)}"
    return AssetRecord(
        storage=source.storage,
        bucket=source.bucket,
        key=key,
        sha256=hashlib.sha256(stored.data).hexdigest(),
        etag=stored.etag,
        size_bytes=len(stored.data),
        facts=facts,
        provenance=provenance,
        error=error,
        sidecar_key=sidecar[0] if sidecar else None,
        sidecar_etag=sidecar[1].etag if sidecar else None,
    )


def claim_batch(source_uri: str, settings: Settings) -> list[Queued]:
    """Claim the next batch of `source_uri`'s queued objects for this worker (empty when none is free)."""
    source = open_source(source_uri, settings)
    with get_engine(settings).begin() as connection:
        return claim_objects(
            connection, source.storage, source.bucket, source.prefix, settings.batch_size, settings.lease_seconds
        )


def others_ingesting(source_uri: str, settings: Settings) -> bool:
    """Whether other workers still hold claims on `source_uri`'s queued objects."""
    source = open_source(source_uri, settings)
    with get_engine(settings).connect() as connection:
        return claims.others_ingesting(connection, source.storage, source.bucket, source.prefix)


def ingest(source_uri: str, claimed: list[Queued], settings: Settings, score_next: bool = False) -> list[int]:
    """Record the claimed objects as assets and take them out of the queue; returns the ids now waiting for
    scores; with `score_next` (this worker scores them next, with their bytes in memory) only those it could
    claim for that.

    An object the storage fails to hand over stays queued, for another try after a back-off; when the
    storage fails for every object, the batch raises so the task is retried.
    """
    source = open_source(source_uri, settings)
    budget = pixel_budget(settings.decode_pixel_budget)

    def examine(queued: Queued) -> AssetRecord | Exception | None:
        """One object's record, or the storage error that kept it from being read."""
        try:
            return _examine(source, queued, settings.max_pixels, budget)
        except STORAGE_ERRORS as error:
            return error

    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        examined = dict(zip(claimed, pool.map(examine, claimed)))
    unread = {queued.key: error for queued, error in examined.items() if isinstance(error, Exception)}
    if unread and len(unread) == len(claimed):
        with get_engine(settings).begin() as connection:  # the storage is down: free for the retry or the next run
            release_objects(connection, source.storage, source.bucket, unread)
        raise StorageUnavailable(
            f"cannot read {len(unread)} objects of {source.uri}: {one_line(next(iter(unread.values())))}"
        )
    records = {record.key: record for record in examined.values() if isinstance(record, AssetRecord)}
    done = {
        q.key: {q.etag} | ({records[q.key].etag} if q.key in records else set()) for q in claimed if q.key not in unread
    }
    with get_engine(settings).begin() as connection:
        waiting = upsert_assets(connection, list(records.values()))
        finish_objects(connection, source.storage, source.bucket, done)
        given_up = defer_objects(
            connection, source.storage, source.bucket, unread, settings.retry_attempts, settings.retry_backoff_seconds
        )
        log_work(connection, "fetch", len(claimed) - len(unread))
        if score_next:  # only what no other worker is scoring (a copy's content may be in another's batch)
            waiting = lease_assets(connection, waiting, settings.lease_seconds)
    for key, error in unread.items():
        log.warning("%s %s: %s", "gave up on" if key in given_up else "will try again", key, one_line(error))
    return waiting
