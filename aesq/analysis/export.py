"""Data-cleaning export: a keep/drop manifest of every asset for training pipelines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection, text

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.storage import FolderSource

FORMATS = ("jsonl", "csv", "parquet")
COLUMNS = (
    "asset_id",
    "storage",
    "bucket",
    "key",
    "sha256",
    "generator",
    "prompt",
    "seed",
    "keep",
    "reason",
    "score",
    "scores",
    "defects",
)
_ROWS_PER_CHUNK = 10_000

_MANIFEST = text(
    """
    SELECT a.id AS asset_id, a.storage, a.bucket, a.key, a.sha256,
           g.name || ':' || g.version AS generator, a.prompt, a.seed, a.status, a.error, a.duplicate_of,
           (SELECT jsonb_object_agg(ls.scorer, ls.value) FROM latest_scores ls WHERE ls.asset_id = a.id) AS scores,
           (SELECT jsonb_agg(jsonb_build_object('category', d.category, 'severity', d.severity) ORDER BY d.category)
            FROM defects d WHERE d.asset_id = a.id) AS defects
    FROM assets a LEFT JOIN generators g ON g.id = a.generator_id
    ORDER BY a.id
    """
)
# The scorers that have scores, one index probe each (ix_scores_latest leads with scorer): a loose index scan,
# where DISTINCT would read the whole table.
_SCORERS = text(
    """
    WITH RECURSIVE present AS (
        (SELECT scorer FROM scores ORDER BY scorer LIMIT 1)
        UNION ALL
        SELECT (SELECT s.scorer FROM scores s WHERE s.scorer > present.scorer ORDER BY s.scorer LIMIT 1)
        FROM present WHERE present.scorer IS NOT NULL
    )
    SELECT scorer FROM present WHERE scorer IS NOT NULL
    """
)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    kept: int
    dropped: int
    path: Path


def _decide(
    row, scorer: str, min_score: float | None, exclude: set[str], min_severity: float
) -> tuple[bool, str | None]:
    """Whether an asset is kept, and why not."""
    if row.status == "duplicate":
        return False, f"duplicate of {row.duplicate_of}"
    if row.status == "failed":
        return False, f"failed: {row.error}"
    if row.status == "deleted":
        return False, "deleted from its source"
    score = (row.scores or {}).get(scorer)
    if score is None:
        return False, f"not scored by {scorer}"
    if min_score is not None and score < min_score:
        return False, f"score {score:.4g} < {min_score:g}"
    for defect in row.defects or []:
        if defect["category"] in exclude and defect["severity"] >= min_severity:
            return False, f"defect {defect['category']} ({defect['severity']:.2f})"
    return True, None


def _manifest_rows(
    connection: Connection, scorer: str, min_score: float | None, exclude: set[str], min_severity: float
) -> Iterator[dict]:
    """Every asset's manifest row, streamed from a server-side cursor of `connection`'s transaction."""
    result = connection.execution_options(yield_per=_ROWS_PER_CHUNK).execute(_MANIFEST)
    for row in result:
        keep, reason = _decide(row, scorer, min_score, exclude, min_severity)
        yield {
            "asset_id": row.asset_id,
            "storage": row.storage,
            "bucket": row.bucket,
            "key": row.key,
            "sha256": row.sha256,
            "generator": row.generator,
            "prompt": row.prompt,
            "seed": row.seed,
            "keep": keep,
            "reason": reason,
            "score": (row.scores or {}).get(scorer),
            "scores": row.scores or {},
            "defects": row.defects or [],
        }


def _flat(row: dict) -> dict:
    """The row with its nested fields as JSON strings (CSV)."""
    return {**row, "scores": json.dumps(row["scores"]), "defects": json.dumps(row["defects"])}


# Parquet is read by training pipelines as typed columns: the fixed ones, one float column per scorer
# (`score_<name>`, null where the asset has no such score) and the defects as a list of structs.
_PARQUET_FIXED = [
    ("asset_id", pa.int64()),
    ("storage", pa.string()),
    ("bucket", pa.string()),
    ("key", pa.string()),
    ("sha256", pa.string()),
    ("generator", pa.string()),
    ("prompt", pa.string()),
    ("seed", pa.int64()),
    ("keep", pa.bool_()),
    ("reason", pa.string()),
    ("score", pa.float64()),
]
DEFECTS_TYPE = pa.list_(pa.struct([("category", pa.string()), ("severity", pa.float64())]))
SCORE_COLUMN_PREFIX = "score_"


def parquet_schema(scorers: Sequence[str]) -> pa.Schema:
    """The parquet manifest's columns for these scorers."""
    scores = [(f"{SCORE_COLUMN_PREFIX}{name}", pa.float64()) for name in scorers]
    return pa.schema([*_PARQUET_FIXED, *scores, ("defects", DEFECTS_TYPE)])


