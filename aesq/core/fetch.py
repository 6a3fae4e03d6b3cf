"""Fetching an asset's image: exactly the bytes that were ingested (from ingest's recent reads in this worker,
or from the storage), checked against their SHA-256 and decoded; or why that cannot be done.

Scoring, defect analysis, critiques, reports and thumbnails all read images this way, so they agree on
which bytes an asset is and on what an unreadable one is.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from PIL import Image

from aesq.core.config import Settings
from aesq.core.images import ImageRejected, PixelBudget, decode_image, pixel_budget
from aesq.core.storage import (
    STORAGE_ERRORS,
    Location,
    ObjectMissing,
    Source,
    StoredObject,
    one_line,
    open_location,
    recent_objects,
)


class Cause(Enum):
    """Why an asset's image cannot be had."""

    MISSING = "missing"  # gone from the storage, or not visible yet
    STORAGE_FAILED = "storage failed"  # the storage failed to hand it over (not this object's fault)
    CHANGED = "changed"  # the object holds other bytes than were ingested
    UNDECODABLE = "undecodable"  # the bytes are no image aesq can use


@dataclass(frozen=True)
class Unreadable:
    """An asset whose image cannot be had because of `cause`; `reason` says so in words (the asset's error)."""

    cause: Cause
    reason: str

    @property
    def transient(self) -> bool:
        """Whether a later try may succeed: everything but bytes that are no usable image."""
        return self.cause is not Cause.UNDECODABLE


class StoredAsset(Protocol):
    """Where an asset's bytes are and which bytes they are (a row of `assets`)."""

    @property
    def storage(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def sha256(self) -> str: ...


_reads = threading.local()


def _read_counted(source: Source, key: str) -> StoredObject:
    """Read an object from storage, counting the read for this thread's work log."""
    _reads.count = getattr(_reads, "count", 0) + 1
    return source.read(key)


def fetch_and_decode(
    source: Source, key: str, etag: str | None, sha256: str, max_pixels: int, budget: PixelBudget
) -> Image.Image | Unreadable:
    """The decoded image of exactly the bytes ingested as `sha256` (from ingest's recent reads when this
    worker has them), or why it cannot be had."""
    try:
        stored = recent_objects.take(source, key, etag) or _read_counted(source, key)
    except ObjectMissing as missing:
        return Unreadable(Cause.MISSING, str(missing))
    except STORAGE_ERRORS as error:
        return Unreadable(Cause.STORAGE_FAILED, f"cannot read {key}: {one_line(error)}")
    if hashlib.sha256(stored.data).hexdigest() != sha256:
        return Unreadable(
            Cause.CHANGED,
            f"{key} holds other bytes than were ingested (overwritten since); re-ingested on the next run",
        )
    try:
        return decode_image(stored.data, max_pixels, budget)
    except ImageRejected as rejected:
        return Unreadable(Cause.UNDECODABLE, str(rejected))


def asset_source(asset: StoredAsset, settings: Settings) -> Source:
    """The storage an asset was ingested from, reopened."""
    location = Location("s3", asset.bucket) if asset.storage == "s3" else Location("file", asset.bucket)
    return open_location(location, settings)


def fetch_asset(asset: StoredAsset, settings: Settings) -> Image.Image | Unreadable:
    """The decoded image of one asset, or why it cannot be had."""
    return fetch_and_decode(
        asset_source(asset, settings),
        asset.key,
        asset.etag,
        asset.sha256,
        settings.max_pixels,
        pixel_budget(settings.decode_pixel_budget),
    )


def fetch_assets(assets: list[StoredAsset], settings: Settings) -> tuple[list[Image.Image | Unreadable], int]:
    """`fetch_asset` of each asset on the fetch threads, in order, opening each storage location once; and how
    many objects were read from storage (the others came from ingest's recent reads)."""
    sources: dict[tuple[str, str], Source] = {}
    for asset in assets:
        sources.setdefault((asset.storage, asset.bucket), asset_source(asset, settings))
    budget = pixel_budget(settings.decode_pixel_budget)

    def fetch(asset: StoredAsset) -> tuple[Image.Image | Unreadable, int]:
        """The asset's image and how many storage reads it took (0 when ingest's copy was at hand)."""
        _reads.count = 0
        item = fetch_and_decode(
            sources[(asset.storage, asset.bucket)],
            asset.key,
            asset.etag,
            asset.sha256,
            settings.max_pixels,
            budget,
        )
        return item, _reads.count

    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        fetched = list(pool.map(fetch, assets))
    return [item for item, _ in fetched], sum(reads for _, reads in fetched)
