"""Claims on a real Postgres: two workers never hold the same batch, a lapsed lease frees it, a renewed one
does not lapse, and a queued object that changed meanwhile is not lost."""

from __future__ import annotations

import time

import sqlalchemy as sa

from aesq.core import claims, discovery, scoring
from aesq.core.claims import Listed
from aesq.core.database import get_engine
from tests.helpers import ingest_all, jpeg_bytes, noise_image


def _queue(settings, keys: list[str], etag: str = "e1") -> None:
    with get_engine(settings).begin() as connection:
        claims.queue_objects(connection, "s3", "b", [Listed(key, etag) for key in keys])


def _claim(settings, limit: int = 2, lease: float = 60) -> list[str]:
    with get_engine(settings).begin() as connection:
        return [q.key for q in claims.claim_objects(connection, "s3", "b", "", limit, lease)]


def test_workers_claim_disjoint_batches_until_the_queue_is_taken(settings):
    _queue(settings, ["a", "b", "c", "d", "e"])
    engine = get_engine(settings)
    with engine.connect() as first, engine.connect() as second:
        taken_first = claims.claim_objects(first, "s3", "b", "", 2, 60)  # row locks held: this transaction is open
        taken_second = claims.claim_objects(second, "s3", "b", "", 2, 60)  # skips them instead of waiting
        first.commit()
        second.commit()
    assert {q.key for q in taken_first}.isdisjoint({q.key for q in taken_second})
    assert len(taken_first) == len(taken_second) == 2
    assert _claim(settings, limit=5) == ["e"]
    assert _claim(settings, limit=5) == []


def test_changed_objects_are_claimed_first_and_recorded_ones_are_not_queued_again(settings, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for index, name in enumerate(("b.jpg", "y.jpg", "z.jpg")):
        (folder / name).write_bytes(jpeg_bytes(noise_image(index, 32)))
    ingest_all(str(folder), settings)
    source = discovery.open_source(str(folder), settings)
    with get_engine(settings).begin() as connection:
        etags = dict(connection.execute(sa.text("SELECT key, etag FROM assets")).all())
        unchanged = [Listed(key, etag) for key, etag in etags.items()]
        assert claims.queue_objects(connection, source.storage, source.bucket, unchanged) == 0
        fresh_and_changed = [Listed("a.jpg", "1"), Listed("z.jpg", "other"), Listed("y.jpg", "other")]
        assert claims.queue_objects(connection, source.storage, source.bucket, fresh_and_changed) == 3
        taken = claims.claim_objects(connection, source.storage, source.bucket, "", 2, 60)
    assert [q.key for q in taken] == ["y.jpg", "z.jpg"]


def test_a_lapsed_lease_frees_the_batch_for_another_worker(settings):
    _queue(settings, ["a"])
    assert _claim(settings, lease=0.5) == ["a"]
    assert _claim(settings) == []
    time.sleep(0.7)
    assert _claim(settings) == ["a"]


def test_an_object_queued_again_with_new_bytes_while_claimed_stays_queued(settings):
    _queue(settings, ["a", "b"])
    with get_engine(settings).begin() as connection:
        claimed = claims.claim_objects(connection, "s3", "b", "", 2, 60)
    _queue(settings, ["a"], etag="e2")  # overwritten while a worker ingests the old bytes
    with get_engine(settings).begin() as connection:
        claims.finish_objects(connection, "s3", "b", {q.key: {q.etag} for q in claimed})
        left = connection.execute(sa.text("SELECT key, etag, lease_until FROM ingest_queue")).all()
    assert [(row.key, row.etag, row.lease_until) for row in left] == [("a", "e2", None)]


def test_objects_storage_keeps_failing_leave_the_queue_after_the_last_attempt(settings):
    _queue(settings, ["a"])
    for attempt in range(1, 4):
        assert _claim(settings) == ["a"]  # back-off 0: due again at once
        with get_engine(settings).begin() as connection:
            given_up = claims.defer_objects(connection, "s3", "b", ["a"], attempts=3, backoff_seconds=0)
        assert given_up == (["a"] if attempt == 3 else [])
    assert _claim(settings) == []


def test_renewed_claims_outlive_their_lease_and_end_with_the_batch(settings, tmp_path, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    jpeg = jpeg_bytes(noise_image(1, 32))
    (folder / "a.jpg").write_bytes(jpeg)
    ingest_all(str(folder), settings)
    settings = settings.model_copy(update={"lease_seconds": 0.6})
    (asset_id,) = scoring.claim_batch(settings)
    with scoring.keep_claimed([asset_id], settings):
        time.sleep(1.5)  # more than two leases
        assert scoring.claim_batch(settings) == [], "the renewed claim still holds"
    time.sleep(0.7)
    assert scoring.claim_batch(settings) == [asset_id], "once the block ended, the lease lapses"


def test_a_worker_renews_releases_and_defers_only_the_claims_it_holds(settings):
    _queue(settings, ["a"])
    with get_engine(settings).begin() as connection:
        connection.execute(
            sa.text("UPDATE ingest_queue SET lease_owner = 'other', lease_until = now() + interval '1 hour'")
        )
        claims.release_objects(connection, "s3", "b", ["a"])
        claims.defer_objects(connection, "s3", "b", ["a"], attempts=1, backoff_seconds=0)
        row = connection.execute(sa.text("SELECT lease_owner, attempts FROM ingest_queue")).one()
    assert tuple(row) == ("other", 0)


def test_a_run_waits_for_other_workers_claims_on_its_own_source_only(settings, tmp_path):
    busy, mine = tmp_path / "busy", tmp_path / "mine"
    busy.mkdir()
    mine.mkdir()
    (busy / "a.jpg").write_bytes(jpeg_bytes(noise_image(1, 32)))
    ingest_all(str(busy), settings)
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text("UPDATE assets SET lease_owner = 'other', lease_until = now() + interval '1 hour'"))
    assert scoring.others_scoring(settings, str(busy))
    assert not scoring.others_scoring(settings, str(mine))
    assert scoring.others_scoring(settings)


def test_claims_within_a_source_take_only_its_assets(settings, tmp_path):
    """A run with its own scorers scores its source only: pending and backfill claims keep to it."""
    other, mine = tmp_path / "other", tmp_path / "mine"
    for index, folder in enumerate((other, mine)):
        folder.mkdir()
        for seed in range(3):
            (folder / f"{seed}.jpg").write_bytes(jpeg_bytes(noise_image(10 * index + seed, 32)))
    others, mine_ids = ingest_all(str(other), settings), ingest_all(str(mine), settings)
    assert scoring.claim_batch(settings, within=str(mine)) == sorted(mine_ids)
    assert scoring.claim_batch(settings, within=str(mine)) == []
    assert scoring.claim_batch(settings) == sorted(others)
    with get_engine(settings).begin() as connection:
        connection.execute(sa.text("UPDATE assets SET status = 'scored', lease_owner = NULL, lease_until = NULL"))
    assert scoring.claim_backfill(settings, 0, within=str(mine)) == sorted(mine_ids)
    assert scoring.claim_backfill(settings, 0) == sorted(others)
