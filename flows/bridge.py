"""Bucket notifications → Prefect events, so ingestion starts when an object lands instead of at the next interval.

MinIO (webhook target) or anything that forwards S3 event notifications POSTs them here; each created
object becomes an `aesq.object.created` event on resource `aesq.bucket.<bucket>`, which the ingest
deployments of that bucket are triggered by.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prefect.events import emit_event

from aesq.storage import created_objects

OBJECT_CREATED = "aesq.object.created"
logger = logging.getLogger(__name__)


def bucket_resource(bucket: str) -> str:
    """The Prefect event resource id of a bucket."""
    return f"aesq.bucket.{bucket}"


def publish(notification: dict) -> int:
    """Emit one event per created object in `notification`; returns how many."""
    objects = created_objects(notification)
    for bucket, key in objects:
        emit_event(OBJECT_CREATED, resource={"prefect.resource.id": bucket_resource(bucket)}, payload={"key": key})
    return len(objects)


def bridge_server(host: str, port: int, token: str | None) -> ThreadingHTTPServer:
    """An HTTP server taking notifications by POST (with `Authorization: Bearer <token>` when a token is set)."""

    class Handler(BaseHTTPRequestHandler):
        def authorised(self) -> bool:
            """True when no token is set or the request carries it; answers 401 otherwise."""
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self.send_error(401, "missing or wrong bearer token")
                return False
            return True

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            """MinIO checks that a webhook target is up with HEAD."""
            if self.authorised():
                self.send_response(200)
                self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            """Publish the notification in the body; 400 for a body that is not one, 401 without the token."""
            if not self.authorised():
                return
            try:
                notification = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                count = publish(notification)
            except (ValueError, KeyError, TypeError, AttributeError) as problem:
                self.send_error(400, f"not an S3 event notification: {problem}")
                return
            body = json.dumps({"objects": count}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            """Requests go to aesq's logger, not stderr."""
            logger.debug(format, *args)

    return ThreadingHTTPServer((host, port), Handler)
