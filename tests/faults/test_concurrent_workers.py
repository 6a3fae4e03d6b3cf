"""Workers racing on one source while statistics are aggregated over and over: every content is scored once
and counted once per version; re-uploading the same bytes changes no scoring time and no daily figure."""

from __future__ import annotations

import threading

import boto3
import pytest
import sqlalchemy as sa

from aesq.analysis import aggregate
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.flows.spine import run_flow
from tests.faults.stack import (
    contents_per_version,
    counted_per_version,
    end_process_group,
    generated_images,
    start_aesq_run,
    upload,
)
from tests.helpers import S3_ACCESS_KEY, S3_SECRET_KEY, assert_every_content_scored_once, assert_statistics_match_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

WORKERS = 4


def _reupload_as_multipart(s3_endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    """Upload the same bytes again in one-part multipart uploads: a new ETag (`<md5 of md5s>-1`) for each."""
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_endpoint}",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    for key, payload in objects.items():
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=payload)
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )


def _snapshot(settings) -> tuple[dict, list, list]:
    """Each asset's (ETag, status, scored_at), and the stored per-version and per-day figures."""
    with get_engine(settings).connect() as connection:
        assets = {
            row.key: (row.etag, row.status, row.scored_at)
            for row in connection.execute(sa.text("SELECT key, etag, status, scored_at FROM assets"))
        }
        versions = connection.execute(
            sa.text("SELECT generator_id, scorer, count, mean FROM version_stats ORDER BY 1, 2")
        ).all()
        days = connection.execute(sa.text("SELECT * FROM version_daily_stats ORDER BY 1, 2, 3")).all()
    return assets, versions, days


def test_racing_workers_and_aggregates_count_every_content_once(
    fault_settings, source, s3_client, s3_endpoint, bucket, monkeypatch
):
    monkeypatch.setenv("AESQ_BATCH_SIZE", "8")
    get_settings.cache_clear()
    objects = generated_images(versions=3, per_version=90, copies_per_version=10)
    upload(s3_client, bucket, objects)

    workers = [start_aesq_run(source) for _ in range(WORKERS)]
    aggregating, aggregates = threading.Event(), []

    def aggregate_until_the_workers_end() -> None:
        """Refresh the statistics over and over while the workers ingest and score."""
        while not aggregating.is_set():
            aggregates.append(aggregate.aggregate_versions(fault_settings))
            aggregating.wait(0.2)

    aggregator = threading.Thread(target=aggregate_until_the_workers_end)
    aggregator.start()
    try:
        outcomes = [worker.communicate(timeout=300) for worker in workers]
    finally:
        aggregating.set()
        aggregator.join()
        for worker in workers:
            end_process_group(worker)
    assert [worker.returncode for worker in workers] == [0] * WORKERS, [stderr for _, stderr in outcomes]
    assert any(aggregates), "aggregates ran while scores were being written"
    aggregate.aggregate_versions(fault_settings)
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)

    assets, versions, days = _snapshot(fault_settings)
    _reupload_as_multipart(s3_endpoint, bucket, objects)
    run_flow(source)
    assets_after, versions_after, days_after = _snapshot(fault_settings)
    assert all(assets_after[key][0] != assets[key][0] for key in objects), (
        "every object was re-uploaded with a new ETag"
    )
    assert {key: state[1:] for key, state in assets_after.items()} == {key: state[1:] for key, state in assets.items()}
    assert (versions_after, days_after) == (versions, days)
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
