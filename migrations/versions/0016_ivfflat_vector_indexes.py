"""Each embedder's HNSW index replaced by an IVFFlat index trained on the vectors it holds (aesq/core/vectors.py).

HNSW upkeep held embedding writes to about 200 rows/s on 2 cores; an IVFFlat insert only compares the row with the
lists' centres (BENCHMARKS.md "Vectors"). The new index gets as many lists as the embedder's rows call for now
(one below 10,000 rows); `rebuild_grown_indexes` adds lists as rows grow. Only indexes change: every vector stays
in `embeddings`. The table is locked while the indexes are built: minutes at a million rows, so upgrade while no
worker writes. Downgrade rebuilds the HNSW indexes (slow on large tables: that is HNSW's build cost).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 01:30:00.000000
"""

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The embedders and dimensions as of this revision (not imported: a migration must not change with the code).
DIMENSIONS = {"efficientnet-lite0": 1280, "clip-vit-l-14": 768}


def _suffix(embedder: str) -> str:
    return embedder.replace("-", "_")


def _lists(rows: int) -> int:
    """aesq.core.vectors.lists_for as of this revision."""
    if rows < 10_000:
        return 1
    return rows // 1_000 if rows <= 1_000_000 else int(rows**0.5)


def _training_memory_mb(dimension: int, lists: int) -> int:
    """aesq.core.vectors.training_memory_mb as of this revision: pgvector's k-means working set, and some to spare."""
    samples = max(50 * lists, 10_000)
    working_set = (samples + 3 * lists) * (4 * dimension + 8) + 4 * samples * lists + 4 * lists * lists
    return 64 + math.ceil(1.1 * (working_set + 8 * (samples + lists)) / 2**20)


def upgrade() -> None:
    bind = op.get_bind()
    for embedder, dimension in DIMENSIONS.items():
        rows = bind.execute(
            sa.text("SELECT count(*) FROM embeddings WHERE embedder = :e"), {"e": embedder}
        ).scalar_one()
        lists = _lists(rows)
        op.execute(f"DROP INDEX IF EXISTS ix_embeddings_hnsw_{_suffix(embedder)}")
        op.execute(f"SET LOCAL maintenance_work_mem = '{_training_memory_mb(dimension, lists)}MB'")
        op.execute(
            f"CREATE INDEX ix_embeddings_ivf_{_suffix(embedder)} ON embeddings "
            f"USING ivfflat ((vector::halfvec({dimension})) halfvec_cosine_ops) "
            f"WITH (lists = {lists}) WHERE embedder = '{embedder}'"
        )


def downgrade() -> None:
    for embedder, dimension in DIMENSIONS.items():
        op.execute(f"DROP INDEX IF EXISTS ix_embeddings_ivf_{_suffix(embedder)}")
        op.execute(
            f"CREATE INDEX ix_embeddings_hnsw_{_suffix(embedder)} ON embeddings "
            f"USING hnsw ((vector::halfvec({dimension})) halfvec_cosine_ops) WHERE embedder = '{embedder}'"
        )