def _typed(row: dict, scorers: Sequence[str]) -> dict:
    """The row as parquet columns: each scorer's latest score in its own column."""
    fixed = {name: row[name] for name, _ in _PARQUET_FIXED}
    scores = {f"{SCORE_COLUMN_PREFIX}{name}": row["scores"].get(name) for name in scorers}
    return {**fixed, **scores, "defects": row["defects"]}


def _write(rows: Iterator[dict], handle, format: str, scorers: Sequence[str] = ()) -> tuple[int, int]:
    """Write the rows to an open binary file (parquet with a column for each of `scorers`); returns (kept, dropped)."""
    counts = [0, 0]

    def counted() -> Iterator[dict]:
        for row in rows:
            counts[0 if row["keep"] else 1] += 1
            yield row

    if format == "jsonl":
        for row in counted():
            handle.write((json.dumps(row) + "\n").encode())
    elif format == "csv":
        text_handle = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.DictWriter(text_handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(_flat(row) for row in counted())
        text_handle.flush()
        text_handle.detach()
    else:
        schema = parquet_schema(scorers)
        with pq.ParquetWriter(handle, schema) as writer:
            chunk: list[dict] = []
            for row in counted():
                chunk.append(_typed(row, scorers))
                if len(chunk) == _ROWS_PER_CHUNK:
                    writer.write_table(pa.Table.from_pylist(chunk, schema))
                    chunk = []
            writer.write_table(pa.Table.from_pylist(chunk, schema))
    return counts[0], counts[1]


def export_manifest(
    settings: Settings,
    out: Path,
    scorer: str,
    min_score: float | None = None,
    exclude_defects: Sequence[str] = (),
    format: str = "jsonl",
    min_severity: float = 0.0,
) -> ExportSummary:
    """Write a keep/drop manifest of every asset to `out`, replacing it only once complete.

    Args:
        settings: aesq settings (the database).
        out: the manifest file.
        scorer: the scorer whose latest score decides; assets without one are dropped.
        min_score: drop assets scored under this.
        exclude_defects: drop assets with any of these defect categories at `min_severity` or more.
        format: jsonl, csv (nested fields as JSON strings) or parquet (a `score_<scorer>` column per scorer,
            defects as a list of (category, severity) structs).
        min_severity: see `exclude_defects`.

    Returns:
        Counts of kept and dropped assets and the path written.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    # One snapshot for the scorer list and the rows: a scorer scored meanwhile is in both or in neither.
    snapshot = get_engine(settings).connect().execution_options(isolation_level="REPEATABLE READ")
    with snapshot as connection, connection.begin():
        scorers = list(connection.execute(_SCORERS).scalars())
        if scorer not in scorers:
            raise ValueError(f"no asset has a {scorer!r} score")
        with FolderSource(out.parent).writing(out.name, "application/octet-stream") as handle:
            rows = _manifest_rows(connection, scorer, min_score, set(exclude_defects), min_severity)
            kept, dropped = _write(rows, handle, format, scorers)
    return ExportSummary(kept, dropped, out)
