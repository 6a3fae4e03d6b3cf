"""Discovery: list a source and queue the objects that are new, changed or back, for workers to claim.

The listing is streamed in pages (`PAGE_SIZE` keys); nothing proportional to the source is held in Python.
Each page is COPYed into a temporary table of this session's database connection, and one anti-join
against `assets` finds the page's images that are new, changed (another ETag, or another sidecar than the
asset was ingested with: fixing, adding or removing a sidecar re-ingests its image's provenance) or back
after being deleted; those are queued and committed with the page, so workers claim them while the listing goes on.

Sidecars: an image's sidecar (`a/b.png.json`, else `a/b.json`) may be listed on a later page than the
image. Listings come in binary key order, so an image waits (in the database) until the listing has
passed both of its candidates, then takes its sidecar from the keys listed so far.

A full listing ends by marking deleted the source's live assets that it did not list (an anti-join in the
database, streamed in chunks). Sources in `settings.ordered_sources` (new keys always sort after the
existing ones) are polled from a per-source cursor instead: only the keys after the greatest key seen are
listed, so a poll costs what is new; every `full_listing_seconds` a full listing runs anyway, to find
overwrites and deletions, and records when it ran.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import psycopg
from sqlalchemy import Connection, text

from aesq.core.claims import Listed, queue_objects
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.storage import (
    Source,
    SourceError,
    is_sidecar,
    open_source,
    sidecar_candidates,
)
from aesq.core.writes import mark_deleted

PAGE_SIZE = 2000  # keys COPYed and checked per round trip; Python holds one page at a time
# The sidecar ETag (with no sidecar key) of assets ingested before sidecars were recorded (migration 0013):
# ingest never writes it; the next listing adopts the sidecar it lists or re-ingests the asset (`_READY`).
UNRECORDED = "(not recorded)"
DELETIONS_PER_TRANSACTION = 1000

# The session's temporary table: every key listed so far (sidecar look-ups, deletions); an image also has
# its sidecar candidates and `ready_at`, the greater of them: once the listing has passed it, any sidecar
# there is has been listed.
_CREATE = (
    "DROP TABLE IF EXISTS pg_temp.discovery_listed, pg_temp.discovery_gone",
    'CREATE TEMP TABLE discovery_listed (key text PRIMARY KEY, etag text, first text, second text, ready_at text COLLATE "C")',
    "CREATE INDEX ON discovery_listed (ready_at)",
)
_DROP = "DROP TABLE IF EXISTS pg_temp.discovery_listed, pg_temp.discovery_gone"

# The images that became ready since the previous page (`ready_at` in (:after, :upto]; to the end once the
# listing is over), compared with their assets: new keys, other ETags, deleted ones back, or another sidecar
# (key or ETag) than the asset was ingested with, where the listing covered the sidecar's candidates (a poll
# after a cursor may not have). Their sidecar is the first candidate listed.
# An asset ingested before sidecars were recorded (UNRECORDED) adopts the listed sidecar as the one it was
# ingested with (`adopt`, nothing downloaded again) only where its row shows it was ingested with provenance
# or none is listed: not failed, and no sidecar listed or stored as generated. The others are ingested again:
# a failed asset (its reason may be a sidecar since fixed) and a crawled one with a sidecar listed (what an
# image ingested before its sidecar was uploaded looks like, unless its key layout names a generator). Only
# those rows are read again, so a sidecar that arrived late does not stay unread for good.
# Every look-up is a LATERAL ... LIMIT 1, so it stays an index probe per image whatever the planner guesses
# about the growing temporary table (it has no statistics; a hashed subplan would read the whole table on
# every page).
_READY = """
    SELECT * FROM (
        SELECT r.key, r.etag, coalesce(f.key, s.key) AS sidecar, coalesce(f.etag, s.etag) AS sidecar_etag,
               least(r.first COLLATE "C", r.second COLLATE "C") AS earliest, a.id AS asset_id,
               a.id IS NULL OR a.status = 'deleted' OR a.etag IS DISTINCT FROM r.etag AS changed,
               CAST(:start_after AS text) IS NULL
                   OR least(r.first COLLATE "C", r.second COLLATE "C") > CAST(:start_after AS text) COLLATE "C"
                   AS covered,
               coalesce(
                   a.sidecar_key IS NULL AND a.sidecar_etag = :unrecorded AND a.status <> 'failed'
                       AND (coalesce(f.key, s.key) IS NULL OR a.source_kind = 'generated'),
                   false
               ) AS adopt,
               (a.sidecar_key, a.sidecar_etag) IS DISTINCT FROM (coalesce(f.key, s.key), coalesce(f.etag, s.etag))
                   AS other_sidecar
        FROM discovery_listed r
        LEFT JOIN LATERAL (
            SELECT a.id, a.status, a.etag, a.source_kind, a.sidecar_key, a.sidecar_etag FROM assets a
            WHERE a.storage = :storage AND a.bucket = :bucket AND a.key = r.key LIMIT 1
        ) a ON true
        LEFT JOIN LATERAL (SELECT f.key, f.etag FROM discovery_listed f WHERE f.key = r.first LIMIT 1) f ON true
        LEFT JOIN LATERAL (SELECT s.key, s.etag FROM discovery_listed s WHERE s.key = r.second LIMIT 1) s
            ON f.key IS NULL
        WHERE r.ready_at > CAST(:after AS text) {upto}
    ) ready
    WHERE changed OR covered AND other_sidecar
