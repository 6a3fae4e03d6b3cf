"""Ingest: find objects aesq has not seen, read their bytes once, and record assets with provenance.

Per-object problems (not an image, truncated, bomb, bad sidecar) become failed asset rows with a
reason; transient storage or database errors raise so the Prefect task retries the whole batch.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from aesq.batches import in_batches
from aesq.config import Settings
from aesq.database import get_engine
from aesq.images import ImageFacts, ImageRejected, inspect_image
from aesq.provenance import Provenance, ProvenanceError, read_provenance
from aesq.storage import ObjectMissing, Source, is_sidecar, open_source, recent_objects, sidecar_for
from aesq.store import AssetRecord, upsert_assets
from aesq.tables import Asset

log = logging.getLogger(__name__)


def discover(source_uri: str, settings: Settings) -> list[list[str]]:
    """Keys under the source that are new or changed (by ETag), `batch_size` images a batch, plus their sidecars."""
    source = open_source(source_uri, settings)
    known_query = select(Asset.key, Asset.etag).where(
        Asset.storage == source.storage, Asset.bucket == source.bucket, Asset.key.startswith(source.prefix)
    )
    with get_engine(settings).connect() as connection:
        known = dict(connection.execute(known_query).all())
    listed = list(source.list())
    present = {item.key for item in listed}
    new_keys = [
        item.key
        for item in listed
        if not is_sidecar(item.key) and (item.key not in known or known[item.key] != item.etag)
    ]
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


def _examine(source: Source, key: str, sidecar_key: str | None, max_pixels: int) -> AssetRecord | None:
    """Read one object into an asset record (failed ones carry the reason); None if it vanished."""
    try:
        stored = source.read(key)
    except ObjectMissing as missing:
        log.warning("skipping %s: %s", key, missing)
        return None
    facts: ImageFacts | None = None
    provenance: Provenance | None = None
    error: str | None = None
    try:
        facts = inspect_image(stored.data, max_pixels)
        provenance = read_provenance(key, stored.metadata, _read_sidecar(source, sidecar_key))
        recent_objects.put(source, key, stored)
    except (ImageRejected, ProvenanceError) as rejected:
        error = str(rejected)
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
    """Record the images among `keys` (the rest are their sidecars); returns the ids now waiting for scores."""
    source = open_source(source_uri, settings)
    listed = set(keys)
    images = [key for key in keys if not is_sidecar(key)]
    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        examined = list(
            pool.map(lambda key: _examine(source, key, sidecar_for(key, listed), settings.max_pixels), images)
        )
    records = [record for record in examined if record is not None]
    with get_engine(settings).begin() as connection:
        return upsert_assets(connection, records)
