"""Where the pipeline stands: assets per status, work in progress, failures with their reasons, a source's
progress. Read-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, literal, select, text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.storage import parse_location
from aesq.core.tables import Asset, Generator, QueuedObject

# A failure's kind, from the words its writer puts in the reason (aesq/core/images.py, provenance.py, fetch.py,
# ingest.py, scoring.py), as Postgres regular expressions: the first that matches wins, anything else is "other".
REASON_KINDS: tuple[tuple[str, str], ...] = (
    ("^sidecar JSON", "sidecar"),
    ("must look like name:version|^seed must be|^generator kind must be|^source kind must be", "provenance"),
    ("^a crawled image cannot name a generator", "provenance"),
    ("^generator name .* contains", "provenance"),
    ("^empty object", "empty"),
    ("^not an image", "not an image"),
    ("^image has no pixels", "no pixels"),
    ("pixels exceeds the limit", "too many pixels"),
    ("^unsupported colour mode", "unsupported colour mode"),
    ("^truncated or corrupt", "truncated or corrupt"),
    ("^unreadable image header", "unreadable header"),
    ("^cannot count its frames", "unreadable frames"),
    ("^cannot convert to RGB", "cannot convert to RGB"),  # written before images kept their own mode
    ("^cannot reduce it", "cannot reduce"),
    ("^floating-point data", "floating-point data"),
    ("^signed integer data|^32-bit integer levels", "integer data array"),
    ("^unreadable integer levels|^cannot scale it to 8 bits", "unreadable integer levels"),
    ("^decoding took longer", "decoder timeout"),
    ("^the decoder crashed", "decoder crash"),
    ("^cannot examine the object", "unexpected error"),
    ("no longer exists|is outside", "missing"),
    ("holds other bytes than were ingested", "changed since ingest"),
    ("^cannot read ", "storage unavailable"),
    ("^scorer .+ returned ", "scorer output"),
)
OTHER_REASON = "other"


@dataclass(frozen=True)
class Failure:
    """An asset that could not be ingested or scored, and why."""

    location: str
    error: str


@dataclass(frozen=True)
class FailureExample:
    """One failed object, as an example of its reason."""

    asset_id: int | None  # None when the object never became an asset row
    location: str  # bucket/key, or the folder path
    error: str  # the full per-image reason


@dataclass(frozen=True)
class FailureReason:
    """Failed assets of one kind of reason: how many, and a few of them."""

    reason: str  # the kind (see REASON_KINDS)
    count: int
    examples: list[FailureExample]


def reason_kind(error: SQLColumnExpression[str | None]) -> ColumnElement[str]:
    """The kind of a reason column, as SQL: the one definition every grouping of failures uses."""
    return case(
        *((func.coalesce(error, "").regexp_match(pattern), literal(kind)) for pattern, kind in REASON_KINDS),
        else_=literal(OTHER_REASON),
    )


def _within(source: str | None) -> list[ColumnElement[bool]]:
    """Conditions that keep the assets of the source at `source` (none: every asset)."""
    if source is None:
        return []
    location = parse_location(source)
    return [Asset.storage == location.storage, Asset.bucket == location.bucket, Asset.key.startswith(location.prefix)]


def failure_reasons(
    settings: Settings, source: str | None = None, examples: int = 3, since: datetime | None = None
) -> list[FailureReason]:
    """Failed assets (of the source at `source` only, when given; that failed at `since` or later, when given)
    grouped by reason kind, most frequent first, with the `examples` latest of each: one query, so counts and
    examples agree."""
    kind = reason_kind(Asset.error).label("kind")
    failed = select(Asset.id, Asset.bucket, Asset.key, Asset.error, Asset.updated_at, kind).where(
        Asset.status == "failed", *_within(source), *([Asset.updated_at >= since] if since is not None else [])
    )
    ranked = failed.subquery()
    numbered = select(
        ranked,
        func.count().over(partition_by=ranked.c.kind).label("total"),
        func.row_number()
        .over(partition_by=ranked.c.kind, order_by=(ranked.c.updated_at.desc(), ranked.c.id.desc()))
        .label("rank"),
    ).subquery()
    query = (
        select(numbered.c.kind, numbered.c.total, numbered.c.id, numbered.c.bucket, numbered.c.key, numbered.c.error)
        .where(numbered.c.rank <= max(examples, 1))
        .order_by(numbered.c.total.desc(), numbered.c.kind, numbered.c.rank)
    )
    with get_engine(settings).connect() as connection:
        rows = connection.execute(query).all()
    grouped: dict[str, FailureReason] = {}
    for row in rows:
        group = grouped.setdefault(row.kind, FailureReason(row.kind, row.total, []))
        if len(group.examples) < examples:
            group.examples.append(FailureExample(row.id, f"{row.bucket}/{row.key}", row.error or ""))
    return list(grouped.values())


def status_counts(settings: Settings) -> dict[str, int]:
    """Number of assets per status."""
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(select(Asset.status, func.count()).group_by(Asset.status)).all())


@dataclass(frozen=True)
class WorkInProgress:
    """What workers are doing now: objects waiting for ingest, and live claims."""

    queued: int
    queued_claimed: int
    scoring_claimed: int
    workers: list[str]


def work_in_progress(settings: Settings) -> WorkInProgress:
    """The ingest queue and the live claims on it and on assets, with the workers holding them."""
    query = text(
        """
        SELECT (SELECT count(*) FROM ingest_queue) AS queued,
               (SELECT count(*) FROM ingest_queue WHERE lease_until > now() AND lease_owner IS NOT NULL) AS queued_claimed,
               (SELECT count(*) FROM assets WHERE lease_until > now()) AS scoring_claimed,
               ARRAY(SELECT DISTINCT lease_owner FROM (
                   SELECT lease_owner FROM ingest_queue WHERE lease_until > now()
                   UNION ALL SELECT lease_owner FROM assets WHERE lease_until > now()) AS held
                   WHERE lease_owner IS NOT NULL ORDER BY 1) AS workers
        """
    )
    with get_engine(settings).connect() as connection:
        row = connection.execute(query).one()
    return WorkInProgress(row.queued, row.queued_claimed, row.scoring_claimed, list(row.workers))


def recent_failures(settings: Settings, limit: int = 20) -> list[Failure]:
    """The latest failed assets with their reasons."""
    query = (
        select(Asset.bucket, Asset.key, Asset.error)
        .where(Asset.status == "failed")
        .order_by(Asset.updated_at.desc(), Asset.id.desc())
        .limit(limit)
    )
    with get_engine(settings).connect() as connection:
        return [Failure(f"{bucket}/{key}", error or "") for bucket, key, error in connection.execute(query)]


def source_progress(settings: Settings, storage: str, bucket: str, prefix: str) -> tuple[int, int]:
    """(finished, total) assets of one source, for progress display; duplicates count as finished. The total
    counts the new objects discovery has queued too, so it is known as soon as the source is listed."""
    query = select(func.count().filter(Asset.status != "pending"), func.count()).where(
        Asset.storage == storage, Asset.bucket == bucket, Asset.key.startswith(prefix)
    )
    known = select(Asset.id).where(
        Asset.storage == QueuedObject.storage, Asset.bucket == QueuedObject.bucket, Asset.key == QueuedObject.key
    )
    queued = select(func.count()).where(
        QueuedObject.storage == storage,
        QueuedObject.bucket == bucket,
        QueuedObject.key.startswith(prefix),
        ~known.exists(),
    )
    with get_engine(settings).connect() as connection:
        done, total = connection.execute(query).one()
        new = connection.execute(queued).scalar_one()
    return int(done), int(total) + int(new)


def database_now(settings: Settings) -> datetime:
    """The database's clock: a run's start, on the clock every write's time is taken from."""
    with get_engine(settings).connect() as connection:
        return connection.execute(select(func.now())).scalar_one()


