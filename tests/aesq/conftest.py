"""The demo data set scored into the test database, for the dashboard and API tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from aesq import aggregate, defect_analysis, scoring
from aesq.config import Settings, get_settings
from aesq.demo import build_sample
from tests.helpers import ingest_all, noise_image


def seed_demo(settings: Settings) -> Path:
    """Build the demo sample (plus two images of a second generator) under the data folder, ingest, score,
    aggregate and analyse it with the plain functions the flows call; returns the sample folder."""
    folder = settings.data_dir / "demo"
    build_sample(folder)
    for index in range(2):
        other = folder / "generated" / "other-model" / "v1" / f"noise-{index}.jpg"
        other.parent.mkdir(parents=True, exist_ok=True)
        noise_image(index, 160).save(other, "JPEG")
    ids = ingest_all(str(folder), settings)
    scoring.score_assets(ids, settings)
    aggregate.aggregate_versions(settings)
    for batch in defect_analysis.low_scorer_batches(settings):
        defect_analysis.analyse_assets(batch, settings)
    return folder


@pytest.fixture
def demo_settings(settings, monkeypatch) -> Settings:
    """Settings whose database holds the scored demo data, with the demo folder as the configured source."""
    monkeypatch.setenv("AESQ_BATCH_SIZE", "64")
    monkeypatch.setenv("AESQ_SOURCES", str(settings.data_dir / "demo"))
    get_settings.cache_clear()
    seed_demo(get_settings())
    return get_settings()
