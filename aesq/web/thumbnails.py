"""Thumbnails the dashboard shows: read through aesq's own storage access (credentials never leave the
server), only from the configured sources and the data folder, resized once and cached by content hash."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from sqlalchemy import text

from aesq.core.assets import NotFound
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Unreadable, fetch_asset
from aesq.core.storage import parse_location

SIZES = (128, 256, 512)


class OutsideStorage(PermissionError):
    """An asset whose location is not under the configured storage."""


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
        raise OutsideStorage(f"asset {asset_id} is not in the configured storage")
    cached = settings.data_dir / "thumbnails" / f"{row.sha256[:32]}-{size}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    image = fetch_asset(row, settings)
    if isinstance(image, Unreadable):
        raise NotFound(f"asset {asset_id} cannot be read: {image.reason}")
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
