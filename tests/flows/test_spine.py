"""The spine end to end: objects in a real S3 server → Prefect flows → Postgres+pgvector → comparison."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from aesq.analysis.versions import version_statistics
from aesq.core.assets import nearest_assets
from aesq.core.config import get_settings
from aesq.core.database import engine, get_engine
from aesq.core.namespaces import LabelsDatabaseMissing
from aesq.flows.spine import aggregate_flow, ingest_flow, run_flow, score_flow
from aesq.models.efficientnet import EfficientNetLite0Embedder
from aesq.models.technical import TechnicalQualityScorer
from tests.helpers import jpeg_bytes, photo, png_bytes, put

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ASTRONAUT = jpeg_bytes(photo("astronaut"))
ROCKET = jpeg_bytes(photo("rocket"))


def _sixteen_bit_scan() -> bytes:
    """A 16-bit greyscale PNG of a photograph, as scanners and high-bit-depth exports write them."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(photo("camera").convert("L"), dtype=np.uint16) * 257).save(buffer, "PNG")
    return buffer.getvalue()


def _float_depth_map() -> bytes:
    """A 32-bit floating-point TIFF: a depth map, not a picture aesq can score."""
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 4, 64 * 64, dtype=np.float32).reshape(64, 64)).save(buffer, "TIFF")
    return buffer.getvalue()


def _upload_sample(client, bucket: str) -> None:
    """Good images with provenance from key layout, metadata and sidecars, plus bad objects."""
    put(client, bucket, "generated/sdxl/1.0/astronaut.jpg", ASTRONAUT)
    put(
        client,
        bucket,
        "incoming/coffee.jpg",
        jpeg_bytes(photo("coffee")),
        metadata={"generator": "flux:dev", "generator-kind": "base", "prompt": "a cup of coffee", "seed": "7"},
    )
    put(client, bucket, "generated/sdxl/1.1/chelsea.png", png_bytes(photo("chelsea")))
    put(
        client,
        bucket,
        "generated/sdxl/1.1/chelsea.json",
        json.dumps(
            {"prompt": "a cat", "seed": 3, "generator": {"kind": "lora", "parent": "sdxl:1.0"}, "style": "photo"}
        ).encode(),
    )
    put(client, bucket, "crawled/rocket.jpg", ROCKET)
    put(client, bucket, "crawled/rocket-copy.jpg", ROCKET)
    put(client, bucket, "crawled/astronaut-small.jpg", jpeg_bytes(photo("astronaut").resize((256, 256))))
    put(client, bucket, "crawled/empty.jpg", b"")
    put(client, bucket, "crawled/notes.jpg", b"meeting notes, not a picture")
    put(client, bucket, "crawled/truncated.jpg", jpeg_bytes(photo("coffee"))[:4000])
    put(client, bucket, "crawled/huge.png", png_bytes(Image.new("L", (3000, 3000))))
    put(client, bucket, "crawled/depth.tif", _float_depth_map())
    put(client, bucket, "crawled/scan.png", _sixteen_bit_scan())
    put(client, bucket, "generated/sdxl/1.0/bad-seed.jpg", jpeg_bytes(photo("coffee").rotate(90)))
    put(client, bucket, "generated/sdxl/1.0/bad-seed.json", b'{"seed": "not-a-number"}')


def _assets(settings) -> dict[str, sa.Row]:
    """Every asset by key, with its generator."""
    query = sa.text(
        "SELECT a.*, g.name AS generator, g.version AS generator_version, g.kind AS generator_kind, "
        "p.name || ':' || p.version AS parent FROM assets a "
        "LEFT JOIN generators g ON g.id = a.generator_id LEFT JOIN generators p ON p.id = g.parent_id"
    )
    with get_engine(settings).connect() as connection:
        return {row.key: row for row in connection.execute(query)}


def _snapshot(settings) -> dict[str, list]:
    """Everything a re-run must leave unchanged."""
    with get_engine(settings).connect() as connection:
        return {
            table: connection.execute(sa.text(query)).all()
            for table, query in {
                "assets": "SELECT id, key, sha256, status, error, duplicate_of, updated_at FROM assets ORDER BY id",
                "scores": "SELECT id, asset_id, scorer, value, created_at FROM scores ORDER BY id",
                "embeddings": "SELECT asset_id, embedder, created_at FROM embeddings ORDER BY asset_id",
                "generators": "SELECT id, name, version, kind, parent_id FROM generators ORDER BY id",
                "version_stats": "SELECT generator_id, scorer, count, mean, computed_at FROM version_stats ORDER BY 1, 2",
            }.items()
        }