@dataclass(frozen=True)
class RunSummary:
    """What happened to a source's assets since a run started: found new, scored, failed, found to be
    duplicates (bytes an existing asset already holds, as `aesq.core.identity` decides), found deleted, and
    still waiting for scores. Whoever did the work: workers on the same source at the same time count too."""

    new: int
    scored: int
    failed: int
    duplicates: int
    deleted: int
    waiting: int


def run_summary(settings: Settings, source: str, since: datetime) -> RunSummary:
    """The summary of the source's assets written at `since` (from `database_now`) or later: a run's work."""
    touched = Asset.updated_at >= since
    query = select(
        func.count().filter(Asset.created_at >= since),
        func.count().filter(Asset.status == "scored", Asset.scored_at >= since),
        func.count().filter(Asset.status == "failed", touched),
        func.count().filter(Asset.status == "duplicate", touched),
        func.count().filter(Asset.status == "deleted", touched),
        func.count().filter(Asset.status == "pending", touched),
    ).where(touched, *_within(source))
    with get_engine(settings).connect() as connection:
        return RunSummary(*connection.execute(query).one())


def source_versions(settings: Settings, source: str) -> set[str]:
    """The generator versions ("name:version") of the source's scored assets: what a run of it can compare."""
    query = (
        select(Generator.name, Generator.version)
        .distinct()
        .join(Asset, Asset.generator_id == Generator.id)
        .where(Asset.status == "scored", *_within(source))
    )
    with get_engine(settings).connect() as connection:
        return {f"{name}:{version}" for name, version in connection.execute(query)}
