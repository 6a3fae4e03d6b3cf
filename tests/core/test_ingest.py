"""Ingest on the real components (moto S3, local folders, embedded Postgres): each object recorded once with its
facts and provenance, one object's problem stays that object's, a retried batch adds nothing, and a storage that
fails gives the objects back to the queue."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import sqlalchemy as sa

from aesq.core import discovery, ingest, scoring
from aesq.core.database import get_engine
from aesq.core.storage import StorageUnavailable
from tests.helpers import (
    ingest_all,
    jpeg_bytes,
    noise_image,
    png_bytes,
    put,
    tiff_whose_second_page_has_no_width,
)


def _assets(settings) -> dict[str, sa.Row]:
    """Every asset row with its generator, by key."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT a.id, a.key, a.status::text AS status, a.error, a.width, a.height, a.format, a.sha256,"
                " a.size_bytes, a.source_kind::text AS source_kind, a.prompt, a.seed,"
                " g.name || ':' || g.version AS generator"
                " FROM assets a LEFT JOIN generators g ON g.id = a.generator_id"
            )
        )
        return {row.key: row for row in rows}


def _queue(settings) -> list[tuple]:
    """The ingest queue: key, tries so far, and whether a worker holds it."""
    with get_engine(settings).connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.text("SELECT key, attempts, lease_owner IS NOT NULL FROM ingest_queue ORDER BY key")
            )
        ]


def test_each_object_is_recorded_with_its_facts_and_provenance(settings, tmp_path):
    generated = tmp_path / "generated" / "sdxl" / "1.0"
    generated.mkdir(parents=True)
    image = png_bytes(noise_image(1, 40))
    (generated / "fox.png").write_bytes(image)
    (generated / "fox.png.json").write_text(json.dumps({"prompt": "a red fox", "seed": 7}))
    (tmp_path / "crawled").mkdir()
    (tmp_path / "crawled" / "web.jpg").write_bytes(jpeg_bytes(noise_image(2, 24)))

    waiting = ingest_all(str(tmp_path), settings)

    assets = _assets(settings)
    assert sorted(assets) == ["crawled/web.jpg", "generated/sdxl/1.0/fox.png"]  # the sidecar is no asset
    fox = assets["generated/sdxl/1.0/fox.png"]
    assert (fox.status, fox.error, fox.width, fox.height, fox.format) == ("pending", None, 40, 40, "PNG")
    assert (fox.sha256, fox.size_bytes) == (hashlib.sha256(image).hexdigest(), len(image))
    assert (fox.source_kind, fox.generator, fox.prompt, fox.seed) == ("generated", "sdxl:1.0", "a red fox", 7)
    assert (assets["crawled/web.jpg"].source_kind, assets["crawled/web.jpg"].generator) == ("crawled", None)
    assert sorted(waiting) == sorted(row.id for row in assets.values())
    assert _queue(settings) == []


def test_ingesting_a_claimed_batch_again_adds_nothing(settings, s3_client, bucket):
    """A task retried after its first try had committed (the answer was lost) finds its work done."""
    for index in range(3):
        put(s3_client, bucket, f"generated/m/1/{index}.jpg", jpeg_bytes(noise_image(index)))
    source = f"s3://{bucket}/"
    discovery.discover(source, settings)
    claimed = ingest.claim_batch(source, settings)

    first = ingest.ingest(source, claimed, settings)
    before = _assets(settings)
    again = ingest.ingest(source, claimed, settings)

    assert sorted(again) == sorted(first) and len(first) == 3
    assert _assets(settings) == before
    assert _queue(settings) == []


def test_an_object_deleted_after_it_was_queued_is_skipped(settings, tmp_path):
    for seed, name in enumerate(("kept.jpg", "gone.jpg")):
        (tmp_path / name).write_bytes(jpeg_bytes(noise_image(seed)))
    discovery.discover(str(tmp_path), settings)
    (tmp_path / "gone.jpg").unlink()

    ingest.ingest(str(tmp_path), ingest.claim_batch(str(tmp_path), settings), settings)

    assert list(_assets(settings)) == ["kept.jpg"]
    assert _queue(settings) == []


