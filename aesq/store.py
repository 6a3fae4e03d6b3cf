"""Bulk writes: assets and generators on ingest, scores and embeddings on scoring.

Every write is an upsert keyed so a retried or repeated batch adds no rows and changes no scores;
each batch is written in one transaction by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pgvector import HalfVector
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from aesq.images import ImageFacts
from aesq.provenance import GeneratorRef, Provenance
from aesq.tables import Asset, Defect, Embedding, Generator, ScoreRow

CANONICAL_STATUSES = ("pending", "scored")


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


def _asset_row(record: AssetRecord, generator_ids: dict[tuple[str, str], int]) -> dict:
    """Column values for one record (status and duplicate_of are decided by the caller)."""
    facts, provenance = record.facts, record.provenance
    generator = provenance.generator if provenance else None
    return {
        "storage": record.storage,
        "bucket": record.bucket,
        "key": record.key,
        "sha256": record.sha256,
        "etag": record.etag,
        "size_bytes": record.size_bytes,
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "format": facts.format if facts else None,
        "color_mode": facts.mode if facts else None,
        "source_kind": provenance.source_kind if provenance else "crawled",
        "generator_id": generator_ids[(generator.name, generator.version)] if generator else None,
        "prompt": provenance.prompt if provenance else None,
        "seed": provenance.seed if provenance else None,
        "extra": {**(provenance.extra if provenance else {}), **({"frames": facts.frames} if facts and facts.frames > 1 else {})},
        "status": "failed" if record.error else "pending",
        "error": record.error,
        "duplicate_of": None,
    }


def _write_asset_rows(connection: Connection, rows: list[dict]) -> list[tuple[int, str, str]]:
    """Upsert rows by location; returns (id, key, status)."""
    if not rows:
        return []
    statement = insert(Asset).values(rows)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[Asset.storage, Asset.bucket, Asset.key],
        set_={
            **{name: excluded[name] for name in rows[0] if name not in ("storage", "bucket", "key")},
            "updated_at": excluded.updated_at,
            "scored_at": None,
        },
    )
    return list(connection.execute(statement.returning(Asset.id, Asset.key, Asset.status)).all())


def upsert_assets(connection: Connection, records: Sequence[AssetRecord]) -> list[int]:
    """Write examined objects as assets; returns the ids that wait for scoring.

    Same bytes as an existing canonical asset elsewhere make a `duplicate` row pointing at it;
    an object re-uploaded with the same bytes keeps its status and scores; new bytes at a known
    location reset it to pending and drop the old content's scores, embeddings and defects.
    """
    records = sorted(records, key=lambda record: record.key)
    if not records:
        return []
    refs = [r.provenance.generator for r in records if r.provenance and r.provenance.generator and not r.error]
    generator_ids = upsert_generators(connection, refs)
    location = (Asset.storage == records[0].storage) & (Asset.bucket == records[0].bucket)
    existing = {
        key: (asset_id, sha256, status)
        for asset_id, key, sha256, status in connection.execute(
            select(Asset.id, Asset.key, Asset.sha256, Asset.status).where(
                location, Asset.key.in_([r.key for r in records])
            )
        )
    }
    canonical = dict(
        connection.execute(
            select(Asset.sha256, Asset.id).where(
                Asset.sha256.in_([r.sha256 for r in records]), Asset.status.in_(CANONICAL_STATUSES)
            )
        ).all()
    )
    changed = [existing[r.key][0] for r in records if r.key in existing and existing[r.key][1] != r.sha256]
    if changed:
        for table in (ScoreRow, Embedding, Defect):
            connection.execute(delete(table).where(table.asset_id.in_(changed)))

    first_pass, duplicates = [], []
    claimed: set[str] = set()
    for record in records:
        row = _asset_row(record, generator_ids)
        previous = existing.get(record.key)
        owner = canonical.get(record.sha256)
        if record.error:
            first_pass.append(row)
        elif previous and previous[1] == record.sha256 and previous[2] in CANONICAL_STATUSES:
            row["status"] = previous[2]
            first_pass.append(row)
        elif (owner is not None and (previous is None or owner != previous[0])) or record.sha256 in claimed:
            row["status"] = "duplicate"
            duplicates.append(row)
        else:
            claimed.add(record.sha256)
            first_pass.append(row)
    written = _write_asset_rows(connection, first_pass)
    ids_by_sha = {row["sha256"]: asset_id for row, (asset_id, _, status) in zip(first_pass, written) if status == "pending"}
    for row in duplicates:
        row["duplicate_of"] = canonical.get(row["sha256"]) or ids_by_sha[row["sha256"]]
    _write_asset_rows(connection, duplicates)
    return [asset_id for asset_id, _key, status in written if status == "pending"]


def _copy_then_insert(
    connection: Connection, target: str, columns: dict[str, str], conflict: str, rows: Iterable[tuple]
) -> None:
    """Binary-COPY rows into a per-transaction staging table, then insert those not already in `target`."""
    staging = f"{target}_in"
    names = ", ".join(columns)
    cursor = connection.connection.driver_connection.cursor()
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


def mark_scored(connection: Connection, asset_ids: Sequence[int]) -> None:
    """Pending assets whose scores are written become scored."""
    if asset_ids:
        connection.execute(
            update(Asset)
            .where(Asset.id.in_(asset_ids), Asset.status == "pending")
            .values(status="scored", scored_at=func.now(), updated_at=func.now())
        )


def mark_failed(connection: Connection, reasons: dict[int, str]) -> None:
    """Assets that could not be scored become failed, each with its reason."""
    for asset_id, reason in reasons.items():
        connection.execute(
            update(Asset).where(Asset.id == asset_id).values(status="failed", error=reason, updated_at=func.now())
        )
