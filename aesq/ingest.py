"""Ingest: find objects aesq has not seen, read their bytes once, and record assets with provenance.

Per-object problems (not an image, truncated, bomb, bad sidecar, any surprise from a decoder) become
failed asset rows with a reason; transient storage or database errors raise so the Prefect task
retries the whole batch. Which asset holds each content's scores follows `aesq.identity`.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from aesq.batches import in_batches
from aesq.config import Settings
from aesq.database import get_engine
from aesq.images import ImageFacts, ImageRejected, PixelBudget, inspect_image, pixel_budget
from aesq.provenance import Provenance, ProvenanceError, read_provenance
from aesq.storage import (
    STORAGE_ERRORS,
    ObjectMissing,
    StorageUnavailable,
    Source,
    is_sidecar,
    one_line,
    open_source,
    recent_objects,
    sidecar_for,
)
from aesq.store import AssetRecord, mark_deleted, upsert_assets
from aesq.tables import Asset

log = logging.getLogger(__name__)
DELETIONS_PER_TRANSACTION = 1000


def discover(source_uri: str, settings: Settings) -> list[list[str]]:
    """List the source once: keys that are new, changed (by ETag) or back after being deleted, `batch_size`
    images a batch plus their sidecars; known objects no longer listed are marked deleted."""
    source = open_source(source_uri, settings)
    known_query = select(Asset.key, Asset.etag, Asset.status).where(
        Asset.storage == source.storage, Asset.bucket == source.bucket, Asset.key.startswith(source.prefix, autoescape=True)
    )
    with get_engine(settings).connect() as connection:
        known = {row.key: row for row in connection.execute(known_query)}
    listed = list(source.list())
    present = {item.key for item in listed}
    images = [item for item in listed if not is_sidecar(item.key)]
    changed = [item.key for item in images if item.key in known and known[item.key].etag != item.etag]
    fresh = [item.key for item in images if item.key not in known or known[item.key].status == "deleted"]
    # Changed keys first and together: objects that swapped or moved bytes among them land in one batch
    # (up to batch_size of them), where their contents' scores move instead of being computed again.
    new_keys = list(dict.fromkeys(changed + fresh))
    gone = sorted(key for key, row in known.items() if key not in present and row.status != "deleted")
    for keys in in_batches(gone, DELETIONS_PER_TRANSACTION):
        with get_engine(settings).begin() as connection:
            mark_deleted(connection, source.storage, source.bucket, keys)
    # Each batch carries its images' sidecar keys, so ingest reads only sidecars that exist.
    return [
        batch + [sidecar for key in batch if (sidecar := sidecar_for(key, present))]
        for batch in in_batches(new_keys, settings.batch_size)
    ]


def _read_sidecar(source: Source, sidecar_key: str | None) -> bytes | None:
    """The sidecar's bytes, or None when there is none (or it vanished since listing)."""
    if sidecar_key is None:
        return None
    try:
        return source.read(sidecar_key).data
    except ObjectMissing:
        return None


def _examine(
    source: Source, key: str, sidecar_key: str | None, max_pixels: int, budget: PixelBudget
) -> AssetRecord | None:
    """Read one object into an asset record (failed ones carry the reason); None if it vanished."""
    try:
        stored = source.read(key)
    except ObjectMissing as missing:
        log.warning("skipping %s: %s", key, missing)
        return None
    facts: ImageFacts | None = None
    provenance: Provenance | None = None
    error: str | None = None
    sidecar = _read_sidecar(source, sidecar_key)  # storage errors raise: the task retries the batch
    try:
        facts = inspect_image(stored.data, max_pixels, budget)
        provenance = read_provenance(key, stored.metadata, sidecar)
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
    )


def ingest(source_uri: str, keys: list[str], settings: Settings) -> list[int]:
    """Record the images among `keys` (the rest are their sidecars); returns the ids now waiting for scores.

    An object the storage fails to hand over is left for the next run (its row, if any, untouched);
    when the storage fails for every object, the batch raises so the task is retried.
    """
    source = open_source(source_uri, settings)
    listed = set(keys)
    images = [key for key in keys if not is_sidecar(key)]
    budget = pixel_budget(settings.decode_pixel_budget)

    def examine(key: str) -> AssetRecord | None | Exception:
        """One object's record, or the storage error that kept it from being read."""
        try:
            return _examine(source, key, sidecar_for(key, listed), settings.max_pixels, budget)
        except STORAGE_ERRORS as error:
            return error

    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        examined = dict(zip(images, pool.map(examine, images)))
    unread = {key: error for key, error in examined.items() if isinstance(error, Exception)}
    if unread and len(unread) == len(images):
        raise StorageUnavailable(f"cannot read {len(unread)} objects of {source.uri}: {one_line(next(iter(unread.values())))}")
    for key, error in unread.items():
        log.warning("left %s for the next run: %s", key, one_line(error))
    records = [record for record in examined.values() if isinstance(record, AssetRecord)]
    with get_engine(settings).begin() as connection:
        return upsert_assets(connection, records)
