"""Bulk writes: assets and generators on ingest, scores and embeddings on scoring.

Every write is an upsert keyed so a retried or repeated batch adds no rows and changes no scores;
each batch is written in one transaction by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg.types.json import Jsonb
from sqlalchemy import Boolean, Connection, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from aesq.core.identity import Arrival, Located, Plan, ProvenanceFailed, Standing, plan_batch
from aesq.core.images import ImageFacts
from aesq.core.provenance import GeneratorRef, Provenance
from aesq.core.tables import CANONICAL_STATUSES, Asset, Base, Critique, Defect, Embedding, Generator, ScoreRow

OBJECT_LOCKS, CONTENT_LOCKS = 1, 2  # advisory lock spaces
# What is computed from an asset's bytes, and so belongs to its content (aesq/core/identity.py).
_CONTENT_OUTPUTS = [Base.metadata.tables[model.__tablename__] for model in (ScoreRow, Embedding, Defect, Critique)]


@dataclass(frozen=True)
class AssetRecord:
    """One examined object, ready to be written; `error` set means it failed."""

    storage: str
    bucket: str
    key: str
    sha256: str
    etag: str | None
    size_bytes: int
    facts: ImageFacts | None
    provenance: Provenance | None
    error: str | None
    sidecar_key: str | None = None  # the sidecar read with it (key and ETag), None when it had none
    sidecar_etag: str | None = None


@dataclass(frozen=True)
class ScoreValue:
    """One score row to write."""

    asset_id: int
    scorer: str
    scorer_version: str
    value: float
    raw: dict[str, float]


def upsert_generators(connection: Connection, refs: Sequence[GeneratorRef]) -> dict[tuple[str, str], int]:
    """Create or enrich the generators named by `refs` (parents first); returns ids by (name, version)."""
    ids: dict[tuple[str, str], int] = {}
    parents = {ref.parent for ref in refs if ref.parent}
    for parent in sorted(parents - {(ref.name, ref.version) for ref in refs}):
        ids.update(upsert_generators(connection, [GeneratorRef(name=parent[0], version=parent[1])]))
    unique = {(ref.name, ref.version): ref for ref in refs}
    for (name, version), ref in sorted(unique.items()):  # a fixed order avoids deadlocks between batches
        statement = insert(Generator).values(
            name=name,
            version=version,
            kind=ref.kind or "other",
            parent_id=ids.get(ref.parent) if ref.parent else None,
            metadata_=ref.metadata,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Generator.name, Generator.version],
            set_={
                "kind": statement.excluded.kind if ref.kind else Generator.kind,
                "parent_id": statement.excluded.parent_id if ref.parent else Generator.parent_id,
                "metadata": Generator.metadata_.op("||")(statement.excluded.metadata),
            },
        )
        ids[(name, version)] = connection.execute(statement.returning(Generator.id)).scalar_one()
    return ids


def _asset_row(record: AssetRecord, generator_ids: dict[tuple[str, str], int], standing: Standing) -> dict:
    """Column values for one examined object, standing where the identity plan puts it."""
    facts, provenance = record.facts, record.provenance
    generator = provenance.generator if provenance else None
    return {
        "storage": record.storage,
        "bucket": record.bucket,
        "key": record.key,
        "sha256": record.sha256,
        "etag": record.etag,
        "sidecar_key": record.sidecar_key,
        "sidecar_etag": record.sidecar_etag,
        "size_bytes": record.size_bytes,
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "format": facts.format if facts else None,
        "color_mode": facts.mode if facts else None,
        "source_kind": provenance.source_kind if provenance else "crawled",
        "generator_id": generator_ids[(generator.name, generator.version)] if generator else None,
        "prompt": provenance.prompt if provenance else None,
        "seed": provenance.seed if provenance else None,
        "extra": {
            **(provenance.extra if provenance else {}),
            **({"frames": facts.frames} if facts and facts.frames > 1 else {}),
        },
        "status": standing.status,
        "error": record.error,
        "duplicate_of": standing.duplicate_of if isinstance(standing.duplicate_of, int) else None,
        "scored_at": standing.scored_at,
        "analysed_at": standing.analysed_at,
        "attempts": 0,
        "retry_after": None,
    }


# A location whose provenance failed keeps the provenance it had: it is unknown now, not crawled.
_PROVENANCE_COLUMNS = ("source_kind", "generator_id", "prompt", "seed", "extra")


def _write_asset_rows(connection: Connection, rows: list[dict], keep_provenance: bool) -> dict[str, int]:
    """Insert or update the batch's asset rows (keeping existing rows' provenance if asked); their ids by key."""
    statement = insert(Asset).values(rows)
    kept = ("storage", "bucket", "key", *(_PROVENANCE_COLUMNS if keep_provenance else ()))
    statement = statement.on_conflict_do_update(
        index_elements=[Asset.storage, Asset.bucket, Asset.key],
        set_={name: statement.excluded[name] for name in [*rows[0], "updated_at"] if name not in kept},
    )
    return {key: asset_id for asset_id, key in connection.execute(statement.returning(Asset.id, Asset.key))}


def _lock(connection: Connection, space: int, names: Iterable[str]) -> None:
    """Transaction-scoped advisory locks on `names`, taken in one fixed order so writers never deadlock.

    Space OBJECT_LOCKS serialises writers of the same locations, CONTENT_LOCKS those of the same
    SHA-256; every writer takes object locks before content locks.
    """
    keys = sorted(
        {int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True) for name in names}
    )
    if keys:
        connection.execute(
            text("SELECT count(pg_advisory_xact_lock(:space, k)) FROM unnest(CAST(:keys AS int[])) AS k"),
            {"space": space, "keys": keys},
        )


def lock_contents(connection: Connection, shas: Iterable[str]) -> None:
    """Hold the contents `shas` still for the rest of the transaction: their canonical assets stay put."""
    _lock(connection, CONTENT_LOCKS, shas)


_LOCATED = (Asset.id, Asset.key, Asset.sha256, Asset.status, Asset.duplicate_of, Asset.scored_at, Asset.analysed_at)


@dataclass(frozen=True)
class _Settled:
    """A batch's plan, the ids of its existing rows, and the generator versions whose outputs the plan moves."""

    plan: Plan
    ids: dict[str, int]
    moved_versions: dict[int, int | None]  # move source → its generator before the batch


