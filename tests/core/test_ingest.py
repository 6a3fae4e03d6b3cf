"""Ingest on the real components (moto S3, embedded Postgres): one object's problem stays that object's."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from aesq.core import scoring
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from tests.core.test_images import tiff_whose_second_page_has_no_width
from tests.helpers import ingest_all, jpeg_bytes, noise_image, put


@pytest.mark.slow
def test_a_poison_file_fails_alone_and_the_rest_of_its_batch_is_scored(settings, s3_client, bucket, monkeypatch):
    """The reported attack: 40 JPEGs and a TIFF on which Pillow raises TypeError, in one batch."""
    monkeypatch.setenv("AESQ_BATCH_SIZE", "41")
    get_settings.cache_clear()
    settings = get_settings()
    for index in range(40):
        put(s3_client, bucket, f"generated/sdxl/1.0/{index:02d}.jpg", jpeg_bytes(noise_image(index, 96)))
    put(s3_client, bucket, "generated/sdxl/1.0/poison.tif", tiff_whose_second_page_has_no_width())
    source = f"s3://{bucket}/"

    scoring.score_assets(ingest_all(source, settings), settings)

    with get_engine(settings).connect() as connection:
        assets = {row.key: row for row in connection.execute(sa.text("SELECT key, status, error FROM assets"))}
        scored = connection.execute(sa.text("SELECT count(DISTINCT asset_id) FROM scores")).scalar_one()
    poison = assets.pop("generated/sdxl/1.0/poison.tif")
    assert (poison.status, poison.error) == ("failed", "cannot count its frames: TypeError: Missing dimensions")
    assert len(assets) == 40 and {row.status for row in assets.values()} == {"scored"}
    assert scored == 40