"""
_READY_UPTO = text(_READY.format(upto="AND r.ready_at <= CAST(:upto AS text)"))
_READY_REST = text(_READY.format(upto=""))
# The sidecar listed with an asset ingested before sidecars were recorded, taken as the one it was ingested with
# (only where `_READY` says it may be).
_ADOPT = text(
    """
    UPDATE assets a SET sidecar_key = u.sidecar, sidecar_etag = u.sidecar_etag
    FROM unnest(CAST(:ids AS bigint[]), CAST(:sidecars AS text[]), CAST(:etags AS text[])) AS u(id, sidecar, sidecar_etag)
    WHERE a.id = u.id AND a.sidecar_key IS NULL AND a.sidecar_etag = :unrecorded
    """
)

# The source's live assets a full listing did not list, as they stood when it began (an asset written
# meanwhile, e.g. by a notification for an object uploaded behind the listing, waits for the next one).
_GONE = text(
    """
    CREATE TEMP TABLE discovery_gone AS
    SELECT a.key FROM assets a
    WHERE a.storage = :storage AND a.bucket = :bucket AND starts_with(a.key, :prefix)
      AND a.status <> 'deleted' AND a.updated_at < :started
      AND NOT EXISTS (SELECT 1 FROM discovery_listed l WHERE l.key = a.key)
    """
)
_TAKE_GONE = text(
    """
    DELETE FROM discovery_gone WHERE key IN (SELECT key FROM discovery_gone ORDER BY key LIMIT :limit)
    RETURNING key
    """
)


@dataclass(frozen=True)
class Discovered:
    """What one discovery found."""

    listed: int
    queued: int
    deleted: int
    full: bool = True  # a full listing (deletions looked for); False: an ordered source's poll after its cursor


@dataclass(frozen=True)
class _Cursor:
    after_key: str | None
    full_listing_at: datetime | None


def _normalised(uri: str, settings: Settings) -> str:
    """The URI as `open_source` names the source (a folder's absolute path), or as written if it cannot open."""
    try:
        return open_source(uri, settings).uri
    except SourceError:
        return uri


def is_ordered(source: Source, settings: Settings) -> bool:
    """Whether the settings say the source's new keys always sort after its existing ones."""
    return source.uri in {_normalised(uri, settings) for uri in settings.ordered_sources}


def _candidates(key: str) -> tuple[str, str]:
    """The image's two sidecar candidates, as `sidecar_candidates` gives them.

    Computed on the string for plain keys: pathlib would parse each key and intern its every part, churning
    the interpreter's table of interned strings (a rebuild of several MB now and then) over a long listing.
    Keys pathlib would normalise (`//`, `/./`, a leading `/` or `./`, a trailing `/`) go through it."""
    if "//" in key or "/./" in key or key.startswith(("/", "./")) or key.endswith(("/", "/.")) or key == ".":
        try:
            first, second = sidecar_candidates(key)
        except ValueError:  # a name PurePosixPath cannot give a suffix
            first = second = f"{key}.json"
        return first, second
    directory, _, name = key.rpartition("/")
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name
    return f"{key}.json", f"{directory}/{stem}.json" if directory else f"{stem}.json"


def _copy_page(connection: Connection, page: list[tuple[str, str | None]]) -> None:
    """Add a listed page to the temporary table: every key, the images with their sidecar candidates."""
    cursor = cast(psycopg.Connection, connection.connection.driver_connection).cursor()
    with cursor.copy("COPY discovery_listed (key, etag, first, second, ready_at) FROM STDIN") as copy:
        for key, etag in page:
            if is_sidecar(key):
                copy.write_row((key, etag, None, None, None))
            else:
                first, second = _candidates(key)
                copy.write_row((key, etag, first, second, max(first, second)))  # str order is code point order


def _queue_ready(connection: Connection, source: Source, after: str, upto: str | None, start_after: str | None) -> int:
    """Queue the images that are new, changed (bytes or sidecar) or back and whose sidecar candidates the
    listing passed since the previous page: `ready_at` in (`after`, `upto`], `upto` being the greatest key
    listed so far (None: the listing ended); assets whose sidecar was never recorded adopt the listed one
    or are queued again, as `_READY` decides. How many were queued."""
    params = {
        "after": after,
        "upto": upto,
        "start_after": start_after,
        "storage": source.storage,
        "bucket": source.bucket,
        "unrecorded": UNRECORDED,
    }
    rows = connection.execute(_READY_REST if upto is None else _READY_UPTO, params).all()
    if adopted := [row for row in rows if row.covered and row.adopt and not row.changed]:
        connection.execute(
            _ADOPT,
            {
                "ids": [row.asset_id for row in adopted],
                "sidecars": [row.sidecar for row in adopted],
                "etags": [row.sidecar_etag for row in adopted],
                "unrecorded": UNRECORDED,
            },
        )
    queued = [
        Listed(
            row.key,
            row.etag,
            row.sidecar,
            # A poll did not list the keys up to its cursor: a candidate there may exist unseen, so ingest
            # looks for the sidecar itself.
            listed=row.sidecar is not None or start_after is None or row.earliest > start_after,
            sidecar_etag=row.sidecar_etag,
        )
        for row in rows
        if row.changed or (row.covered and not row.adopt and row.other_sidecar)
    ]
    return queue_objects(connection, source.storage, source.bucket, queued)


def _read_cursor(connection: Connection, name: str) -> _Cursor | None:
    """The source's cursor, if it has been listed before."""
    row = connection.execute(
        text("SELECT after_key, full_listing_at FROM source_cursors WHERE source = :source"), {"source": name}
    ).first()
    return _Cursor(row.after_key, row.full_listing_at) if row else None


def _write_cursor(connection: Connection, name: str, last: str | None, full_at: datetime | None) -> None:
    """Move the cursor on to `last` (never back: another poll may have gone further); a full listing also
    records when it began."""
    connection.execute(
        text(
            """
            INSERT INTO source_cursors AS c (source, after_key, full_listing_at) VALUES (:source, :last, :full_at)
            ON CONFLICT (source) DO UPDATE SET
                after_key = CASE WHEN c.after_key IS NULL OR excluded.after_key COLLATE "C" > c.after_key COLLATE "C"
                                 THEN coalesce(excluded.after_key, c.after_key) ELSE c.after_key END,
                full_listing_at = coalesce(excluded.full_listing_at, c.full_listing_at)
            """
        ),
        {"source": name, "last": last, "full_at": full_at},
    )


def discover(source_uri: str, settings: Settings, page_size: int | None = None) -> Discovered:
    """List the source page by page; queue keys that are new, changed (by ETag) or back after being
    deleted, committing each page; after a full listing, mark known objects no longer listed deleted.

    An ordered source with a cursor whose last full listing is recent is listed only after its cursor."""
    source = open_source(source_uri, settings)
    with get_engine(settings).connect() as connection:
        try:
            found = _discover(connection, source, settings, page_size or PAGE_SIZE)
        except BaseException:
            with suppress(Exception):  # the error that stopped discovery is the one to report
                connection.rollback()
                connection.exec_driver_sql(_DROP)
                connection.exec_driver_sql("RESET plan_cache_mode")
                connection.commit()
            raise
        connection.exec_driver_sql(_DROP)
        connection.exec_driver_sql("RESET plan_cache_mode")
        connection.commit()
    return found


def _discover(connection: Connection, source: Source, settings: Settings, page_size: int) -> Discovered:
    ordered = is_ordered(source, settings)
    # psycopg prepares statements run often; a generic plan made while the temporary table was small
    # would stay in use as it grows. Plan each page's statements for the table as it is.
    connection.exec_driver_sql("SET plan_cache_mode = force_custom_plan")
    for statement in _CREATE:
        connection.exec_driver_sql(statement)
    started = connection.execute(text("SELECT now()")).scalar_one()
    cursor = _read_cursor(connection, source.uri) if ordered else None
    connection.commit()
    resumed = (
        cursor is not None
        and cursor.full_listing_at is not None
        and started - cursor.full_listing_at < timedelta(seconds=settings.full_listing_seconds)
    )
    start_after = cursor.after_key if resumed and cursor is not None else None
    full = start_after is None
    listed = queued = 0
    after = ""  # every image listed waits for a `ready_at` above this
    page: list[tuple[str, str | None]] = []
    for item in source.list(start_after=start_after):
        page.append((item.key, item.etag))
        if len(page) >= page_size:
            _copy_page(connection, page)
            queued += _queue_ready(connection, source, after, page[-1][0], start_after)
            connection.commit()
            listed, after, page = listed + len(page), page[-1][0], []
    last = page[-1][0] if page else (after or None)
    _copy_page(connection, page)
    listed += len(page)
    queued += _queue_ready(connection, source, after, None, start_after)
    if ordered:
        _write_cursor(connection, source.uri, last, started if full else None)
    connection.commit()
    deleted = _mark_gone(connection, source, started) if full else 0
    return Discovered(listed=listed, queued=queued, deleted=deleted, full=full)


def _mark_gone(connection: Connection, source: Source, started: datetime) -> int:
    """Mark deleted, DELETIONS_PER_TRANSACTION at a time, the live assets the full listing did not list."""
    connection.exec_driver_sql("ANALYZE discovery_listed")  # an anti-join plan from real figures
    connection.execute(
        _GONE, {"storage": source.storage, "bucket": source.bucket, "prefix": source.prefix, "started": started}
    )
    connection.exec_driver_sql("CREATE INDEX ON discovery_gone (key)")  # each chunk is taken in key order
    connection.commit()
    deleted = 0
    while keys := list(connection.execute(_TAKE_GONE, {"limit": DELETIONS_PER_TRANSACTION}).scalars()):
        mark_deleted(connection, source.storage, source.bucket, sorted(keys))
        connection.commit()
        deleted += len(keys)
    return deleted
