"""The identity model on the real components (Postgres, the S3 server): overwrites, swaps, copies,
deletions and restores each leave every content present scored once, with its own bytes' score."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime

import pytest
import sqlalchemy as sa

from aesq.core import scoring
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.identity import Arrival, Located, ProvenanceFailed, plan_batch
from aesq.core.storage import open_source, recent_objects
from tests.helpers import (
    assert_every_content_scored_once,
    assert_statistics_match_rows,
    ingest_all,
    jpeg_bytes,
    noise_image,
    put,
    run_once,
)

A, B, C = (jpeg_bytes(noise_image(seed, 48)) for seed in (1, 2, 3))
KEY = "generated/m/1/a.jpg"


@pytest.fixture
def source(settings, s3_client, bucket, monkeypatch) -> str:
    """An S3 source with no embedder (faster) and no back-off between tries of deferred images."""
    monkeypatch.setenv("AESQ_EMBEDDERS", "")
    monkeypatch.setenv("AESQ_RETRY_BACKOFF_SECONDS", "0")
    get_settings.cache_clear()
    return f"s3://{bucket}/"


def _upload(s3_client, bucket: str, objects: dict[str, bytes]) -> None:
    for key, payload in objects.items():
        put(s3_client, bucket, key, payload)


def _assets() -> dict[str, sa.Row]:
    with get_engine(get_settings()).connect() as connection:
        return {row.key: row for row in connection.execute(sa.text("SELECT * FROM assets"))}


def test_swapped_objects_keep_their_contents_scores(source, s3_client, bucket):
    objects = {"generated/m/1/k2.jpg": A, "generated/m/1/k3.jpg": B}
    _upload(s3_client, bucket, objects)
    run_once(source, get_settings())
    before = _assets()

    objects = {"generated/m/1/k2.jpg": B, "generated/m/1/k3.jpg": A}
    _upload(s3_client, bucket, objects)
    run_once(source, get_settings())

    assert_every_content_scored_once(get_settings(), objects)
    assert_statistics_match_rows(get_settings())
    after = _assets()
    # nothing was scored again: each content's score and scoring time moved with it
    assert after["generated/m/1/k2.jpg"].scored_at == before["generated/m/1/k3.jpg"].scored_at
    assert after["generated/m/1/k3.jpg"].scored_at == before["generated/m/1/k2.jpg"].scored_at


def test_a_swap_among_many_new_objects_is_ingested_in_one_batch_and_scored_nothing_again(source, s3_client, bucket):
    _upload(s3_client, bucket, {"generated/m/1/a.jpg": A, "generated/m/1/z.jpg": B})
    run_once(source, get_settings())
    before = _assets()
    objects = {"generated/m/1/a.jpg": B, "generated/m/1/z.jpg": A} | {
        f"generated/m/1/new-{i}.jpg": jpeg_bytes(noise_image(20 + i, 40)) for i in range(6)
    }
    _upload(s3_client, bucket, objects)  # listed a, new-0 … new-5, z: batches of 4 would split the swap
    run_once(source, get_settings())
    assert_every_content_scored_once(get_settings(), objects)
    after = _assets()
    assert after["generated/m/1/a.jpg"].scored_at == before["generated/m/1/z.jpg"].scored_at
    assert after["generated/m/1/z.jpg"].scored_at == before["generated/m/1/a.jpg"].scored_at


def test_overwriting_the_original_of_a_copy_moves_its_score_to_the_copy(source, s3_client, bucket):
    put(s3_client, bucket, "generated/m/1/original.jpg", A)
    run_once(source, get_settings())
    put(s3_client, bucket, "generated/m/1/copy.jpg", A)
    run_once(source, get_settings())
    assert _assets()["generated/m/1/copy.jpg"].status == "duplicate"

    objects = {"generated/m/1/original.jpg": C, "generated/m/1/copy.jpg": A}
    _upload(s3_client, bucket, {"generated/m/1/original.jpg": C})
    run_once(source, get_settings())
    assert_every_content_scored_once(get_settings(), objects)
    assert_statistics_match_rows(get_settings())


def test_deleted_objects_leave_the_statistics_and_come_back_restored(source, s3_client, bucket):
    objects = {KEY: A, "generated/m/1/b.jpg": B}
    _upload(s3_client, bucket, objects)
    run_once(source, get_settings())

    s3_client.remove_object(bucket, "generated/m/1/b.jpg")
    run_once(source, get_settings())
    assert _assets()["generated/m/1/b.jpg"].status == "deleted"
    assert_every_content_scored_once(get_settings(), {KEY: A})
    assert_statistics_match_rows(get_settings())
    with get_engine(get_settings()).connect() as connection:
        assert connection.execute(sa.text("SELECT count FROM version_stats")).scalar_one() == 1

    put(s3_client, bucket, "generated/m/1/b.jpg", B)  # restored: scored again, with its own bytes
    run_once(source, get_settings())
    assert_every_content_scored_once(get_settings(), objects)
    assert_statistics_match_rows(get_settings())


def test_renamed_object_is_one_scored_content(source, s3_client, bucket):
    _upload(s3_client, bucket, {"generated/m/1/old-name.jpg": A})
    run_once(source, get_settings())
    s3_client.remove_object(bucket, "generated/m/1/old-name.jpg")
    put(s3_client, bucket, "generated/m/1/new-name.jpg", A)
    run_once(source, get_settings())
    assert_every_content_scored_once(get_settings(), {"generated/m/1/new-name.jpg": A})
    assert _assets()["generated/m/1/old-name.jpg"].status == "deleted"
    assert_statistics_match_rows(get_settings())


def _ingest_then(settings, source: str, s3_client, bucket: str, change: Callable[[], None]) -> list[int]:
    """Ingest object KEY (holding A), then change it before scoring, with no copy of its bytes kept in memory."""
    put(s3_client, bucket, KEY, A)
    ids = ingest_all(source, settings)
    recent_objects.take(open_source(source, settings), KEY, _assets()[KEY].etag)
    change()
    return ids


def test_object_missing_at_scoring_time_is_retried_and_recovers_when_restored(source, s3_client, bucket):
    settings = get_settings()
    ids = _ingest_then(settings, source, s3_client, bucket, lambda: s3_client.remove_object(bucket, KEY))

    outcome = scoring.score_assets(ids, settings)
    assert (outcome.scored, outcome.failed, outcome.deferred) == (0, 0, 1)
    assert (
        scoring.batch_outcome(ids, settings, outcome.unfinished) == outcome
    )  # as a flow handing batches to pools reads it
    row = _assets()[KEY]
    assert (row.status, row.attempts) == ("pending", 1) and "no longer exists" in row.error
    scoring.release(list(outcome.unfinished), settings)

    put(s3_client, bucket, KEY, A)  # restored with the same bytes (and so the same ETag)
    run_once(source, settings)
    assert_every_content_scored_once(settings, {KEY: A})
    assert (_assets()[KEY].attempts, _assets()[KEY].error) == (0, None)


def test_an_image_missing_on_every_try_fails_with_the_reason(source, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("AESQ_RETRY_ATTEMPTS", "2")
    get_settings.cache_clear()
    settings = get_settings()
    ids = _ingest_then(settings, source, s3_client, bucket, lambda: s3_client.remove_object(bucket, KEY))
    outcome = scoring.score_assets(ids, settings)
    assert scoring.claim_batch(settings) == []  # this run keeps its claim on what it could not finish
    scoring.release(list(outcome.unfinished), settings)
    assert scoring.claim_batch(settings) == ids  # back-off 0: due again at once
    scoring.score_assets(ids, settings)
    row = _assets()[KEY]
    assert row.status == "failed" and row.error.endswith("(gave up after 2 attempts)")
    assert scoring.claim_batch(settings) == []


def test_deferred_images_wait_for_their_back_off(source, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("AESQ_RETRY_BACKOFF_SECONDS", "3600")
    get_settings.cache_clear()
    settings = get_settings()
    ids = _ingest_then(settings, source, s3_client, bucket, lambda: s3_client.remove_object(bucket, KEY))
    scoring.release(list(scoring.score_assets(ids, settings).unfinished), settings)
    assert scoring.claim_batch(settings) == []


def test_an_object_overwritten_after_ingest_never_gets_the_new_bytes_score_under_the_old_content(
    source, s3_client, bucket
):
    settings = get_settings()
    ids = _ingest_then(settings, source, s3_client, bucket, lambda: put(s3_client, bucket, KEY, B))

    outcome = scoring.score_assets(ids, settings)
    assert (outcome.scored, outcome.deferred) == (0, 1)
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scores")).scalar_one() == 0
    assert _assets()[KEY].sha256 == hashlib.sha256(A).hexdigest()
    scoring.release(list(outcome.unfinished), settings)  # as the run ends

    run_once(source, settings)  # the next run re-ingests the new bytes and scores them
    assert_every_content_scored_once(settings, {KEY: B})


def test_reingesting_the_same_bytes_keeps_scoring_time_and_daily_figures(source, s3_client, bucket):
    objects = {f"generated/m/1/{i}.jpg": jpeg_bytes(noise_image(10 + i, 40)) for i in range(3)}
    _upload(s3_client, bucket, objects)
    run_once(source, get_settings())
    before = _assets()
    _upload(s3_client, bucket, objects)  # a touched object: same bytes, re-uploaded
    for key, payload in objects.items():  # and a multipart-style ETag change on one: new ETag, same bytes
        put(s3_client, bucket, key, payload, metadata={"note": "again"})
    run_once(source, get_settings())
    after = _assets()
    assert {k: (r.status, r.scored_at) for k, r in after.items()} == {
        k: (r.status, r.scored_at) for k, r in before.items()
    }
    assert_statistics_match_rows(get_settings())
    with get_engine(get_settings()).connect() as connection:
        assert connection.execute(sa.text("SELECT sum(count) FROM version_daily_stats")).scalar_one() == 3


def _score_rows() -> list[tuple]:
    """Every score row as written: a re-scored image would show a new row or time."""
    with get_engine(get_settings()).connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT id, asset_id, created_at FROM scores"))]


def _counted() -> int:
    """How many scores the per-version daily figures count."""
    with get_engine(get_settings()).connect() as connection:
        return connection.execute(sa.text("SELECT coalesce(sum(count), 0) FROM version_daily_stats")).scalar_one()


def test_a_broken_sidecar_fails_its_image_but_keeps_its_scores_until_fixed(source, s3_client, bucket):
    put(s3_client, bucket, KEY, A)
    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a fox"}')
    run_once(source, get_settings())
    scored, scores = _assets()[KEY], _score_rows()
    assert scored.status == "scored" and scores and _counted() == 1

    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a fox", seed: 1}')  # a typo: the same bytes, bad provenance
    run_once(source, get_settings())
    broken = _assets()[KEY]
    assert (broken.status, broken.error.startswith("sidecar JSON is malformed")) == ("failed", True)
    assert _score_rows() == scores and broken.scored_at == scored.scored_at  # the bytes' outputs stay
    assert _counted() == 0  # failed, it counts nowhere
    assert_statistics_match_rows(get_settings())

    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a red fox"}')
    run_once(source, get_settings())
    fixed = _assets()[KEY]
    assert (fixed.status, fixed.error, fixed.prompt, fixed.scored_at) == ("scored", None, "a red fox", scored.scored_at)
    assert _score_rows() == scores and _counted() == 1  # back without being scored again
    assert_every_content_scored_once(get_settings(), {KEY: A})
    assert_statistics_match_rows(get_settings())


def test_a_broken_sidecar_of_a_copied_image_hands_its_scores_to_the_copy(source, s3_client, bucket):
    copy = "generated/m/1/copy.jpg"
    _upload(s3_client, bucket, {KEY: A, copy: A})
    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a fox"}')
    run_once(source, get_settings())
    scores = _score_rows()
    put(s3_client, bucket, f"{KEY}.json", b"[")
    run_once(source, get_settings())
    assert (_assets()[KEY].status, _assets()[copy].status) == ("failed", "scored")
    assert_every_content_scored_once(get_settings(), {copy: A}, failed=[KEY])
    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a fox"}')
    run_once(source, get_settings())
    assert_every_content_scored_once(get_settings(), {KEY: A, copy: A})
    assert sorted(row[::2] for row in _score_rows()) == sorted(row[::2] for row in scores)  # moved, not scored again


def test_a_copy_uploaded_while_the_sidecar_is_broken_takes_the_scores_and_the_failed_image_keeps_its_reason(
    source, s3_client, bucket
):
    put(s3_client, bucket, KEY, A)
    put(s3_client, bucket, f"{KEY}.json", b'{"prompt": "a fox"}')
    run_once(source, get_settings())
    scores = _score_rows()
    put(s3_client, bucket, f"{KEY}.json", b"{")
    run_once(source, get_settings())
    copy = "generated/m/1/copy.jpg"
    put(s3_client, bucket, copy, A)
    run_once(source, get_settings())
    broken = _assets()[KEY]
    assert (broken.status, broken.scored_at, broken.error.startswith("sidecar JSON is malformed")) == (
        "failed",
        None,
        True,
    )
    assert_every_content_scored_once(get_settings(), {copy: A}, failed=[KEY])
    assert sorted(row[::2] for row in _score_rows()) == sorted(row[::2] for row in scores)  # moved, not scored again


def _row(
    asset_id: int, key: str | None, sha: str, status: str, duplicate_of: int | None = None, scored: bool = False
) -> Located:
    return Located(asset_id, key, sha, status, duplicate_of, datetime(2026, 1, 1) if scored else None, None)


def test_plan_of_a_provenance_failure_keeps_outputs_on_the_failed_row_until_the_content_is_usable_again():
    plan = plan_batch({"k": ProvenanceFailed("A")}, [_row(1, "k", "A", "scored", scored=True)])
    assert plan.drop == set() and plan.moves == {} and plan.waiting == []
    assert (plan.batch["k"].status, plan.batch["k"].scored_at) == ("failed", datetime(2026, 1, 1))
    keeper = _row(1, "k", "A", "failed", scored=True)
    assert plan_batch({"k": ProvenanceFailed("A")}, [keeper]).batch["k"].scored_at == datetime(2026, 1, 1)
    fixed = plan_batch({"k": "A"}, [keeper])
    assert (fixed.batch["k"].status, fixed.batch["k"].scored_at, fixed.moves, fixed.drop) == (
        "scored",
        datetime(2026, 1, 1),
        {},
        set(),
    )
    elsewhere = plan_batch({"new": "A"}, [_row(1, None, "A", "failed", scored=True)])
    assert elsewhere.moves == {1: "new"} and elsewhere.batch["new"].status == "scored"
    assert elsewhere.others[1].status == "failed" and elsewhere.others[1].scored_at is None
    assert plan_batch({"k": "B"}, [keeper]).drop == {1}  # other bytes there: the content is present nowhere


def test_plan_of_a_provenance_failure_of_an_unscored_image_keeps_nothing():
    plan = plan_batch({"k": ProvenanceFailed("A")}, [_row(1, "k", "A", "pending")])
    assert plan.drop == {1} and plan.batch["k"].scored_at is None


def test_plan_of_a_swap_moves_outputs_crosswise_without_rescoring():
    plan = plan_batch({"k2": "B", "k3": "A"}, [_row(2, "k2", "A", "scored"), _row(3, "k3", "B", "scored")])
    assert plan.moves == {2: "k3", 3: "k2"} and plan.demote == {2, 3} and plan.drop == set()
    assert {key: standing.status for key, standing in plan.batch.items()} == {"k2": "scored", "k3": "scored"}
    assert plan.waiting == []


def test_plan_of_a_failed_overwrite_drops_content_present_nowhere_else():
    plan = plan_batch({"k": Arrival.FAILED}, [_row(1, "k", "A", "scored")])
    assert plan.drop == {1} and plan.moves == {} and plan.batch["k"].status == "failed"


@pytest.mark.slow
def test_random_overwrites_copies_deletions_and_restores_keep_every_content_scored_once(source, s3_client, bucket):
    """A random history of object changes, several per run, checked against the identity promise after each run."""
    import random

    rng = random.Random(11)
    contents = [jpeg_bytes(noise_image(100 + i, 40)) for i in range(4)]
    keys = [f"generated/m/{1 + i % 2}/k{i}.jpg" for i in range(6)]
    objects: dict[str, bytes] = {}
    score_rows: dict[str, int] = {}
    for _ in range(25):
        before = dict(objects)
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(keys)
            if key in objects and rng.random() < 0.3:
                s3_client.remove_object(bucket, key)
                del objects[key]
            else:
                objects[key] = rng.choice(contents)
                put(s3_client, bucket, key, objects[key])
        run_once(source, get_settings())
        assert_every_content_scored_once(get_settings(), objects)
        assert_statistics_match_rows(get_settings())
        with get_engine(get_settings()).connect() as connection:
            now = dict(
                connection.execute(
                    sa.text("SELECT a.sha256, s.id FROM scores s JOIN assets a ON a.id = s.asset_id")
                ).all()
            )
        # A content that some untouched object held all along is never scored again (one that left every
        # object, or whose only objects changed within the run, may be).
        untouched = {
            hashlib.sha256(payload).hexdigest() for key, payload in before.items() if objects.get(key) == payload
        }
        for sha in untouched:
            assert now[sha] == score_rows[sha]
        score_rows = now
