"""Initial schema: generators, assets, scores, embeddings (halfvec + HNSW), defects, stats and views.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 17:32:15.410983
"""

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


LATEST_SCORES = """
CREATE VIEW latest_scores AS
SELECT DISTINCT ON (s.asset_id, s.scorer)
       s.asset_id, s.scorer, s.scorer_version, s.value, s.raw, s.created_at
FROM scores s
ORDER BY s.asset_id, s.scorer, s.created_at DESC, s.id DESC
"""

GENERATOR_STATS = """
CREATE VIEW generator_stats AS
SELECT g.id AS generator_id, g.name AS generator, g.version, g.kind, ls.scorer,
       count(*) AS n,
       avg(ls.value) AS mean,
       stddev_samp(ls.value) AS std,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ls.value) AS median,
       percentile_cont(0.1) WITHIN GROUP (ORDER BY ls.value) AS p10,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ls.value) AS p90,
       min(ls.value) AS min,
       max(ls.value) AS max,
       max(ls.created_at) AS last_scored_at
FROM latest_scores ls
JOIN assets a ON a.id = ls.asset_id
JOIN generators g ON g.id = a.generator_id
GROUP BY g.id, ls.scorer
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "generators",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "base",
                "lora",
                "sft",
                "other",
                name="generator_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="other",
            nullable=False,
        ),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["generators.id"], name=op.f("fk_generators_parent_id_generators"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generators")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_generators_name_version")),
    )
    op.create_table(
        "assets",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "storage",
            sa.Enum("s3", "file", name="storage_kind", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("bucket", sa.Text(), nullable=False, comment="S3 bucket, or the root folder of a local source"),
        sa.Column("key", sa.Text(), nullable=False, comment="object key, or the path below the root folder"),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.Text(), nullable=True),
        sa.Column("color_mode", sa.Text(), nullable=True),
        sa.Column(
            "source_kind",
            sa.Enum("generated", "crawled", name="source_kind", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("generator_id", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column(
            "extra", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "scored",
                "failed",
                "duplicate",
                name="asset_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duplicate_of", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["assets.id"], name=op.f("fk_assets_duplicate_of_assets"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["generator_id"], ["generators.id"], name=op.f("fk_assets_generator_id_generators"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("storage", "bucket", "key", name=op.f("uq_assets_storage_bucket_key")),
    )
    op.create_index("ix_assets_generator_id", "assets", ["generator_id"], unique=False)
    op.create_index("ix_assets_status", "assets", ["status"], unique=False)
    op.create_index(
        "uq_assets_sha256_canonical",
        "assets",
        ["sha256"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'scored')"),
    )
    op.create_table(
        "version_stats",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.Column("scorer", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("mean", sa.Double(), nullable=False),
        sa.Column("median", sa.Double(), nullable=False),
        sa.Column("p10", sa.Double(), nullable=False),
        sa.Column("p90", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("share_above", sa.Double(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["generator_id"],
            ["generators.id"],
            name=op.f("fk_version_stats_generator_id_generators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_stats")),
        sa.UniqueConstraint("generator_id", "scorer", name=op.f("uq_version_stats_generator_id_scorer")),
    )
    op.create_table(
        "defects",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("severity", sa.Double(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("severity BETWEEN 0 AND 1", name=op.f("ck_defects_severity_range")),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_defects_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_defects")),
    )
    op.create_index(op.f("ix_defects_asset_id"), "defects", ["asset_id"], unique=False)
    op.create_table(
        "embeddings",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("embedder", sa.Text(), nullable=False),
        sa.Column("vector", pgvector.sqlalchemy.halfvec.HALFVEC(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_embeddings_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("asset_id", "embedder", name=op.f("pk_embeddings")),
    )
    op.create_index(
        "ix_embeddings_hnsw_efficientnet_lite0",
        "embeddings",
        [sa.literal_column("(vector::halfvec(1280)) halfvec_cosine_ops")],
        unique=False,
        postgresql_using="hnsw",
        postgresql_where=sa.text("embedder = 'efficientnet-lite0'"),
    )
    op.create_table(
        "scores",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("scorer", sa.Text(), nullable=False),
        sa.Column("scorer_version", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column(
            "raw", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_scores_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
        sa.UniqueConstraint(
            "asset_id", "scorer", "scorer_version", name=op.f("uq_scores_asset_id_scorer_scorer_version")
        ),
    )
    op.execute(LATEST_SCORES)
    op.execute(GENERATOR_STATS)


def downgrade() -> None:
    op.execute("DROP VIEW generator_stats")
    op.execute("DROP VIEW latest_scores")
    op.drop_table("scores")
    op.drop_index(
        "ix_embeddings_hnsw_efficientnet_lite0",
        table_name="embeddings",
        postgresql_using="hnsw",
        postgresql_where=sa.text("embedder = 'efficientnet-lite0'"),
    )
    op.drop_table("embeddings")
    op.drop_index(op.f("ix_defects_asset_id"), table_name="defects")
    op.drop_table("defects")
    op.drop_table("version_stats")
    op.drop_index(
        "uq_assets_sha256_canonical", table_name="assets", postgresql_where=sa.text("status IN ('pending', 'scored')")
    )
    op.drop_index("ix_assets_status", table_name="assets")
    op.drop_index("ix_assets_generator_id", table_name="assets")
    op.drop_table("assets")
    op.drop_table("generators")
