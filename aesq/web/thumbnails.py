"""Thumbnails the dashboard shows: read through aesq's own storage access (credentials never leave the
server), only from the configured sources and the data folder, resized once and cached by content hash.

Only configuration widens what may be read: the dashboard may listen beyond loopback (with a token), and an asset
row's location is whatever some run recorded, so a folder `aesq run` once read is no reason to serve files from it.
An asset outside the configured storage gets a placeholder that names its folder and AESQ_SOURCES instead, and
`aesq serve` says once which folders those are."""

from __future__ import annotations

import io
import os
import tempfile
from html import escape
from pathlib import Path

from sqlalchemy import text

from aesq.core.assets import NotFound
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Unreadable, fetch_asset
from aesq.core.storage import parse_location
from aesq.models.base import on_white

SIZES = (128, 256, 512)


class OutsideStorage(PermissionError):
    """An asset whose location is not under the configured storage."""

    def __init__(self, asset_id: int, where: str) -> None:
        super().__init__(f"asset {asset_id} is not shown: {where} is not in the configured storage (AESQ_SOURCES)")
        self.where = where


def _where(storage: str, bucket: str) -> str:
    """A location's folder or bucket as a person names it in AESQ_SOURCES."""
    return f"s3://{bucket}" if storage == "s3" else bucket


def placeholder(where: str, size: int) -> bytes:
    """An SVG image, in place of a thumbnail that is not shown, saying why and what to do."""
    shown = where if len(where) <= 30 else f"…{where[-29:]}"
    lines = ["not shown:", shown, "is not in AESQ_SOURCES —", "add it to see thumbnails"]
    text = "".join(
        f'<text x="50%" y="{38 + 14 * index}%" text-anchor="middle">{escape(line)}</text>'
        for index, line in enumerate(lines)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 256 256">'
        f"<title>not shown: {escape(where)} is not in AESQ_SOURCES — add it to see thumbnails</title>"
        '<rect width="256" height="256" fill="#eee"/>'
        f'<g font-family="system-ui, sans-serif" font-size="15" fill="#555">{text}</g></svg>'
    ).encode()


def folders_outside_storage(settings: Settings) -> list[str]:
    """The folders and buckets of recorded assets that are not in the configured storage (their thumbnails are
    placeholders), read by skipping from one (storage, bucket) to the next on the assets' unique index."""
    query = text(
        """
        WITH RECURSIVE places AS (
            (SELECT storage, bucket FROM assets ORDER BY storage, bucket LIMIT 1)
            UNION ALL
            SELECT next.storage, next.bucket FROM places, LATERAL (
                SELECT storage, bucket FROM assets WHERE (storage, bucket) > (places.storage, places.bucket)
                ORDER BY storage, bucket LIMIT 1) AS next
        )
        SELECT storage::text AS storage, bucket FROM places
        """
    )
    with get_engine(settings).connect() as connection:
        places = connection.execute(query).all()
    return [
        _where(place.storage, place.bucket) for place in places if not _allowed(place.storage, place.bucket, settings)
    ]


def _allowed(storage: str, bucket: str, settings: Settings) -> bool:
    """True when (storage, bucket) lies in a configured source or, for folders, the data folder."""
    sources = [parse_location(source) for source in settings.sources]
    if storage == "s3":
        return any(source.storage == "s3" and source.bucket == bucket for source in sources)
    folder = Path(bucket).resolve()
    roots = [Path(source.bucket) for source in sources if source.storage == "file"]
    roots.append(settings.data_dir.resolve())
    return any(folder.is_relative_to(root) for root in roots)


def thumbnail(settings: Settings, asset_id: int, size: int) -> bytes:
    """A JPEG of asset `asset_id` no larger than `size` on either side (from the cache when made before)."""
    if size not in SIZES:
        raise ValueError(f"thumbnail size must be one of {', '.join(map(str, SIZES))}")
    with get_engine(settings).connect() as connection:
        row = connection.execute(
            text("SELECT storage::text AS storage, bucket, key, etag, sha256 FROM assets WHERE id = :id"),
            {"id": asset_id},
        ).one_or_none()
    if row is None:
        raise NotFound(f"no asset {asset_id}")
    if not _allowed(row.storage, row.bucket, settings):
        raise OutsideStorage(asset_id, _where(row.storage, row.bucket))
    cached = settings.data_dir / "thumbnails" / f"{row.sha256[:32]}-{size}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    image = fetch_asset(row, settings)
    if isinstance(image, Unreadable):
        raise NotFound(f"asset {asset_id} cannot be read: {image.reason}")
    image = on_white(image)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    cached.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".part")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    os.replace(temporary, cached)
    return data
