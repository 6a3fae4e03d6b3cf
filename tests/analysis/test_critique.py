"""VLM critiques of low scorers, with a tiny random InternVL-chat checkpoint as ERNIE-Image-Aes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from aesq.analysis import critique, defect_analysis
from aesq.core import scoring
from aesq.core.config import Settings, get_settings
from aesq.core.database import get_engine
from aesq.core.fetch import fetch_and_decode
from aesq.core.images import pixel_budget
from aesq.core.scoring import UnknownModel
from aesq.core.storage import open_source
from aesq.models.internvl import ErnieImageAesScorer
from tests.helpers import ingest_all, jpeg_bytes, noise_image, photo, put, write_tiny_ernie

ASPECTS = ["Composition & Design", "Technical Execution"]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny ERNIE-Image-Aes checkpoint in the published layout."""
    return write_tiny_ernie(tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize(
    ("settings_", "expected"),
    [
        (dict(scorers=["technical"]), None),
        (dict(scorers=["technical", "ernie-aes"]), "ernie-aes"),
        (dict(scorers=["ernie-aes", "artimuse"], critic="artimuse"), "artimuse"),
        (dict(scorers=["ernie-aes"], critique=False), None),
        (dict(pools={"gpu": {"scorers": ["artimuse"]}, "cpu": {"scorers": ["technical"]}}), "artimuse"),
    ],
)
def test_the_critic_is_the_first_enabled_vlm_unless_named(settings_, expected):
    assert critique.critic_name(Settings(**settings_)) == expected


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        (dict(scorers=["technical"], critic="technical"), "cannot write critiques"),
        (dict(scorers=["technical"], critic="ernie-aes"), "not an enabled scorer"),
    ],
)
def test_a_critic_that_cannot_be_is_a_clear_error(settings_, message):
    with pytest.raises(UnknownModel, match=message):
        critique.critic_name(Settings(**settings_))


def test_low_scorers_get_the_critics_answer_per_aspect(settings, s3_client, bucket, weights_dir, monkeypatch):
    monkeypatch.setenv("AESQ_SCORERS", "technical,ernie-aes")
    monkeypatch.setenv("AESQ_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("AESQ_CRITIQUE_ASPECTS", ",".join(ASPECTS))
    monkeypatch.setenv("AESQ_CRITIQUE_MAX_NEW_TOKENS", "5")
    get_settings.cache_clear()
    settings = get_settings()
    images = {"a.jpg": photo("astronaut"), "b.jpg": noise_image(3, 200), "gone.jpg": photo("coffee")}
    for key, image in images.items():
        put(s3_client, bucket, f"generated/sdxl/1.0/{key}", jpeg_bytes(image))
    source = f"s3://{bucket}/"
    ids = ingest_all(source, settings)
    assert scoring.score_assets(ids, settings).scored == 3
    s3_client.remove_object(bucket, "generated/sdxl/1.0/gone.jpg")

    defect_analysis.analyse_assets(ids, settings)
    assert critique.critique_assets(ids, settings) == 2  # the unreadable one is skipped
    assert critique.critique_assets(ids, settings) == 2  # again: the rows are replaced, not duplicated
    query = sa.text(
        "SELECT a.key, c.critic, c.critic_score, c.aspects, ls.value FROM critiques c JOIN assets a ON a.id = c.asset_id "
        "JOIN latest_scores ls ON ls.asset_id = a.id AND ls.scorer = 'ernie-aes'"
    )
    with get_engine(settings).connect() as connection:
        rows = {row.key.rsplit("/", 1)[1]: row for row in connection.execute(query)}
        total = connection.execute(sa.text("SELECT count(*) FROM critiques")).scalar()
        categories = connection.execute(sa.text("SELECT DISTINCT category FROM defects")).scalars().all()
    assert sorted(rows) == ["a.jpg", "b.jpg"] and total == 2
    assert "unreadable" in categories and "critique" not in categories  # a critique is no defect
    model = ErnieImageAesScorer(weights_dir=weights_dir)
    model.setup()
    for key, row in rows.items():
        assert row.critic == "ernie-aes" and row.critic_score == pytest.approx(row.value)
        # each asset's answers are the model's answers about that asset's own image (as decoded from JPEG)
        payload = jpeg_bytes(images[key])
        decoded = fetch_and_decode(
            open_source(f"s3://{bucket}", settings),
            f"generated/sdxl/1.0/{key}",
            None,
            hashlib.sha256(payload).hexdigest(),
            settings.max_pixels,
            pixel_budget(settings.decode_pixel_budget),
        )
        assert list(row.aspects.items()) == list(model.critique([decoded], ASPECTS, 5)[0].items())  # in order
    assert rows["a.jpg"].aspects != rows["b.jpg"].aspects


def test_without_a_vlm_nothing_is_critiqued(settings):
    assert critique.critique_assets([1, 2], settings) == 0
