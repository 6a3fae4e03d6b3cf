"""Database tables: the one place the schema is declared (migrations are generated from it).

Views (`latest_scores` and the stable views of docs/sql.md) are created by the migrations; see README "Schema".
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

GENERATOR_KINDS = ("base", "lora", "sft", "other")
SOURCE_KINDS = ("generated", "crawled")
STORAGE_KINDS = ("s3", "file")
# pending: ingested, waiting for scores; duplicate: same bytes as `duplicate_of`, never scored again;
# deleted: the object is gone from its source (the row stays; its content's outputs went with it unless
# another object still holds that content). See aesq/core/identity.py.
ASSET_STATUSES = ("pending", "scored", "failed", "duplicate", "deleted")
# The statuses of the one asset that holds a content's scores (unique per SHA-256).
CANONICAL_STATUSES = ("pending", "scored")

# Each embedder gets a partial IVFFlat index over its own fixed dimension (a halfvec column holds any);
# aesq/core/vectors.py builds and searches it.
EMBEDDING_DIMENSIONS = {"efficientnet-lite0": 1280, "clip-vit-l-14": 768}


def _enum(name: str, values: tuple[str, ...]) -> Enum:
    """A text column limited to `values` by a CHECK constraint (easier to migrate than a PG enum)."""
    return Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB}


class Generator(Base):
    """A model version that produced images: a base model, a LoRA or SFT checkpoint, …"""

    __tablename__ = "generators"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(_enum("generator_kind", GENERATOR_KINDS), server_default="other")
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("generators.id", ondelete="SET NULL"))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GeneratorRename(Base):
    """A generator migration 0014 renamed (its name held ':'), with the name its downgrade gives back."""

    __tablename__ = "generator_renames"

    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id", ondelete="CASCADE"), primary_key=True)
    name_before: Mapped[str] = mapped_column(Text)


class Asset(Base):
    """One stored image (or object that failed to be one), with its provenance and status."""

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("storage", "bucket", "key"),
        # One canonical asset per content; failed objects and duplicates may repeat bytes.
        Index(
            "uq_assets_sha256_canonical",
            "sha256",
            unique=True,
            postgresql_where=text("status IN ('pending', 'scored')"),
        ),
        Index("ix_assets_status", "status"),
        Index("ix_assets_sha256", "sha256"),
        # A version's assets, and its latest upsert for a comparison's change markers (migration 0015).
        Index("ix_assets_generator_id_updated_at", "generator_id", "updated_at"),
        # Claims (aesq/core/claims.py): pending assets in id order, and live leases.
        Index("ix_assets_pending", "id", postgresql_where=text("status = 'pending'")),
        Index("ix_assets_lease_until", "lease_until", postgresql_where=text("lease_until IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    storage: Mapped[str] = mapped_column(_enum("storage_kind", STORAGE_KINDS))
    bucket: Mapped[str] = mapped_column(Text, comment="S3 bucket, or the root folder of a local source")
    key: Mapped[str] = mapped_column(Text, comment="object key, or the path below the root folder")
    sha256: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    sidecar_key: Mapped[str | None] = mapped_column(Text, comment="the provenance sidecar read at ingest, if any")
    sidecar_etag: Mapped[str | None] = mapped_column(
        Text, comment="that sidecar's ETag: a listing that shows another re-ingests the object's provenance"
    )
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(Text)
    color_mode: Mapped[str | None] = mapped_column(Text)
    source_kind: Mapped[str] = mapped_column(_enum("source_kind", SOURCE_KINDS))
    generator_id: Mapped[int | None] = mapped_column(ForeignKey("generators.id", ondelete="SET NULL"))
    prompt: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(_enum("asset_status", ASSET_STATUSES), server_default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("assets.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", comment="transient scoring failures so far")
    retry_after: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="a pending asset deferred by a transient failure waits until then"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    analysed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # by defect analysis
    lease_owner: Mapped[str | None] = mapped_column(
        Text, comment="the worker scoring this asset now (aesq/core/claims.py)"
    )
    lease_until: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="the scoring claim lapses then, and any worker may take the asset"
    )


class QueuedObject(Base):
    """An object found new or changed (by a listing or a bucket notification) and not yet ingested; workers
    claim batches of these (aesq/core/claims.py), and ingest removes them in the transaction that records them."""

    __tablename__ = "ingest_queue"
    __table_args__ = (Index("ix_ingest_queue_order", "storage", "bucket", text("changed DESC"), "key"),)

    storage: Mapped[str] = mapped_column(Text, primary_key=True)
    bucket: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    etag: Mapped[str | None] = mapped_column(Text, comment="as listed; None when a notification queued it")
    sidecar: Mapped[str | None] = mapped_column(Text, comment="the provenance sidecar's key, when one was listed")
    listed: Mapped[bool] = mapped_column(
        Boolean, server_default=text("true"), comment="false: queued by a notification, sidecar not looked for yet"
    )
    changed: Mapped[bool] = mapped_column(
        Boolean, server_default=text("false"), comment="a known key with new bytes: claimed first and together"
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", comment="reads that failed so far")
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SourceCursor(Base):
    """Where the last listing of a source whose keys arrive in order ended, and when it was last listed whole."""

    __tablename__ = "source_cursors"

    source: Mapped[str] = mapped_column(Text, primary_key=True)
    after_key: Mapped[str | None] = mapped_column(Text, comment="the greatest key listed so far")
    full_listing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkDone(Base):
    """Work a worker did on one batch (object reads, one model's images): duplicated work shows here."""

    __tablename__ = "work_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    worker: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(Text, comment="'fetch' or 'model:<name>'")
    items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ScoreRow(Base):
    """One scorer's value for one asset; several scorers and scorer versions live side by side."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("asset_id", "scorer", "scorer_version"),
        # The `latest_scores` view's order under one scorer: its latest score per asset without a sort.
        Index(
            "ix_scores_latest",
            "scorer",
            "asset_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_include=["value"],
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    scorer: Mapped[str] = mapped_column(Text)
    scorer_version: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    raw: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Embedding(Base):
    """One embedder's vector for one asset, for near-duplicate and similarity search."""

    __tablename__ = "embeddings"
    # Built with one list; rebuilt with more as rows grow (aesq.core.vectors.rebuild_grown_indexes).
    __table_args__ = tuple(
        Index(
            f"ix_embeddings_ivf_{name.replace('-', '_')}",
            text(f"(vector::halfvec({dim})) halfvec_cosine_ops"),
            postgresql_using="ivfflat",
            postgresql_with={"lists": 1},
            postgresql_where=text(f"embedder = '{name}'"),
        )
        for name, dim in EMBEDDING_DIMENSIONS.items()
    )

    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True)
    embedder: Mapped[str] = mapped_column(Text, primary_key=True)
    vector: Mapped[Any] = mapped_column(HALFVEC())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Defect(Base):
    """A defect found on an asset (filled by defect analysis)."""

    __tablename__ = "defects"
    __table_args__ = (
        CheckConstraint("severity BETWEEN 0 AND 1", name="severity_range"),
        UniqueConstraint("asset_id", "category"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    category: Mapped[str] = mapped_column(Text)
    severity: Mapped[float] = mapped_column(Double)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Critique(Base):
    """A VLM critic's answers about one low scorer, per aspect: an opinion in words, not a measured defect."""

    __tablename__ = "critiques"

    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True)
    critic: Mapped[str] = mapped_column(Text, comment="the VLM scorer that wrote it")
    critic_score: Mapped[float] = mapped_column(Double, comment="the critic's own latest score of the asset then")
    aspects: Mapped[dict[str, str]] = mapped_column(
        JSON, comment="aspect → answer; JSON, not JSONB, so the aspects keep the order they were asked in"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VersionStats(Base):
    """Aggregated score statistics per generator version and scorer, written by the aggregate flow."""

    __tablename__ = "version_stats"
    __table_args__ = (UniqueConstraint("generator_id", "scorer"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id", ondelete="CASCADE"))
    scorer: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Double)
    mean_low: Mapped[float | None] = mapped_column(Double)  # bootstrap 95 % interval of the mean
    mean_high: Mapped[float | None] = mapped_column(Double)
    std: Mapped[float | None] = mapped_column(Double)
    median: Mapped[float] = mapped_column(Double)
    p10: Mapped[float] = mapped_column(Double)
    p90: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    share_above: Mapped[float | None] = mapped_column(Double)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VersionDailyStats(Base):
    """Per generator version, scorer and day (of scoring, UTC): count and mean, for trends."""

    __tablename__ = "version_daily_stats"
    __table_args__ = (UniqueConstraint("generator_id", "scorer", "day"),)

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id", ondelete="CASCADE"))
    scorer: Mapped[str] = mapped_column(Text)
    day: Mapped[date] = mapped_column(Date)
    count: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Double)


class StaleVersion(Base):
    """A generator version whose statistics may be out of date: written by triggers (migration 0006) in the
    same transaction as any change to its scores or assets, consumed by the aggregate."""

    __tablename__ = "stale_versions"
    # A version's queue rows: counted and their latest id read by a comparison's change markers (migration 0015).
    __table_args__ = (Index("ix_stale_versions_generator_id_id", "generator_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id", ondelete="CASCADE"))


class Report(Base):
    """A rendered quality report: where it was saved and the figures the next report compares with."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    location: Mapped[str] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
