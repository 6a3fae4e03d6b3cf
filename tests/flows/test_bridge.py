"""Bucket notifications start ingestion: the S3 server's notification-to-queue path feeds the bridge,
whose Prefect event triggers the served ingest deployment (no interval run involved)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import boto3
import pytest
import sqlalchemy as sa

from aesq.database import get_engine
from flows.bridge import bridge_server
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, _free_port
from tests.flows.conftest import flow_runs
from tests.helpers import jpeg_bytes, noise_image, put

pytestmark = pytest.mark.slow


def _queue_notification(s3_endpoint: str, s3_client, bucket: str) -> dict:
    """Configure the bucket to notify an SQS queue on the S3 server, upload an image, return the message."""
    session = dict(endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1",
                   aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY)
    sqs = boto3.client("sqs", **session)
    queue = sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("s3", **session).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    put(s3_client, bucket, "generated/sdxl/1.0/new image.jpg", jpeg_bytes(noise_image(1, 96)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(message["Body"])
            if body.get("Records"):
                return body
    raise AssertionError("the S3 server sent no notification")


def _post(url: str, body: bytes, token: str | None = None) -> tuple[int, str]:
    """POST to the bridge; (status, body)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_new_object_notification_starts_ingest_and_scoring(settings, serve_chain, s3_endpoint, s3_client, bucket):
    notification = _queue_notification(s3_endpoint, s3_client, bucket)
    port = _free_port()
    server = bridge_server("127.0.0.1", port, "secret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chain = serve_chain(AESQ_SOURCES=f"s3://{bucket}/", AESQ_POLL_INTERVAL_SECONDS="86400")
        url = f"http://127.0.0.1:{port}/"
        assert _post(url, json.dumps(notification).encode())[0] == 401  # no token
        assert _post(url, json.dumps(notification).encode(), "wrong")[0] == 401
        head = urllib.request.Request(url, method="HEAD", headers={"Authorization": "Bearer secret"})
        assert urllib.request.urlopen(head, timeout=10).status == 200  # MinIO's liveness check
        assert _post(url, b"not json", "secret")[0] == 400
        assert _post(url, json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]}).encode(), "secret")[0] == 400
        assert _post(url, json.dumps(notification).encode(), "secret") == (200, '{"objects": 1}')
        chain.wait(lambda: ("aesq-score", "COMPLETED") in flow_runs(), "ingest and scoring")
    finally:
        server.shutdown()
    assert ("aesq-ingest", "COMPLETED") in flow_runs()
    with get_engine(settings).connect() as connection:
        rows = connection.execute(sa.text("SELECT key, status FROM assets")).all()
    assert [tuple(row) for row in rows] == [("generated/sdxl/1.0/new image.jpg", "scored")]