def _settle(
    connection: Connection, storage: str, bucket: str, arrivals: dict[str, str | Arrival | ProvenanceFailed]
) -> _Settled:
    """Lock and read what the batch touches, plan it, and apply everything but the batch's own rows' facts.

    The caller writes the batch rows, then calls `_finish`.
    """
    _lock(connection, OBJECT_LOCKS, (f"{storage}\0{bucket}\0{key}" for key in arrivals))
    at_keys = (Asset.storage == storage) & (Asset.bucket == bucket) & Asset.key.in_(list(arrivals))
    old_shas = set(connection.execute(select(Asset.sha256).where(at_keys)).scalars())
    shas = old_shas | {arrival for arrival in arrivals.values() if isinstance(arrival, str)}
    lock_contents(connection, shas)
    rows = connection.execute(select(*_LOCATED, at_keys.label("here")).where(at_keys | Asset.sha256.in_(shas))).all()
    located = [Located(row.id, row.key if row.here else None, *row[2:7]) for row in rows]
    plan = plan_batch(arrivals, located)
    moved_versions = dict(
        connection.execute(select(Asset.id, Asset.generator_id).where(Asset.id.in_(list(plan.moves)))).tuples().all()
    )
    if plan.demote:
        connection.execute(update(Asset).where(Asset.id.in_(plan.demote)).values(status="duplicate"))
    return _Settled(plan, {row.key: row.id for row in rows if row.here}, moved_versions)


