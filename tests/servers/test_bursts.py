"""Bursts coalesce: many uploads notified within a short window start one (or a few) ingest runs of the
served chain, which drain the queue the bridge filled without listing the bucket, and ingest every object."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client

from aesq.core.database import get_engine
from tests.helpers import (
    bridge_settings,
    bucket_events,
    jpeg_bytes,
    noise_image,
    post,
    put,
    serving_bridge,
    subscribe,
)

pytestmark = pytest.mark.slow

UPLOADS = 30


def _ingest_runs() -> list[tuple[dict, str]]:
    """(parameters, state) of the ingest flow runs that started (scheduled interval runs have not)."""
    with get_client(sync_client=True) as client:
        flows = {flow.name: flow.id for flow in client.read_flows()}
        return [
            (run.parameters, run.state.type.value)
            for run in client.read_flow_runs()
            if run.flow_id == flows.get("aesq-ingest") and run.state.type.value != "SCHEDULED"
        ]


def _ingested(settings, bucket: str) -> set[str]:
    with get_engine(settings).connect() as connection:
        return set(
            connection.execute(sa.text("SELECT key FROM assets WHERE bucket = :bucket"), {"bucket": bucket}).scalars()
        )


def test_a_burst_of_uploads_starts_one_ingest_run_that_ingests_every_object(
    settings, serve_chain, s3_endpoint, s3_client, bucket
):
    receive = subscribe(s3_endpoint, bucket)
    source = f"s3://{bucket}/"
    chain = serve_chain(AESQ_SOURCES=source, AESQ_POLL_INTERVAL_SECONDS="86400")
    keys = {f"generated/burst/1.0/{index:02d}.jpg" for index in range(UPLOADS)}
    images = {key: jpeg_bytes(noise_image(index, 64)) for index, key in enumerate(sorted(keys))}
    window = settings.notification_window_seconds
    with serving_bridge(bridge_settings(settings, bucket)) as url, ThreadPoolExecutor(8) as posters:
        # uploads in one thread; each notification is POSTed as soon as the S3 server sends it, several at once
        uploader = threading.Thread(target=lambda: [put(s3_client, bucket, key, data) for key, data in images.items()])
        started = time.monotonic()
        uploader.start()
        answers = []
        receive(UPLOADS, lambda body: answers.append(posters.submit(post, url, json.dumps(body).encode())))
        uploader.join()
        assert [answer.result() for answer in answers] == [(200, '{"objects": 1, "ignored": 0}')] * UPLOADS
        burst = time.monotonic() - started

        def done() -> bool:  # or too many runs already: the assertions below say so
            runs = _ingest_runs()
            ingested = (
                _ingested(settings, bucket) == keys and bool(runs) and all(state == "COMPLETED" for _, state in runs)
            )
            return ingested or len(runs) > 3

        chain.wait(done, "every object ingested")
        time.sleep(window + 3)  # any further event and run would have started by now
    runs = _ingest_runs()
    events = bucket_events(bucket)
    assert 1 <= len(runs) <= 3, (runs, events, burst)
    assert runs == [({"source": source, "listing": False}, "COMPLETED")] * len(runs)  # drained, no listing
    assert sum(event["objects"] for event in events) == UPLOADS and len(events) == len(runs), events
    assert _ingested(settings, bucket) == keys
