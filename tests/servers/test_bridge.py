"""Bucket notifications start ingestion: the S3 server's notification-to-queue path feeds the bridge, which
queues the objects in Postgres and emits one Prefect event per bucket and window; the event triggers the
served ingest deployment, which drains the queue without listing (no interval run involved)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable

import httpx
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from aesq.core.config import Settings
from aesq.core.database import get_engine
from tests.helpers import (
    AESQ,
    bridge_settings,
    bucket_events,
    flow_runs,
    free_port,
    ingest_all,
    jpeg_bytes,
    noise_image,
    post,
    put,
    serving_bridge,
    subscribe,
)

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def queued(settings: Settings, bucket: str) -> dict[str, tuple[str | None, bool, bool]]:
    """key → (etag, changed, listed) of the bucket's queued objects."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(
            sa.text("SELECT key, etag, changed, listed FROM ingest_queue WHERE storage = 's3' AND bucket = :bucket"),
            {"bucket": bucket},
        ).all()
    return {row.key: (row.etag, row.changed, row.listed) for row in rows}


def test_notifications_are_queued_and_coalesced_into_one_event_per_window(
    prefect_harness, settings, s3_endpoint, s3_client, bucket
):
    receive = subscribe(s3_endpoint, bucket)
    image = jpeg_bytes(noise_image(7, 64))
    put(s3_client, bucket, "gen/known.jpg", image)
    [known] = receive(1)
    ingest_all(f"s3://{bucket}/gen/", settings)  # known.jpg is ingested before the burst
    keys = [f"gen/v1/{index}.jpg" for index in range(8)]
    for index, key in enumerate(keys):
        put(s3_client, bucket, key, jpeg_bytes(noise_image(index, 64)))
    put(s3_client, bucket, "gen/v1/0.jpg.json", b"{}")  # a sidecar: ingest reads it with its image
    put(s3_client, bucket, "elsewhere/x.jpg", image)  # outside the source's prefix
    burst = receive(len(keys) + 2)
    etags = {key: s3_client.stat_object(bucket, key).etag.strip('"') for key in keys}

    with serving_bridge(bridge_settings(settings, bucket, "gen/", notification_window_seconds=1.5)) as url:
        assert post(url, json.dumps(known).encode()) == (200, '{"objects": 0, "ignored": 1}')
        answers = [post(url, json.dumps(body).encode()) for body in burst]
        assert sorted(answers) == sorted(
            [(200, '{"objects": 1, "ignored": 0}')] * len(keys) + [(200, '{"objects": 0, "ignored": 1}')] * 2
        )
        # queued, committed, before any event: the run an event starts finds them
        assert queued(settings, bucket) == {key: (etags[key], False, False) for key in keys}
        assert bucket_events(bucket) == []
        wait_for(lambda: bucket_events(bucket), "the burst's event")
        time.sleep(2)  # a second event would have come by now
        assert bucket_events(bucket) == [{"objects": len(keys)}]

        # an object notified after the event (say while its run drains the queue) gets its own event
        put(s3_client, bucket, "gen/v1/late.jpg", image)
        assert post(url, json.dumps(receive(1)[0]).encode()) == (200, '{"objects": 1, "ignored": 0}')
        wait_for(lambda: len(bucket_events(bucket)) == 2, "the late object's event")
        assert bucket_events(bucket) == [{"objects": len(keys)}, {"objects": 1}]
        assert set(queued(settings, bucket)) == {*keys, "gen/v1/late.jpg"}


def test_shutdown_emits_the_events_still_due(prefect_harness, settings, s3_endpoint, s3_client, bucket):
    receive = subscribe(s3_endpoint, bucket)
    put(s3_client, bucket, "a.jpg", jpeg_bytes(noise_image(1, 64)))
    with serving_bridge(bridge_settings(settings, bucket, notification_window_seconds=3600)) as url:
        assert post(url, json.dumps(receive(1)[0]).encode())[0] == 200
    wait_for(lambda: bucket_events(bucket) == [{"objects": 1}], "the event flushed at shutdown")


def test_a_database_that_cannot_take_the_objects_answers_503(prefect_harness, settings, s3_endpoint, s3_client, bucket):
    receive = subscribe(s3_endpoint, bucket)
    put(s3_client, bucket, "a.jpg", jpeg_bytes(noise_image(1, 64)))
    notification = json.dumps(receive(1)[0]).encode()
    down = bridge_settings(settings, bucket, database_url=f"postgresql://aesq@127.0.0.1:{free_port()}/aesq")
    with serving_bridge(down) as url:
        assert post(url, notification)[0] == 503  # MinIO keeps the event and retries
    with serving_bridge(bridge_settings(settings, bucket)) as url:
        assert post(url, notification) == (200, '{"objects": 1, "ignored": 0}')
    assert set(queued(settings, bucket)) == {"a.jpg"}


