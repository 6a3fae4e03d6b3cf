"""Asset look-ups against the real database."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.core.assets import nearest_assets
from aesq.core.database import get_engine
from aesq.core.images import ImageFacts
from aesq.core.provenance import Provenance
from aesq.core.tables import Asset
from aesq.core.writes import AssetRecord, upsert_assets, write_embeddings

FACTS = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)


def test_neighbours_leave_out_a_failed_asset_that_keeps_its_embedding(settings):
    """A failed keeper holds its content's embedding, yet is no image to show as a neighbour; those beyond it are."""
    records = [
        AssetRecord("s3", "bkt", key, f"sha-{key}", None, 10, FACTS, Provenance("crawled", None, None, None, {}), None)
        for key in ("query.png", "failed.png", "near.png", "far.png")
    ]
    with get_engine(settings).begin() as connection:
        upsert_assets(connection, records)
        ids = {
            key.removesuffix(".png"): asset_id for key, asset_id in connection.execute(sa.select(Asset.key, Asset.id))
        }
        vectors = np.zeros((4, 1280), dtype=np.float32)
        vectors[:, 0] = 1.0
        vectors[1, 1], vectors[2, 1], vectors[3, 1] = 0.01, 0.2, 1.0  # failed is the closest, then near, then far
        write_embeddings(
            connection, "efficientnet-lite0", [ids[name] for name in ("query", "failed", "near", "far")], vectors
        )
        connection.execute(sa.update(Asset).values(status="scored", scored_at=sa.func.now()))
        connection.execute(sa.update(Asset).where(Asset.id == ids["failed"]).values(status="failed"))

    neighbours = nearest_assets(settings, ids["query"], "efficientnet-lite0", limit=2)
    assert [asset_id for asset_id, _ in neighbours] == [ids["near"], ids["far"]]


def test_an_unknown_embedder_is_named_with_the_known_ones(settings):
    with pytest.raises(
        ValueError, match="no vector index for embedder 'nope': use one of efficientnet-lite0, clip-vit"
    ):
        nearest_assets(settings, 1, "nope")
