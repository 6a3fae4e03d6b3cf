"""Retrying failed assets on the real components: each goes back through ingest, keeps its old reason until
its new outcome is written, and a retry repeated or run beside workers queues nothing twice."""

from __future__ import annotations

import shutil

import sqlalchemy as sa

from aesq.core import ingest
from aesq.core.database import get_engine
from aesq.core.retry import Retried, retry_failed
from aesq.core.writes import mark_failed
from tests.helpers import ingest_all, noise_image, png_bytes, put, score_all


def _assets(settings) -> dict[str, tuple]:
    """(status, error, duplicate_of) of every asset, by key."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(sa.text("SELECT key, status, error, duplicate_of FROM assets"))
        return {row.key: (row.status, row.error, row.duplicate_of) for row in rows}


def _queued(settings) -> list[tuple]:
    """The ingest queue: key and the worker holding it."""
    with get_engine(settings).connect() as connection:
        return [
            tuple(row) for row in connection.execute(sa.text("SELECT key, lease_owner FROM ingest_queue ORDER BY 1"))
        ]


def _drain(source: str, settings) -> None:
    """Ingest what is queued, without listing, then score: what a worker's next run does with a retry."""
    while claimed := ingest.claim_batch(source, settings):
        ingest.ingest(source, claimed, settings)
    score_all(settings)


def _failing_at_scoring(settings, source: str, key: str) -> None:
    """Ingest `source` and fail its pending asset at `key` as scoring fails one (a scorer's bad output)."""
    ingest_all(source, settings)
    with get_engine(settings).begin() as connection:
        asset_id = connection.execute(sa.text("SELECT id FROM assets WHERE key = :key"), {"key": key}).scalar_one()
        mark_failed(connection, {asset_id: "scorer technical returned nan"})


def test_failed_assets_go_back_through_ingest_and_keep_their_reason_until_then(settings, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "cat.png").write_bytes(png_bytes(noise_image(1, 32)))
    _failing_at_scoring(settings, str(tmp_path), "cat.png")

    retried = retry_failed(settings)

    assert retried == Retried(failed=2, queued=2, sources=[str(tmp_path)], unconfigured=2)
    assert _assets(settings)["cat.png"] == ("failed", "scorer technical returned nan", None)
    assert retry_failed(settings) == Retried(failed=2, queued=0, sources=[str(tmp_path)], unconfigured=2)
    assert [key for key, _ in _queued(settings)] == ["broken.png", "cat.png"]

    _drain(str(tmp_path), settings)

    assets = _assets(settings)
    assert assets["cat.png"] == ("scored", None, None)
    assert assets["broken.png"][:2] == ("failed", "not an image (no known image format)")
    assert _queued(settings) == []


def test_a_content_that_found_a_canonical_asset_meanwhile_becomes_its_duplicate(settings, tmp_path):
    (tmp_path / "cat.png").write_bytes(png_bytes(noise_image(1, 32)))
    _failing_at_scoring(settings, str(tmp_path), "cat.png")
    shutil.copy(tmp_path / "cat.png", tmp_path / "copy.png")
    ingest_all(str(tmp_path), settings)
    score_all(settings)

    retry_failed(settings, str(tmp_path))
    _drain(str(tmp_path), settings)

    assets = _assets(settings)
    assert assets["copy.png"][0] == "scored"
    assert assets["cat.png"][:2] == ("duplicate", None)


def test_a_source_retries_its_own_failures_and_leaves_claimed_objects_to_their_worker(settings, tmp_path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "broken.png").write_bytes(b"")
        ingest_all(str(tmp_path / name), settings)
    with get_engine(settings).begin() as connection:  # another worker already took `two`'s object again
        connection.execute(
            sa.text(
                "INSERT INTO ingest_queue (storage, bucket, key, lease_owner, lease_until)"
                " VALUES ('file', :bucket, 'broken.png', 'elsewhere', now() + interval '1 minute')"
            ),
            {"bucket": str(tmp_path / "two")},
        )

    assert retry_failed(settings, str(tmp_path / "one")) == Retried(1, 1, [str(tmp_path / "one")], 1)
    assert retry_failed(settings, str(tmp_path / "two")) == Retried(1, 0, [str(tmp_path / "two")], 1)
    assert retry_failed(settings, str(tmp_path / "none")) == Retried(0, 0, [], 0)
    with get_engine(settings).connect() as connection:
        queued = connection.execute(sa.text("SELECT bucket, lease_owner FROM ingest_queue ORDER BY bucket")).all()
    assert [tuple(row) for row in queued] == [(str(tmp_path / "one"), None), (str(tmp_path / "two"), "elsewhere")]


def test_a_retry_runs_only_where_its_failures_lie_keeping_their_prefix(settings, s3_client, bucket):
    for key in ("gen/a/broken.png", "gen/b/broken.png", "gen/b/cat.png"):
        put(s3_client, bucket, key, png_bytes(noise_image(1, 32)) if key.endswith("cat.png") else b"")
    ingest_all(f"s3://{bucket}/gen/", settings)
    put(s3_client, bucket, "raw/never-ingested.png", png_bytes(noise_image(2, 32)))

    retried = retry_failed(settings)

    assert retried == Retried(2, 2, [f"s3://{bucket}/gen/"], unconfigured=2)
    assert retry_failed(settings, f"s3://{bucket}/gen/b/") == Retried(1, 0, [f"s3://{bucket}/gen/b/"], 1)
    configured = settings.model_copy(update={"sources": [f"s3://{bucket}/gen/a/bro", f"s3://{bucket}/raw/"]})
    assert retry_failed(configured) == Retried(2, 0, [f"s3://{bucket}/gen/a/bro", f"s3://{bucket}/gen/b/"], 1)

    for source in retried.sources:
        _drain(source, settings)

    assert sorted(_assets(settings)) == ["gen/a/broken.png", "gen/b/broken.png", "gen/b/cat.png"]
    assert _queued(settings) == []