def _finish(connection: Connection, settled: _Settled, ids: dict[str, int]) -> list[int]:
    """Move outputs to their content's new canonical asset, promote and re-point rows elsewhere; the
    ids of the canonical assets left waiting for scores.

    Outputs that land on an asset of another generator version are analysed again there, without their
    near-duplicate findings across versions (as for bytes whose sidecar names another version).
    """
    plan = settled.plan
    resolve = lambda ref: ids[ref] if isinstance(ref, str) else ref  # noqa: E731
    moves = {source: resolve(target) for source, target in plan.moves.items()}
    _move_outputs(connection, moves, plan.drop)
    changes = [
        {
            "row_id": asset_id,
            "status": standing.status,
            "duplicate_of": resolve(standing.duplicate_of) if standing.duplicate_of is not None else None,
            "scored_at": standing.scored_at,
            "analysed_at": standing.analysed_at,
            "failed": standing.status == "failed",
        }
        for asset_id, standing in plan.others.items()
    ] + [
        {
            "row_id": ids[key],
            "status": standing.status,
            "duplicate_of": resolve(standing.duplicate_of),
            "scored_at": standing.scored_at,
            "analysed_at": standing.analysed_at,
            "failed": False,
        }
        for key, standing in plan.batch.items()
        if isinstance(standing.duplicate_of, str)
    ]
    if changes:
        connection.execute(
            update(Asset)
            .where(Asset.id == bindparam("row_id"))
            .values(
                status=bindparam("status"),
                duplicate_of=bindparam("duplicate_of"),
                scored_at=bindparam("scored_at"),
                analysed_at=bindparam("analysed_at"),
                error=case((bindparam("failed", type_=Boolean), Asset.error)),  # a failed row keeps its reason
                updated_at=func.now(),
            ),
            changes,
        )
    versions = dict(
        connection.execute(select(Asset.id, Asset.generator_id).where(Asset.id.in_(set(moves.values())))).tuples().all()
    )
    changed_version = sorted(
        {target for source, target in moves.items() if versions[target] != settled.moved_versions[source]}
    )
    if changed_version:
        connection.execute(update(Asset).where(Asset.id.in_(changed_version)).values(analysed_at=None))
        connection.execute(_DROP_CROSS_VERSION_DUPLICATES, {"ids": changed_version})
    return [resolve(ref) for ref in plan.waiting]


def _move_outputs(connection: Connection, moves: dict[int, int], drop: set[int]) -> None:
    """Scores, embeddings, defects and critiques follow their content: moved to `moves[id]`, or deleted for `drop`."""
    sources = set(moves) | drop
    if not sources:
        return
    for table in _CONTENT_OUTPUTS:
        taken = (
            connection.execute(delete(table).where(table.c.asset_id.in_(sources)).returning(*table.c)).mappings().all()
        )
        moved = [{**row, "asset_id": moves[row["asset_id"]]} for row in taken if row["asset_id"] in moves]
        if moved:
            connection.execute(insert(table), moved)


# Near-duplicate findings that now pair two generator versions because some of `ids` changed version (their
# sidecar said another, or their content's outputs moved there from another version's asset): deleted, and
# both assets left due for analysis. The partner is the asset the finding's detail names first
# ("near-duplicate of asset N (…)", aesq/analysis/defect_analysis.py).
_DROP_CROSS_VERSION_DUPLICATES = text(
    """
    WITH stale AS (
        DELETE FROM defects d USING assets a, assets partner
        WHERE d.category = 'near_duplicate' AND a.id = d.asset_id
          AND partner.id = CAST(substring(d.detail FROM '^near-duplicate of asset ([0-9]+) ') AS bigint)
          AND (a.id = ANY(:ids) OR partner.id = ANY(:ids))
          AND a.generator_id <> partner.generator_id
        RETURNING a.id, partner.id AS partner_id
    )
    UPDATE assets SET analysed_at = NULL
    WHERE id IN (SELECT id FROM stale UNION SELECT partner_id FROM stale)
    """
)


