"""Discovery: list a source and queue the objects that are new, changed or back, for workers to claim.

PLACEHOLDER (being rewritten to stream pages and check them in the database): lists whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from aesq.batches import in_batches
from aesq.claims import Listed, queue_objects
from aesq.config import Settings
from aesq.database import get_engine
from aesq.storage import is_sidecar, open_source, sidecar_for
from aesq.store import mark_deleted
from aesq.tables import Asset

DELETIONS_PER_TRANSACTION = 1000


@dataclass(frozen=True)
class Discovered:
    """What one discovery found."""

    listed: int
    queued: int
    deleted: int


def discover(source_uri: str, settings: Settings) -> Discovered:
    """List the source; queue keys that are new, changed (by ETag) or back after being deleted; mark known
    objects no longer listed deleted."""
    source = open_source(source_uri, settings)
    known_query = select(Asset.key, Asset.etag, Asset.status).where(
        Asset.storage == source.storage, Asset.bucket == source.bucket, Asset.key.startswith(source.prefix, autoescape=True)
    )
    with get_engine(settings).connect() as connection:
        known = {row.key: row for row in connection.execute(known_query)}
    listed = list(source.list())
    present = {item.key for item in listed}
    queued = [
        Listed(item.key, item.etag, sidecar_for(item.key, present), changed=item.key in known and known[item.key].status != "deleted")
        for item in listed
        if not is_sidecar(item.key)
        and (item.key not in known or known[item.key].status == "deleted" or known[item.key].etag != item.etag)
    ]
    with get_engine(settings).begin() as connection:
        queue_objects(connection, source.storage, source.bucket, queued)
    gone = sorted(key for key, row in known.items() if key not in present and row.status != "deleted")
    for keys in in_batches(gone, DELETIONS_PER_TRANSACTION):
        with get_engine(settings).begin() as connection:
            mark_deleted(connection, source.storage, source.bucket, keys)
    return Discovered(listed=len(listed), queued=len(queued), deleted=len(gone))