def test_healthz_answers_probes_without_a_token_and_names_what_does_not_answer(prefect_harness, settings, bucket):
    """200 while the database and the Prefect API both answer (a notification is taken only then), else 503 naming
    which does not, never where it is or its password."""
    guarded = bridge_settings(settings, bucket, bridge_token=SecretStr("bridge-secret"))
    with serving_bridge(guarded) as url:
        assert httpx.get(f"{url}healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}healthz", headers={"Host": "10.1.2.3:8001"}).status_code == 200  # a probe's Host
    down = bridge_settings(settings, bucket, database_url=f"postgresql://aesq:hunter2@127.0.0.1:{free_port()}/aesq")
    with serving_bridge(down) as url:
        answer = httpx.get(f"{url}healthz", timeout=30)
        assert (answer.status_code, answer.json()) == (503, {"status": "database unreachable"})
        assert "hunter2" not in answer.text
    with serving_bridge(guarded, api_url=f"http://127.0.0.1:{free_port()}/api") as url:
        answer = httpx.get(f"{url}healthz", timeout=30)
        assert (answer.status_code, answer.json()) == (503, {"status": "Prefect API unreachable"})


def test_new_object_notification_starts_ingest_and_scoring(settings, serve_chain, s3_endpoint, s3_client, bucket):
    receive = subscribe(s3_endpoint, bucket)
    put(s3_client, bucket, "generated/sdxl/1.0/new image.jpg", jpeg_bytes(noise_image(1, 96)))
    [notification] = receive(1)
    chain = serve_chain(AESQ_SOURCES=f"s3://{bucket}/", AESQ_POLL_INTERVAL_SECONDS="86400")
    with serving_bridge(bridge_settings(settings, bucket, bridge_token=SecretStr("secret"))) as url:
        assert post(url, json.dumps(notification).encode())[0] == 401  # no token
        assert post(url, json.dumps(notification).encode(), "wrong")[0] == 401
        head = urllib.request.Request(url, method="HEAD", headers={"Authorization": "Bearer secret"})
        assert urllib.request.urlopen(head, timeout=10).status == 200  # MinIO's liveness check
        assert post(url, b"not json", "secret")[0] == 400
        assert post(url, json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode(), "secret")[0] == 400
        assert post(url, json.dumps(notification).encode(), "secret") == (200, '{"objects": 1, "ignored": 0}')
        chain.wait(lambda: ("aesq-score", "COMPLETED") in flow_runs(), "ingest and scoring")
    with get_client(sync_client=True) as client:
        ingest_flow_id = client.read_flow_by_name("aesq-ingest").id
        runs = [
            run
            for run in client.read_flow_runs()
            if run.flow_id == ingest_flow_id and run.state.type.value != "SCHEDULED"
        ]
    assert [(run.parameters.get("listing"), run.state.type.value) for run in runs] == [(False, "COMPLETED")]
    with get_engine(settings).connect() as connection:
        rows = connection.execute(sa.text("SELECT key, status FROM assets")).all()
    assert [tuple(row) for row in rows] == [("generated/sdxl/1.0/new image.jpg", "scored")]


def test_aesq_bridge_queues_and_emits_what_is_due_when_interrupted(
    prefect_harness, settings, s3_endpoint, s3_client, bucket
):
    receive = subscribe(s3_endpoint, bucket)
    put(s3_client, bucket, "a.jpg", jpeg_bytes(noise_image(1, 64)))
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "AESQ_NOTIFICATION_WINDOW_SECONDS": "3600"}
    refused = subprocess.run(
        [AESQ, "bridge"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**environment, "AESQ_SOURCES": "/srv/images"},
    )
    assert refused.returncode == 1 and "no s3:// source configured" in refused.stderr, refused.stderr
    url = f"http://127.0.0.1:{free_port()}/"
    bridge = subprocess.Popen(
        [AESQ, "bridge", "--listen", url[7:-1]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**environment, "AESQ_SOURCES": f"s3://{bucket}/"},
    )
    try:
        wait_for(lambda: bridge.poll() is not None or _listening(url), "the bridge to listen", 120)
        assert bridge.poll() is None, "the bridge exited"
        assert post(url, json.dumps(receive(1)[0]).encode()) == (200, '{"objects": 1, "ignored": 0}')
    finally:
        bridge.send_signal(signal.SIGINT)  # Ctrl-C: the event due in an hour is emitted on the way out
        output = bridge.communicate(timeout=60)[0]
    assert set(queued(settings, bucket)) == {"a.jpg"}, output
    wait_for(lambda: bucket_events(bucket) == [{"objects": 1}], f"the event emitted at exit: {output}")


def _listening(url: str) -> bool:
    try:
        return post(url, b'{"Records": []}') == (200, '{"objects": 0, "ignored": 0}')
    except OSError:
        return False
