"""A run killed outright (kill -9) mid-batch leaves nothing that a later run cannot finish correctly."""

from __future__ import annotations

import signal

import psutil
import pytest

from tests.faults.stack import (
    aesq_run,
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


def test_a_run_killed_mid_batch_is_finished_by_the_next_run(fault_settings, source, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("AESQ_LEASE_SECONDS", "10")  # the killed run's claimed batches wait this long for the next
    objects = generated_images(versions=2, per_version=40, copies_per_version=4)
    upload(s3_client, bucket, objects)
    distinct = len(set(objects.values()))

    process = start_aesq_run(source)
    try:

        def some_but_not_all_scored() -> bool:
            """some assets are scored, others not yet"""
            return 8 <= scored_count(fault_settings) < distinct - 8

        wait_until(some_but_not_all_scored, 180, process)
        helpers = psutil.Process(process.pid).children(recursive=True)  # its image validation workers
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        _, left = psutil.wait_procs(helpers, timeout=10)
        assert all(helper.status() == psutil.STATUS_ZOMBIE for helper in left), "helpers outlived the killed run"
    finally:
        end_process_group(process)
    assert process.returncode == -signal.SIGKILL
    assert scored_count(fault_settings) < distinct, "killed before the end"

    again = aesq_run(source)
    assert again.returncode == 0, again.stderr
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)
