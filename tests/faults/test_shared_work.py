"""Several workers on one source share its work through claims: each image is fetched and run through each
model about once, and a killed worker's claimed batch is done by another once its lease lapses."""

from __future__ import annotations

import os
import signal
import time

import pytest
import sqlalchemy as sa

from aesq.core.config import get_settings
from aesq.core.database import get_engine
from tests.faults.stack import end_process_group, generated_images, start_aesq_run, upload, wait_until
from tests.helpers import assert_every_content_scored_once, assert_statistics_match_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _work(settings) -> dict[str, int]:
    """Items per stage in the work log: object reads ('fetch') and images per model ('model:<name>')."""
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(sa.text("SELECT stage, sum(items) FROM work_log GROUP BY stage")).all())


def test_four_concurrent_runs_fetch_and_score_each_image_about_once(
    fault_settings, source, s3_client, bucket, monkeypatch
):
    monkeypatch.setenv("AESQ_BATCH_SIZE", "8")
    get_settings.cache_clear()
    objects = generated_images(versions=2, per_version=100, copies_per_version=0)
    upload(s3_client, bucket, objects)

    workers = [start_aesq_run(source) for _ in range(4)]
    try:
        outcomes = [worker.communicate(timeout=400) for worker in workers]
    finally:
        for worker in workers:
            end_process_group(worker)

    assert [worker.returncode for worker in workers] == [0] * 4, [stderr for _, stderr in outcomes]
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    work = _work(fault_settings)
    assert work["fetch"] / len(objects) <= 1.1, work
    assert work["model:technical"] / len(objects) <= 1.05, work
    with get_engine(fault_settings).connect() as connection:
        workers_that_worked = connection.execute(sa.text("SELECT count(DISTINCT worker) FROM work_log")).scalar_one()
    assert workers_that_worked > 1, "the work was shared"


def test_a_killed_workers_claimed_batch_is_done_by_another_when_its_lease_lapses(
    fault_settings, source, s3_client, bucket, monkeypatch
):
    lease = 10
    monkeypatch.setenv("AESQ_LEASE_SECONDS", str(lease))
    get_settings.cache_clear()
    objects = generated_images(versions=1, per_version=60, copies_per_version=0)
    upload(s3_client, bucket, objects)
    engine = get_engine(fault_settings)

    first = start_aesq_run(source)
    owner = f"%:{first.pid}:%"

    def first_holds_a_claim() -> bool:
        """The first run holds a live claim on queued objects or on assets to score."""
        with engine.connect() as connection:
            return connection.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM ingest_queue WHERE lease_owner LIKE :owner AND lease_until > now())"
                    " OR EXISTS (SELECT 1 FROM assets WHERE lease_owner LIKE :owner AND lease_until > now())"
                ),
                {"owner": owner},
            ).scalar_one()

    try:
        wait_until(first_holds_a_claim, 120, first)
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.communicate()
        assert first_holds_a_claim(), "the killed run left a live claim behind"
        second = start_aesq_run(source)
        _, stderr = second.communicate(timeout=300)
        finished_after = time.monotonic() - killed_at
    finally:
        end_process_group(first)
    assert second.returncode == 0, stderr
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert finished_after < lease + 120, f"the second run ended {finished_after:.0f} s after the kill"
    with engine.connect() as connection:
        left = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM ingest_queue) + (SELECT count(*) FROM assets WHERE lease_until IS NOT NULL)"
            )
        ).scalar_one()
    assert left == 0, "no claim or queued object is left behind"
