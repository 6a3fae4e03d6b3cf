"""Near-duplicates are found within a generator version or against crawled data, never across versions:
drop the findings that paired two versions and analyse again every asset holding a `near_duplicate` finding.

Findings written before the rule changed may name an asset of another version (paired generations of the
same prompt and seed). Those rows are deleted here, whether or not their asset is analysed again (one no
longer a low scorer never is, and its stale row would count in the defect shares, a view over `defects`).
The partner is the asset the finding's detail names ("near-duplicate of asset N …"); a row is stale when
both assets have a generator version and the versions differ. Clearing `analysed_at` has the defects flow
analyse the low scorers among those assets again, finding a copy within their version if there is one.
Downgrade changes nothing: the deleted findings broke the rule, and the assets cannot tell they were analysed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 19:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE assets SET analysed_at = NULL WHERE id IN (SELECT asset_id FROM defects WHERE category = 'near_duplicate')"
    )
    op.execute(
        """
        DELETE FROM defects d USING assets a, assets partner
        WHERE d.category = 'near_duplicate' AND a.id = d.asset_id
          AND partner.id = CAST(substring(d.detail FROM '^near-duplicate of asset ([0-9]+) ') AS bigint)
          AND a.generator_id <> partner.generator_id
        """
    )


def downgrade() -> None:
    pass