def _arrival(record: AssetRecord) -> str | Arrival | ProvenanceFailed:
    """What the identity plan makes of an examined object: usable bytes that failed (their provenance) may keep
    their content's outputs."""
    if record.error is None:
        return record.sha256
    return ProvenanceFailed(record.sha256) if record.facts is not None else Arrival.FAILED


def upsert_assets(connection: Connection, records: Sequence[AssetRecord]) -> list[int]:
    """Write examined objects of one storage location as assets; returns the ids that wait for scoring.

    Where each content's scores live afterwards follows `aesq.core.identity`: the same bytes as a canonical
    asset elsewhere make a duplicate; re-uploaded bytes keep their status, scores and times; new bytes
    at a known key move the old content's outputs to another location still holding it (or drop them).
    Bytes that changed generator version are analysed again, and their near-duplicate findings across
    versions go (a prompt or seed changes no finding).
    """
    if not records:
        return []
    storage, bucket = records[0].storage, records[0].bucket
    by_key = {record.key: record for record in records}
    refs = [r.provenance.generator for r in records if r.provenance and r.provenance.generator and not r.error]
    generator_ids = upsert_generators(connection, refs)
    settled = _settle(connection, storage, bucket, {key: _arrival(r) for key, r in sorted(by_key.items())})
    ids = dict(settled.ids)
    rows = [_asset_row(by_key[key], generator_ids, standing) for key, standing in sorted(settled.plan.batch.items())]
    before = select(Asset.key, Asset.generator_id).where(Asset.id.in_(list(ids.values())))
    version_before = dict(connection.execute(before).tuples().all())
    unknown_provenance = {key for key, record in by_key.items() if isinstance(_arrival(record), ProvenanceFailed)}
    new_version = [
        row
        for row in rows
        if row["key"] in version_before
        and row["key"] not in unknown_provenance
        and version_before[row["key"]] != row["generator_id"]
    ]
    for row in new_version:
        row["analysed_at"] = None  # near-duplicates are sought within its version: analyse it again
    for group in (  # failed rows first: they only ever give up a canonical place
        [row for row in rows if row["key"] in unknown_provenance],
        [row for row in rows if row["key"] not in unknown_provenance],
    ):
        if group:
            ids.update(_write_asset_rows(connection, group, keep_provenance=group[0]["key"] in unknown_provenance))
    waiting = _finish(connection, settled, ids)
    if new_version:
        connection.execute(_DROP_CROSS_VERSION_DUPLICATES, {"ids": [ids[row["key"]] for row in new_version]})
    return waiting


def mark_deleted(connection: Connection, storage: str, bucket: str, keys: Sequence[str]) -> None:
    """Objects gone from their source become `deleted`; a content still present elsewhere keeps its scores there."""
    if not keys:
        return
    settled = _settle(connection, storage, bucket, dict.fromkeys(sorted(keys), Arrival.GONE))
    connection.execute(
        update(Asset)
        .where(Asset.id.in_([settled.ids[key] for key in keys]))
        .values(status="deleted", duplicate_of=None, retry_after=None, updated_at=func.now())
    )
    _finish(connection, settled, settled.ids)


def _copy_then_insert(
    connection: Connection, target: str, columns: dict[str, str], conflict: str, rows: Iterable[tuple]
) -> None:
    """Binary-COPY rows into a per-transaction staging table, then insert those not already in `target`."""
    staging = f"{target}_in"
    names = ", ".join(columns)
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection), "aesq's engines connect through psycopg 3"
    cursor = driver.cursor()
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
        f"({', '.join(f'{name} {kind}' for name, kind in columns.items())}) ON COMMIT DELETE ROWS"
    )
    with cursor.copy(f"COPY {staging} FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(list(columns.values()))
        for row in rows:
            copy.write_row(row)
    cursor.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging} ON CONFLICT ({conflict}) DO NOTHING")


