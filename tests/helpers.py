"""Small builders of real test images and objects (generated in the tests, never committed)."""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path

import numpy as np
from minio import Minio
from PIL import Image
from skimage import data as skdata


def photo(name: str) -> Image.Image:
    """A real photograph bundled with scikit-image, as RGB."""
    pixels = getattr(skdata, name)()
    return Image.fromarray(pixels).convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def put(client: Minio, bucket: str, key: str, payload: bytes, metadata: dict[str, str] | None = None) -> None:
    """Upload bytes as an object."""
    client.put_object(bucket, key, io.BytesIO(payload), len(payload), metadata=metadata)


def noise_image(seed: int, size: int = 64) -> Image.Image:
    """A small random RGB image, distinct per seed."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def ingest_all(source: str, settings) -> list[int]:
    """Discover `source`, then ingest its queued objects batch by batch; the ids waiting for scores."""
    from aesq.core import discovery, ingest

    discovery.discover(source, settings)
    waiting = []
    while claimed := ingest.claim_batch(source, settings):
        waiting += ingest.ingest(source, claimed, settings)
    return waiting


def score_all(settings) -> None:
    """Claim and score batches until none is due (pending, then backfill), then give back what could not be
    finished (as a run does)."""
    from aesq.core import scoring

    unfinished, backfill_after = [], 0
    while batch := scoring.claim_batch(settings) or scoring.claim_backfill(settings, backfill_after):
        backfill_after = max(backfill_after, *batch)
        unfinished += scoring.score_assets(batch, settings).unfinished
    scoring.release(unfinished, settings)


def run_once(source: str, settings) -> None:
    """Discover, ingest, score what is due and aggregate, with the plain functions the flows call."""
    from aesq.analysis import aggregate

    ingest_all(source, settings)
    score_all(settings)
    aggregate.aggregate_versions(settings)


def technical_score(payload: bytes) -> float:
    """What the technical scorer gives these bytes, decoded as the pipeline decodes them."""
    from aesq.core.images import decode_rgb, pixel_budget
    from aesq.models.technical import TechnicalQualityScorer

    return TechnicalQualityScorer().score([decode_rgb(payload, 64_000_000, pixel_budget(64_000_000))])[0].value


def assert_every_content_scored_once(settings, objects: dict[str, bytes], failed: Collection[str] = ()) -> None:
    """The identity model's promise over `objects` (key → bytes now in the source): each distinct content
    has exactly one scored canonical asset carrying its own bytes' score, its other locations are
    duplicates pointing at it, nothing else holds live scores, and no asset outside `objects` counts
    but the keys `failed`: objects present that are not usable images, failed with a reason."""
    import hashlib

    import sqlalchemy as sa

    from aesq.core.database import get_engine

    with get_engine(settings).connect() as connection:
        assets = {row.key: row for row in connection.execute(sa.text("SELECT * FROM assets"))}
        scores = connection.execute(sa.text("SELECT asset_id, value FROM scores WHERE scorer = 'technical'")).all()
    live = {key: row for key, row in assets.items() if row.status != "deleted"}
    assert set(live) == set(objects) | set(failed), "every object present is an asset, and only those are live"
    for key in failed:
        assert live[key].status == "failed" and live[key].error, f"{key}: {live[key].status}, {live[key].error!r}"
    by_content: dict[str, list[str]] = {}
    for key, payload in objects.items():
        by_content.setdefault(hashlib.sha256(payload).hexdigest(), []).append(key)
    score_of = dict(scores)
    assert len(score_of) == len(scores), "one technical score per asset"
    canonical_ids = set()
    for sha, keys in by_content.items():
        assert {live[key].sha256 for key in keys} == {sha}
        canonical = [live[key] for key in keys if live[key].status == "scored"]
        assert len(canonical) == 1, f"content at {keys} has {len(canonical)} scored assets"
        canonical_ids.add(canonical[0].id)
        for key in keys:
            if live[key].id != canonical[0].id:
                assert (live[key].status, live[key].duplicate_of) == ("duplicate", canonical[0].id), key
        assert abs(score_of[canonical[0].id] - technical_score(objects[keys[0]])) < 1e-9, f"{keys}: not its own score"
        assert canonical[0].scored_at is not None
    assert set(score_of) == canonical_ids, "scores only on the canonical assets of present contents"


def assert_statistics_match_rows(settings) -> None:
    """Every stored per-version figure equals a recomputation from the score rows of scored assets."""
    import sqlalchemy as sa

    from aesq.core.database import get_engine

    recompute = sa.text(
        """
        SELECT a.generator_id, ls.scorer, count(*) AS count, avg(ls.value) AS mean
        FROM latest_scores ls JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        WHERE a.generator_id IS NOT NULL GROUP BY 1, 2
        """
    )
    daily = sa.text(
        """
        SELECT a.generator_id, ls.scorer, (a.scored_at AT TIME ZONE 'UTC')::date AS day, count(*) AS count
        FROM latest_scores ls JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        WHERE a.generator_id IS NOT NULL GROUP BY 1, 2, 3
        """
    )
    with get_engine(settings).connect() as connection:
        expected = {(r.generator_id, r.scorer): (r.count, r.mean) for r in connection.execute(recompute)}
        stored = {
            (r.generator_id, r.scorer): (r.count, r.mean)
            for r in connection.execute(sa.text("SELECT generator_id, scorer, count, mean FROM version_stats"))
        }
        expected_days = {(r.generator_id, r.scorer, r.day): r.count for r in connection.execute(daily)}
        stored_days = {
            (r.generator_id, r.scorer, r.day): r.count
            for r in connection.execute(sa.text("SELECT generator_id, scorer, day, count FROM version_daily_stats"))
        }
    assert set(stored) == set(expected)
    for group, (count, mean) in expected.items():
        assert stored[group][0] == count and abs(stored[group][1] - mean) < 1e-9, group
    assert stored_days == expected_days


def end_other_sessions(url: str) -> int:
    """End every other session on the database at `url`, as a failover or an administrator's kill does;
    returns how many."""
    import sqlalchemy as sa

    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as admin:
        ended = admin.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        admin.commit()
    return ended


def sidecar_for(key: str, listed: Collection[str]) -> str | None:
    """The sidecar of `key` among the listed keys, by the rule ingest follows: `a/b.png.json`, else `a/b.json`."""
    from aesq.core.storage import sidecar_candidates

    return next((candidate for candidate in sidecar_candidates(key) if candidate in listed), None)


def seed_demo(settings) -> Path:
    """Build the demo sample (plus two images of a second generator) under the data folder, ingest, score,
    aggregate and analyse it with the plain functions the flows call; returns the sample folder."""
    from aesq.analysis import aggregate, defect_analysis
    from aesq.cli.demo import build_sample
    from aesq.core import scoring

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


def tiff_whose_second_page_has_no_width() -> bytes:
    """A 2-page TIFF whose second page lacks the ImageWidth tag (renamed to an unknown tag): the reported
    poison file, on which Pillow raises TypeError when counting its frames."""
    import struct

    buffer = io.BytesIO()
    pages = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for entry in range(struct.unpack_from("<H", data, second)[0]):
        offset = second + 2 + 12 * entry
        if struct.unpack_from("<H", data, offset)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, offset, 65000)
    return bytes(data)