def _unreadable_folder(settings, tmp_path, readable: int) -> tuple[str, list]:
    """A folder source whose queued objects under `sub/` can no longer be read (a file stands where the folder
    was: every read fails with an OS error, none is missing), next to `readable` objects that can; the claim."""
    for index in range(2):
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / f"{index}.jpg").write_bytes(jpeg_bytes(noise_image(index)))
    for index in range(readable):
        (tmp_path / f"ok-{index}.jpg").write_bytes(jpeg_bytes(noise_image(10 + index)))
    discovery.discover(str(tmp_path), settings)
    claimed = ingest.claim_batch(str(tmp_path), settings)
    shutil.rmtree(tmp_path / "sub")
    (tmp_path / "sub").write_bytes(b"not a folder")
    return str(tmp_path), claimed


def test_a_storage_failing_for_every_object_raises_and_gives_the_batch_back_untried(settings, tmp_path):
    source, claimed = _unreadable_folder(settings, tmp_path, readable=0)

    with pytest.raises(StorageUnavailable, match="cannot read 2 objects of"):
        ingest.ingest(source, claimed, settings)

    assert _assets(settings) == {}
    assert _queue(settings) == [("sub/0.jpg", 0, False), ("sub/1.jpg", 0, False)]


def test_objects_the_storage_fails_to_hand_over_wait_while_the_rest_is_ingested(settings, tmp_path):
    source, claimed = _unreadable_folder(settings, tmp_path, readable=1)

    ingest.ingest(source, claimed, settings)

    assert list(_assets(settings)) == ["ok-0.jpg"]
    assert _queue(settings) == [("sub/0.jpg", 1, False), ("sub/1.jpg", 1, False)]  # one try counted, backing off
    assert ingest.claim_batch(source, settings) == []  # not before the back-off has passed


@pytest.mark.slow
def test_a_poison_file_fails_alone_and_the_rest_of_its_batch_is_scored(settings, s3_client, bucket):
    """The reported attack: 40 JPEGs and a TIFF on which Pillow raises TypeError, in one batch."""
    settings = settings.model_copy(update={"batch_size": 41})
    for index in range(40):
        put(s3_client, bucket, f"generated/sdxl/1.0/{index:02d}.jpg", jpeg_bytes(noise_image(index, 96)))
    put(s3_client, bucket, "generated/sdxl/1.0/poison.tif", tiff_whose_second_page_has_no_width())
    source = f"s3://{bucket}/"

    scoring.score_assets(ingest_all(source, settings), settings)

    with get_engine(settings).connect() as connection:
        scored = connection.execute(sa.text("SELECT count(DISTINCT asset_id) FROM scores")).scalar_one()
    assets = _assets(settings)
    poison = assets.pop("generated/sdxl/1.0/poison.tif")
    assert (poison.status, poison.error) == ("failed", "cannot count its frames: TypeError: Missing dimensions")
    assert len(assets) == 40 and {row.status for row in assets.values()} == {"scored"}
    assert scored == 40


def _scores(settings) -> list[tuple]:
    """Every score row as written: a re-scored image would show a new row or time."""
    with get_engine(settings).connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT id, asset_id, created_at FROM scores"))]


