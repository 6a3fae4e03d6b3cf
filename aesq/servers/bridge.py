"""Bucket notifications → the ingest queue, and one Prefect event per burst, so ingestion starts when
objects land instead of at the next interval, and a burst of uploads starts one ingest run.

MinIO (webhook target) or anything that forwards S3 event notifications POSTs them here. The bridge puts
each created object of a configured `s3://` source straight into the Postgres ingest queue (with the
notification's ETag; ingest looks for its sidecar itself) and answers 200 once that is committed — 503
when the database cannot take it, so the sender retries. The first notification for a quiet bucket
schedules one `aesq.object.created` event on resource `aesq.bucket.<bucket>` after
`notification_window_seconds`; later ones within the window only add to the queue. That event triggers
the bucket's ingest deployments with `listing=False`: the run drains the queue without listing the bucket.

No key is lost to the coalescing: an object is queued before its event is scheduled, and a bucket's
pending event is forgotten before it is emitted, so an object queued after the run started (or while
one is draining) schedules another event and another run. The interval runs list the bucket anyway.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy as sa
from prefect.events import emit_event

from aesq.core.claims import Listed, queue_objects
from aesq.core.config import Settings
from aesq.core.database import DatabaseError, get_engine
from aesq.core.storage import created_objects, is_sidecar, parse_location
from aesq.flows.events import OBJECT_CREATED, bucket_resource

STORAGE = "s3"
logger = logging.getLogger(__name__)


def s3_sources(sources: Iterable[str]) -> list[tuple[str, str]]:
    """(bucket, prefix) of each `s3://` source."""
    locations = [parse_location(uri) for uri in sources]
    return [(location.bucket, location.prefix) for location in locations if location.storage == "s3"]


class Bridge:
    """Queues notified objects and emits one event per bucket per window."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sources = s3_sources(settings.sources)
        self.window = settings.notification_window_seconds
        self._lock = threading.Lock()
        self._due: dict[str, threading.Timer] = {}  # bucket → its scheduled event
        self._counts: dict[str, int] = {}  # bucket → objects queued since its event was scheduled
        self._context = contextvars.copy_context()  # the creator's Prefect settings, for the timers' threads

    def covered(self, bucket: str, key: str) -> bool:
        """Whether a configured source holds the object (others would wait in the queue for nobody)."""
        return any(bucket == b and key.startswith(prefix) for b, prefix in self.sources)

    def accept(self, notification: dict) -> dict[str, int]:
        """Queue the created objects of `notification` (committed on return) and schedule their buckets'
        events; raises ValueError & co for a body that is not a notification, SQLAlchemyError when the
        database cannot take them. Returns how many objects were queued and ignored (outside the sources,
        sidecars, or already ingested with that ETag)."""
        by_bucket: dict[str, dict[str, str | None]] = {}
        created = created_objects(notification)
        for bucket, key, etag in created:
            if self.covered(bucket, key) and not is_sidecar(key):
                by_bucket.setdefault(bucket, {})[key] = etag  # a later record of the same key wins
        queued: dict[str, int] = {}
        with get_engine(self.settings).begin() as connection:
            for bucket, etags in by_bucket.items():
                objects = [Listed(key, etag, listed=False) for key, etag in etags.items()]
                if count := queue_objects(connection, STORAGE, bucket, objects):
                    queued[bucket] = count
        for bucket, count in queued.items():
            self._schedule(bucket, count)
        total = sum(queued.values())
        return {"objects": total, "ignored": len(created) - total}

    def _schedule(self, bucket: str, count: int) -> None:
        """Emit the bucket's event after the window, unless one is already due (then it covers these)."""
        with self._lock:
            self._counts[bucket] = self._counts.get(bucket, 0) + count
            if bucket in self._due:
                return
            timer = threading.Timer(self.window, self._context.copy().run)
            timer.args, timer.daemon = (self._emit, bucket, timer), True
            self._due[bucket] = timer
        timer.start()

    def _emit(self, bucket: str, timer: threading.Timer) -> None:
        """Emit the bucket's event if `timer` is the one due. It is forgotten first: an object queued from
        now on schedules the next event."""
        with self._lock:
            if self._due.get(bucket) is not timer:
                return  # already emitted by `flush`
            del self._due[bucket]
            count = self._counts.pop(bucket, 0)
        emit_event(
            OBJECT_CREATED, resource={"prefect.resource.id": bucket_resource(bucket)}, payload={"objects": count}
        )
        logger.info("%d objects queued in bucket %s: ingest notified", count, bucket)

    def flush(self) -> None:
        """Emit every due event now (on shutdown, so queued objects do not wait for the interval)."""
        with self._lock:
            due = list(self._due.items())
        for bucket, timer in due:
            timer.cancel()
            self._emit(bucket, timer)


class BridgeServer(ThreadingHTTPServer):
    """The HTTP server; `server_close` emits the events still due."""

    bridge: Bridge

    def server_close(self) -> None:
        super().server_close()
        self.bridge.flush()


def bridge_server(host: str, port: int, settings: Settings) -> BridgeServer:
    """An HTTP server taking notifications by POST (with `Authorization: Bearer <AESQ_BRIDGE_TOKEN>` when
    that is set) for the `s3://` sources of `settings`."""
    token = settings.bridge_token.get_secret_value() if settings.bridge_token else None
    bridge = Bridge(settings)

    class Handler(BaseHTTPRequestHandler):
        def authorised(self) -> bool:
            """True when no token is set or the request carries it; answers 401 otherwise."""
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self.send_error(401, "missing or wrong bearer token")
                return False
            return True

        def do_HEAD(self) -> None:
            """MinIO checks that a webhook target is up with HEAD."""
            if self.authorised():
                self.send_response(200)
                self.end_headers()

        def do_POST(self) -> None:
            """Queue the notification in the body; 400 for a body that is not one, 401 without the token,
            503 when the database cannot take it (the sender keeps it and retries)."""
            if not self.authorised():
                return
            try:
                notification = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                counts = bridge.accept(notification)
            except (ValueError, KeyError, TypeError, AttributeError) as problem:
                self.send_error(400, f"not an S3 event notification: {problem}")
                return
            except (sa.exc.SQLAlchemyError, DatabaseError) as problem:
                logger.warning("cannot queue notified objects: %s", problem)
                self.send_response(503, "database unavailable")
                self.send_header("Retry-After", "5")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            """Requests go to aesq's logger, not stderr."""
            logger.debug(format, *args)

    server = BridgeServer((host, port), Handler)
    server.bridge = bridge
    return server
