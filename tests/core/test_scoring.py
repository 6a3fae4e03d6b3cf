"""Scoring on the real components (embedded Postgres with pgvector, moto S3, local folders, the real models):
a batch of real images gets every enabled model's output, an image that cannot be decoded fails alone with its
reason, scoring again changes nothing, and a storage that fails for the whole batch makes the task retry."""

from __future__ import annotations

import shutil

import pytest
import sqlalchemy as sa

from aesq.core import scoring
from aesq.core.config import ConfigurationError, ScoringPool
from aesq.core.database import get_engine
from aesq.core.storage import StorageUnavailable, open_source, recent_objects
from aesq.core.tables import EMBEDDING_DIMENSIONS
from tests.helpers import ingest_all, jpeg_bytes, noise_image, photo, put, technical_score


def _outputs(settings) -> dict[str, list[tuple]]:
    """Every asset, score and embedding row, by key, as they stand (row ids included, so a rewrite shows)."""
    with get_engine(settings).connect() as connection:
        assets = connection.execute(
            sa.text("SELECT id, key, status::text, error, attempts, scored_at FROM assets ORDER BY key")
        ).all()
        scores = connection.execute(
            sa.text(
                "SELECT s.id, a.key, s.scorer, s.scorer_version, s.value FROM scores s "
                "JOIN assets a ON a.id = s.asset_id ORDER BY a.key, s.scorer"
            )
        ).all()
        embeddings = connection.execute(
            sa.text(
                "SELECT a.key, e.embedder, vector_dims(e.vector) FROM embeddings e "
                "JOIN assets a ON a.id = e.asset_id ORDER BY a.key, e.embedder"
            )
        ).all()
    return {"assets": list(assets), "scores": list(scores), "embeddings": list(embeddings)}


@pytest.fixture
def photos(settings, s3_client, bucket) -> dict[str, bytes]:
    """Three real photographs ingested from S3, waiting for scores; key → bytes."""
    payloads = {
        f"generated/sdxl/1.0/{name}.jpg": jpeg_bytes(photo(name)) for name in ("astronaut", "coffee", "chelsea")
    }
    for key, payload in payloads.items():
        put(s3_client, bucket, key, payload)
    assert len(ingest_all(f"s3://{bucket}/", settings)) == 3
    return payloads


def test_a_batch_of_real_images_gets_every_enabled_models_output(settings, photos):
    batch = scoring.claim_batch(settings)

    outcome = scoring.score_assets(batch, settings)

    assert outcome == scoring.BatchOutcome(scored=3, failed=0, deferred=0, unfinished=())
    state = _outputs(settings)
    assert [(row.key, row.status, row.error) for row in state["assets"]] == [
        (key, "scored", None) for key in sorted(photos)
    ]
    assert [(row.key, row.scorer) for row in state["scores"]] == [(key, "technical") for key in sorted(photos)]
    for row in state["scores"]:
        assert row.value == pytest.approx(technical_score(photos[row.key]), abs=1e-6)
    assert [tuple(row) for row in state["embeddings"]] == [
        (key, "efficientnet-lite0", EMBEDDING_DIMENSIONS["efficientnet-lite0"]) for key in sorted(photos)
    ]
    assert scoring.claim_batch(settings) == []  # nothing left to score, nothing left claimed


def test_scoring_a_batch_again_changes_nothing(settings, photos):
    batch = scoring.claim_batch(settings)
    scoring.score_assets(batch, settings)
    before = _outputs(settings)

    again = scoring.score_assets(batch, settings)  # a task retried after its first try had committed

    assert again == scoring.BatchOutcome(scored=0, failed=0, deferred=0, unfinished=())
    assert _outputs(settings) == before


def test_an_image_that_cannot_be_decoded_fails_alone_with_its_reason(settings, tmp_path):
    """Ingested under a generous pixel limit, scored under a stricter one: the large image is refused at decode."""
    folder = tmp_path / "images" / "generated" / "sdxl" / "1.0"
    folder.mkdir(parents=True)
    for seed, (name, size) in enumerate((("small-1.jpg", 64), ("small-2.jpg", 64), ("large.jpg", 128))):
        (folder / name).write_bytes(jpeg_bytes(noise_image(seed, size)))
    ingest_all(str(tmp_path / "images"), settings)
    strict = settings.model_copy(update={"max_pixels": 5000})
    batch = scoring.claim_batch(strict)

    outcome = scoring.score_assets(batch, strict)

    state = _outputs(settings)
    large = next(row for row in state["assets"] if row.key.endswith("large.jpg"))
    assert outcome == scoring.BatchOutcome(scored=2, failed=1, deferred=0, unfinished=(large.id,))
    assert (large.status, large.error) == (
        "failed",
        "128x128 = 16,384 pixels exceeds the limit of 5,000 (decompression bomb?)",
    )
    assert {row.status for row in state["assets"] if row.id != large.id} == {"scored"}
    assert large.key not in {row.key for row in state["scores"] + state["embeddings"]}
    assert len(state["scores"]) == 2 and len(state["embeddings"]) == 2


def test_a_storage_failing_for_every_image_raises_and_gives_the_batch_back(settings, tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for index in range(2):
        (root / "sub" / f"{index}.jpg").write_bytes(jpeg_bytes(noise_image(index)))
    ingest_all(str(root), settings)
    source = open_source(str(root), settings)
    for item in source.list():  # forget ingest's copies, so scoring must read the storage
        recent_objects.take(source, item.key, item.etag)
    shutil.rmtree(root / "sub")
    (root / "sub").write_bytes(b"a file where the folder was: every read fails, none is missing")
    batch = scoring.claim_batch(settings)

    with pytest.raises(StorageUnavailable, match="cannot read sub/"):
        scoring.score_assets(batch, settings)

    assert [(row.status, row.attempts) for row in _outputs(settings)["assets"]] == [("pending", 0)] * 2
    assert scoring.claim_batch(settings) == batch  # given back at once, no try counted


def _device_torch_lacks() -> str:
    """A CUDA device this machine's torch cannot use (there is always one: the one past the last)."""
    import torch

    return f"cuda:{torch.cuda.device_count()}" if torch.backends.cuda.is_built() else "cuda"


def test_a_device_torch_does_not_have_is_a_configuration_error_before_any_model_loads(settings):
    on_missing_device = settings.model_copy(update={"device": _device_torch_lacks()})
    with pytest.raises(scoring.DeviceUnavailable, match=f"^AESQ_DEVICE={on_missing_device.device}: ") as raised:
        scoring.check_device(on_missing_device)
    assert isinstance(raised.value, ConfigurationError)
    with pytest.raises(scoring.DeviceUnavailable):
        scoring.load_models(on_missing_device)


def test_the_cpu_and_a_process_whose_models_run_on_pools_need_no_device_check(settings):
    scoring.check_device(settings)
    pools = {"gpu": ScoringPool(scorers=["technical"], device=_device_torch_lacks())}
    scoring.check_device(settings.model_copy(update={"device": _device_torch_lacks(), "pools": pools}))
    with pytest.raises(scoring.DeviceUnavailable, match=r"^AESQ_POOLS\.gpu\.device=cuda"):
        scoring.check_device(settings.model_copy(update={"pools": pools}).for_pool("gpu"), "AESQ_POOLS.gpu.device")
