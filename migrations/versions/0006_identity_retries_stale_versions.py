"""Objects can be deleted; transient scoring failures are retried; statistics know exactly what is stale.

- asset status `deleted` (the object is gone from its source; kept as history, outside every figure);
- `attempts` and `retry_after` for pending assets deferred by a transient failure;
- an index on `sha256` (every location holding a content is looked up when its canonical changes);
- `stale_versions`, filled by triggers in the same transaction as any change to scores or to an
  asset's status, version or scoring time, and emptied by the aggregate of exactly the rows it saw:
  a score committed while an aggregate runs stays queued for the next one (no clock watermark).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "'pending', 'scored', 'failed', 'duplicate'"
NEW_STATUSES = "'pending', 'scored', 'failed', 'duplicate', 'deleted'"

# Postgres allows transition tables only on single-event triggers, hence one trigger per event.
FUNCTIONS = """
CREATE FUNCTION aesq_stale_by_new_scores() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stale_versions (generator_id)
    SELECT DISTINCT a.generator_id FROM changed s JOIN assets a ON a.id = s.asset_id
    WHERE a.generator_id IS NOT NULL;
    RETURN NULL;
END $$;

CREATE FUNCTION aesq_stale_by_asset_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stale_versions (generator_id)
    SELECT DISTINCT g FROM (
        SELECT o.generator_id, n.generator_id FROM before_rows o JOIN after_rows n ON n.id = o.id
        WHERE (o.status, o.generator_id, o.scored_at) IS DISTINCT FROM (n.status, n.generator_id, n.scored_at)
    ) AS pairs (old_generator, new_generator), LATERAL (VALUES (old_generator), (new_generator)) AS v (g)
    WHERE g IS NOT NULL;
    RETURN NULL;
END $$;

CREATE FUNCTION aesq_stale_by_deleted_assets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stale_versions (generator_id)
    SELECT DISTINCT generator_id FROM before_rows WHERE generator_id IS NOT NULL;
    RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER stale_on_score_insert AFTER INSERT ON scores REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION aesq_stale_by_new_scores();
CREATE TRIGGER stale_on_score_update AFTER UPDATE ON scores REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION aesq_stale_by_new_scores();
CREATE TRIGGER stale_on_score_delete AFTER DELETE ON scores REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION aesq_stale_by_new_scores();
CREATE TRIGGER stale_on_asset_update AFTER UPDATE ON assets REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION aesq_stale_by_asset_changes();
CREATE TRIGGER stale_on_asset_delete AFTER DELETE ON assets REFERENCING OLD TABLE AS before_rows
    FOR EACH STATEMENT EXECUTE FUNCTION aesq_stale_by_deleted_assets();
"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_assets_asset_status"), "assets", type_="check")
    op.create_check_constraint(op.f("ck_assets_asset_status"), "assets", f"status IN ({NEW_STATUSES})")
    op.add_column(
        "assets",
        sa.Column(
            "attempts", sa.Integer(), server_default="0", nullable=False, comment="transient scoring failures so far"
        ),
    )
    op.add_column(
        "assets",
        sa.Column(
            "retry_after",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="a pending asset deferred by a transient failure waits until then",
        ),
    )
    op.create_index("ix_assets_sha256", "assets", ["sha256"], unique=False)
    op.create_table(
        "stale_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generator_id"],
            ["generators.id"],
            name=op.f("fk_stale_versions_generator_id_generators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stale_versions")),
    )
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    # Statistics written before the queue existed are recomputed once.
    op.execute("INSERT INTO stale_versions (generator_id) SELECT id FROM generators")


def downgrade() -> None:
    for name, table in (
        ("stale_on_score_insert", "scores"),
        ("stale_on_score_update", "scores"),
        ("stale_on_score_delete", "scores"),
        ("stale_on_asset_update", "assets"),
        ("stale_on_asset_delete", "assets"),
    ):
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION aesq_stale_by_new_scores, aesq_stale_by_asset_changes, aesq_stale_by_deleted_assets")
    op.drop_table("stale_versions")
    op.drop_index("ix_assets_sha256", table_name="assets")
    op.drop_column("assets", "retry_after")
    op.drop_column("assets", "attempts")
    op.execute("UPDATE assets SET status = 'failed', error = 'object deleted' WHERE status = 'deleted'")
    op.drop_constraint(op.f("ck_assets_asset_status"), "assets", type_="check")
    op.create_check_constraint(op.f("ck_assets_asset_status"), "assets", f"status IN ({OLD_STATUSES})")