def write_scores(connection: Connection, scores: Sequence[ScoreValue]) -> None:
    """Store scores; a score already present for (asset, scorer, scorer version) is kept as it was."""
    _copy_then_insert(
        connection,
        "scores",
        {"asset_id": "int8", "scorer": "text", "scorer_version": "text", "value": "float8", "raw": "jsonb"},
        "asset_id, scorer, scorer_version",
        ((s.asset_id, s.scorer, s.scorer_version, s.value, Jsonb(s.raw)) for s in scores),
    )


def write_embeddings(connection: Connection, embedder: str, asset_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Store half-precision vectors; an embedding already present for (asset, embedder) is kept."""
    _copy_then_insert(
        connection,
        "embeddings",
        {"asset_id": "int8", "embedder": "text", "vector": "halfvec"},
        "asset_id, embedder",
        ((asset_id, embedder, HalfVector(vector)) for asset_id, vector in zip(asset_ids, vectors.astype(np.float16))),
    )


def current_holders(connection: Connection, contents: dict[int, str]) -> dict[int, int]:
    """For assets read earlier (id → the SHA-256 of the bytes worked on), the asset that holds that
    content now, locked in place until the transaction ends; contents present nowhere are left out.

    Outputs computed from an asset's bytes are written there, never to an asset whose bytes changed.
    """
    lock_contents(connection, contents.values())
    canonical = dict(
        connection.execute(
            select(Asset.sha256, Asset.id).where(
                Asset.sha256.in_(set(contents.values())), Asset.status.in_(CANONICAL_STATUSES)
            )
        ).all()
    )
    return {asset_id: canonical[sha] for asset_id, sha in contents.items() if sha in canonical}


def mark_scored(connection: Connection, asset_ids: Sequence[int]) -> None:
    """Pending assets whose scores are written become scored, with any earlier deferral forgotten."""
    if asset_ids:
        connection.execute(
            update(Asset)
            .where(Asset.id.in_(asset_ids), Asset.status == "pending")
            .values(
                status="scored", scored_at=func.now(), updated_at=func.now(), error=None, attempts=0, retry_after=None
            )
        )


def mark_failed(connection: Connection, reasons: dict[int, str]) -> None:
    """Pending assets that cannot be scored become failed, each with its reason."""
    if reasons:
        connection.execute(
            update(Asset)
            .where(Asset.id == bindparam("row_id"), Asset.status == "pending")
            .values(status="failed", error=bindparam("reason"), retry_after=None, updated_at=func.now()),
            [{"row_id": asset_id, "reason": reason} for asset_id, reason in reasons.items()],
        )


_DEFER = text(
    """
    UPDATE assets SET attempts = attempts + 1, updated_at = now(),
        status = CASE WHEN attempts + 1 >= :limit THEN 'failed' ELSE status END,
        error = CASE WHEN attempts + 1 >= :limit THEN :reason || ' (gave up after ' || :limit || ' attempts)'
                     ELSE :reason END,
        retry_after = CASE WHEN attempts + 1 >= :limit THEN NULL
                           ELSE now() + make_interval(secs => :backoff * 2 ^ attempts) END
    WHERE id = :row_id AND status = 'pending'
    """
)


def defer(connection: Connection, reasons: dict[int, str], attempts: int, backoff_seconds: float) -> None:
    """Pending assets that failed for a reason that may pass wait `backoff_seconds` × 2^(tries so far)
    before the next try; the `attempts`-th such failure fails them with the reason."""
    if reasons:
        connection.execute(
            _DEFER,
            [
                {"row_id": asset_id, "reason": reason, "limit": attempts, "backoff": backoff_seconds}
                for asset_id, reason in reasons.items()
            ],
        )