def _sidecar_changes_reingest_provenance_only(settings, source: str, write) -> None:
    """Through a sidecar's life (malformed, fixed, edited, removed, added under its other name), each listing
    queues the image exactly when its sidecar changed; provenance follows, the image is scored once."""
    image = png_bytes(noise_image(3, 32))
    write("generated/m/1/cat.png", image)
    write("generated/m/1/cat.png.json", b'{"prompt": "a cat", seed: 1}')
    ingest_all(source, settings)
    assert _assets(settings)["generated/m/1/cat.png"].error.startswith("sidecar JSON is malformed")

    write("generated/m/1/cat.png.json", json.dumps({"prompt": "a cat", "seed": 1}).encode())
    assert discovery.discover(source, settings).queued == 1
    ingest_all(source, settings)
    cat = _assets(settings)["generated/m/1/cat.png"]
    assert (cat.status, cat.error, cat.prompt, cat.seed) == ("pending", None, "a cat", 1)
    scoring.score_assets(scoring.claim_batch(settings), settings)
    scored = _scores(settings)
    assert scored and _assets(settings)["generated/m/1/cat.png"].status == "scored"
    assert discovery.discover(source, settings).queued == 0  # an unchanged sidecar queues nothing

    write("generated/m/1/cat.png.json", json.dumps({"prompt": "a black cat", "seed": 2}).encode())
    assert discovery.discover(source, settings).queued == 1
    ingest_all(source, settings)
    cat = _assets(settings)["generated/m/1/cat.png"]
    assert (cat.status, cat.prompt, cat.seed) == ("scored", "a black cat", 2)
    assert scoring.claim_batch(settings) == [] and _scores(settings) == scored  # the same bytes are not scored again

    write("generated/m/1/cat.png.json", None)
    ingest_all(source, settings)
    assert (_assets(settings)["generated/m/1/cat.png"].prompt, _assets(settings)["generated/m/1/cat.png"].status) == (
        None,
        "scored",
    )
    write("generated/m/1/cat.json", json.dumps({"prompt": "a grey cat"}).encode())
    ingest_all(source, settings)
    assert _assets(settings)["generated/m/1/cat.png"].prompt == "a grey cat"
    assert discovery.discover(source, settings).queued == 0
    assert _scores(settings) == scored and _queue(settings) == []


def test_a_changed_sidecar_reingests_its_image_in_a_folder(settings, tmp_path):
    def write(key: str, payload: bytes | None) -> None:
        """Write, or with None delete, a file of the folder source."""
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload) if payload is not None else path.unlink()

    _sidecar_changes_reingest_provenance_only(settings, str(tmp_path), write)


def test_a_changed_sidecar_reingests_its_image_in_a_bucket(settings, s3_client, bucket):
    def write(key: str, payload: bytes | None) -> None:
        """Upload, or with None remove, an object of the bucket."""
        put(s3_client, bucket, key, payload) if payload is not None else s3_client.remove_object(bucket, key)

    _sidecar_changes_reingest_provenance_only(settings, f"s3://{bucket}/", write)


def test_a_generator_name_with_the_separator_fails_its_image_alone(settings, s3_client, bucket):
    """`col:x` version `v` would share the label `col:x:v` with `col` version `x:v`: the first fails with the
    reason, kind "provenance"; the second and the rest of the batch are ingested."""
    from aesq.core.pipeline_status import failure_reasons

    metadata = {"generator": "col:x", "generator-version": "v"}
    put(s3_client, bucket, "a/ambiguous.png", png_bytes(noise_image(1, 16)), metadata)
    put(s3_client, bucket, "generated/col/x:v/fine.png", png_bytes(noise_image(2, 16)))
    put(s3_client, bucket, "a/plain.png", png_bytes(noise_image(3, 16)), {"generator": "col:x:v"})

    ingest_all(f"s3://{bucket}/", settings)

    assets = _assets(settings)
    ambiguous = assets["a/ambiguous.png"]
    assert (ambiguous.status, ambiguous.generator) == ("failed", None)
    assert ambiguous.error.startswith("generator name 'col:x' contains ':'")
    assert [(a.status, a.generator) for key, a in sorted(assets.items()) if key != "a/ambiguous.png"] == [
        ("pending", "col:x:v"),
        ("pending", "col:x:v"),
    ]
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT name, version FROM generators")).all() == [("col", "x:v")]
    [reason] = failure_reasons(settings)
    assert (reason.reason, reason.count, [e.location for e in reason.examples]) == (
        "provenance",
        1,
        [f"{bucket}/a/ambiguous.png"],
    )
