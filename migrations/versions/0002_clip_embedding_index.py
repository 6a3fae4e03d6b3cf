"""Partial HNSW index for the CLIP ViT-L/14 embedder (768-d).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_embeddings_hnsw_clip_vit_l_14",
        "embeddings",
        [sa.literal_column("(vector::halfvec(768)) halfvec_cosine_ops")],
        unique=False,
        postgresql_using="hnsw",
        postgresql_where=sa.text("embedder = 'clip-vit-l-14'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_embeddings_hnsw_clip_vit_l_14",
        table_name="embeddings",
        postgresql_using="hnsw",
        postgresql_where=sa.text("embedder = 'clip-vit-l-14'"),
    )
