"""A poison file (a decoder raises on it) in a batch of good images fails alone, with its reason, and the run
still succeeds."""

from __future__ import annotations

import pytest

from tests.faults.stack import aesq_run, generated_images, upload
from tests.helpers import (
    assert_every_content_scored_once,
    assert_statistics_match_rows,
    put,
    tiff_whose_second_page_has_no_width,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_a_poison_tiff_among_good_images_fails_alone_and_the_run_succeeds(
    fault_settings, source, s3_client, bucket, monkeypatch
):
    monkeypatch.setenv("AESQ_BATCH_SIZE", "8")  # the poison shares a batch with seven good images
    objects = generated_images(versions=1, per_version=40, copies_per_version=0)
    upload(s3_client, bucket, objects)
    poison = "generated/model/v1/0004-poison.tif"  # listed between 0004.jpg and 0005.jpg: in the first batch
    put(s3_client, bucket, poison, tiff_whose_second_page_has_no_width())

    run = aesq_run(source)
    assert run.returncode == 0, run.stderr
    assert "assets: failed 1, scored 40" in run.stdout, run.stdout
    assert "this run: 41 new, 40 scored, 1 failed" in run.stdout, run.stdout
    assert "failed (unreadable frames): 1" in run.stdout, run.stdout
    assert f"{bucket}/{poison}: cannot count its frames: TypeError: Missing dimensions" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr
    assert_every_content_scored_once(fault_settings, objects, failed=[poison])
    assert_statistics_match_rows(fault_settings)