def test_run_flow_stores_provenance_scores_and_embeddings(settings, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("AESQ_MAX_PIXELS", "4000000")
    from aesq.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    _upload_sample(s3_client, bucket)

    outcomes = run_flow(f"s3://{bucket}/")

    assets = _assets(settings)
    assert sum(outcome.scored for outcome in outcomes) == 6
    assert {key: row.status for key, row in assets.items()} == {
        "generated/sdxl/1.0/astronaut.jpg": "scored",
        "incoming/coffee.jpg": "scored",
        "generated/sdxl/1.1/chelsea.png": "scored",
        "crawled/rocket-copy.jpg": "scored",
        "crawled/rocket.jpg": "duplicate",
        "crawled/astronaut-small.jpg": "scored",
        "crawled/empty.jpg": "failed",
        "crawled/notes.jpg": "failed",
        "crawled/truncated.jpg": "failed",
        "crawled/huge.png": "failed",
        "crawled/depth.tif": "failed",
        "crawled/scan.png": "scored",
        "generated/sdxl/1.0/bad-seed.jpg": "failed",
    }
    reasons = {key: row.error for key, row in assets.items() if row.status == "failed"}
    assert "empty object" in reasons["crawled/empty.jpg"]
    assert "not an image" in reasons["crawled/notes.jpg"]
    assert "truncated" in reasons["crawled/truncated.jpg"]
    assert "exceeds the limit of 4,000,000" in reasons["crawled/huge.png"]
    assert "floating-point data (mode 'F'" in reasons["crawled/depth.tif"]
    assert "seed must be an integer" in reasons["generated/sdxl/1.0/bad-seed.jpg"]
    assert assets["crawled/rocket.jpg"].duplicate_of == assets["crawled/rocket-copy.jpg"].id

    astronaut = assets["generated/sdxl/1.0/astronaut.jpg"]
    assert (astronaut.generator, astronaut.generator_version, astronaut.source_kind) == ("sdxl", "1.0", "generated")
    assert (astronaut.width, astronaut.height, astronaut.format, astronaut.color_mode) == (512, 512, "JPEG", "RGB")
    assert astronaut.sha256 == __import__("hashlib").sha256(ASTRONAUT).hexdigest()
    assert astronaut.size_bytes == len(ASTRONAUT) and astronaut.etag
    coffee = assets["incoming/coffee.jpg"]
    assert (coffee.generator, coffee.generator_version, coffee.generator_kind) == ("flux", "dev", "base")
    assert (coffee.prompt, coffee.seed) == ("a cup of coffee", 7)
    chelsea = assets["generated/sdxl/1.1/chelsea.png"]
    assert (chelsea.generator_kind, chelsea.parent, chelsea.prompt, chelsea.seed) == ("lora", "sdxl:1.0", "a cat", 3)
    assert chelsea.extra == {"style": "photo"} and chelsea.format == "PNG"
    rocket = assets["crawled/rocket-copy.jpg"]
    assert rocket.source_kind == "crawled" and rocket.generator is None

    # Stored scores and embeddings are what the models give for the same bytes.
    scorer, embedder = TechnicalQualityScorer(), EmbedderUnderTest()
    with get_engine(settings).connect() as connection:
        stored = dict(
            connection.execute(sa.text("SELECT asset_id, value FROM scores WHERE scorer = 'technical'")).all()
        )
        vectors = dict(connection.execute(sa.text("SELECT asset_id, vector FROM embeddings")).all())
    scored_ids = {row.id for row in assets.values() if row.status == "scored"}
    assert set(stored) == scored_ids and set(vectors) == scored_ids
    expected = scorer.score([Image.open(io.BytesIO(ASTRONAUT)).convert("RGB")])[0].value
    assert stored[astronaut.id] == pytest.approx(expected, abs=1e-9)
    expected_vector = embedder.embed([Image.open(io.BytesIO(ASTRONAUT)).convert("RGB")])[0]
    stored_vector = vectors[astronaut.id].to_numpy().astype(np.float32)
    assert stored_vector.shape == (1280,)
    np.testing.assert_allclose(stored_vector, expected_vector, atol=2e-3)
    scan = assets["crawled/scan.png"]  # 16-bit levels scaled to 8 bits: scored as the 8-bit photograph
    assert scan.color_mode == "I;16"
    assert stored[scan.id] == pytest.approx(scorer.score([photo("camera").convert("L")])[0].value, abs=1e-9)

    # The near-duplicate (a resized copy) is the astronaut's nearest neighbour.
    neighbours = nearest_assets(settings, astronaut.id, "efficientnet-lite0", limit=3)
    assert neighbours[0][0] == assets["crawled/astronaut-small.jpg"].id
    assert neighbours[0][1] < neighbours[1][1]

    comparison = {(row["generator"], row["version"]): row for row in version_statistics(settings, "technical")}
    assert set(comparison) == {("sdxl", "1.0"), ("sdxl", "1.1"), ("flux", "dev")}
    assert comparison[("sdxl", "1.0")]["count"] == 1
    assert comparison[("sdxl", "1.0")]["mean"] == pytest.approx(stored[astronaut.id])

    # Running any flow again adds no rows and changes nothing.
    before = _snapshot(settings)
    run_flow(f"s3://{bucket}/")
    assert ingest_flow(f"s3://{bucket}/") == []
    score_flow()
    aggregate_flow()
    assert _snapshot(settings) == before


class EmbedderUnderTest(EfficientNetLite0Embedder):
    """The production embedder, set up on construction for direct comparison."""

    def __init__(self) -> None:
        super().__init__()
        self.setup()


def test_changed_object_is_rescored_and_new_objects_are_picked_up(settings, s3_client, bucket):
    put(s3_client, bucket, "generated/m/1/a.jpg", ASTRONAUT)
    run_flow(f"s3://{bucket}/")
    first = _assets(settings)["generated/m/1/a.jpg"]

    put(s3_client, bucket, "generated/m/1/a.jpg", ROCKET)
    put(s3_client, bucket, "generated/m/2/b.jpg", jpeg_bytes(photo("coffee")))
    assert len(ingest_flow(f"s3://{bucket}/")) == 2
    score_flow()

    assets = _assets(settings)
    changed = assets["generated/m/1/a.jpg"]
    assert changed.id == first.id and changed.sha256 != first.sha256 and changed.status == "scored"
    assert assets["generated/m/2/b.jpg"].status == "scored"
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scores")).scalar_one() == 2


def test_enabling_a_model_backfills_scored_assets_without_touching_existing_scores(
    settings, s3_client, bucket, monkeypatch
):
    from aesq.core.config import get_settings

    put(s3_client, bucket, "generated/m/1/a.jpg", ASTRONAUT)
    put(s3_client, bucket, "generated/m/1/b.jpg", ROCKET)
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    get_settings.cache_clear()
    run_flow(f"s3://{bucket}/")
    before = _snapshot(get_settings())
    assert before["embeddings"] == [] and len(before["scores"]) == 2

    monkeypatch.setenv("AESQ_EMBEDDERS", "efficientnet-lite0")
    get_settings.cache_clear()
    run_flow(f"s3://{bucket}/")
    after = _snapshot(get_settings())
    assert after["scores"] == before["scores"]
    assert [row.status for row in after["assets"]] == ["scored", "scored"]
    assert len(after["embeddings"]) == 2
    run_flow(f"s3://{bucket}/")
    assert _snapshot(get_settings()) == after  # nothing left to backfill


@pytest.fixture
def read_only_database_url(settings) -> Iterator[str]:
    """The test database through a new role that may read every table and write none."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        connection.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    url = sa.engine.make_url(settings.database_url).set(username=role).render_as_string(hide_password=False)
    yield url
    engine(url).dispose()
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
        connection.execute(sa.text(f'DROP ROLE "{role}"'))


def test_a_failed_ingest_raises_its_own_error_not_its_unrun_score(
    settings, s3_client, bucket, read_only_database_url, monkeypatch
):
    """Listing works through a read-only role; recording the assets fails, after the task's retries (~45 s)."""
    put(s3_client, bucket, "generated/m/1/a.jpg", ASTRONAUT)
    monkeypatch.setenv("AESQ_DATABASE_URL", read_only_database_url)
    get_settings.cache_clear()
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied for table"):
        run_flow(f"s3://{bucket}/")


def test_a_run_in_the_labels_namespace_only_selects_its_database_and_says_when_it_is_missing(
    settings, empty_database_url, s3_client, bucket, monkeypatch
):
    """Only `aesq bench labels` creates the labels database; a run started elsewhere stops with one line."""
    put(s3_client, bucket, "generated/m/1/a.jpg", ASTRONAUT)
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)  # a production database without a labels one
    get_settings.cache_clear()
    name = sa.engine.make_url(empty_database_url).database
    with pytest.raises(LabelsDatabaseMissing, match=f"the labels database '{name}_labels' does not exist"):
        run_flow(f"s3://{bucket}/", namespace="labels")
    with engine(empty_database_url).connect() as connection:
        labels = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
        assert connection.execute(labels, {"name": f"{name}_labels"}).first() is None
