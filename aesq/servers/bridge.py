"""Bucket notifications → the ingest queue, and one Prefect event per burst, so ingestion starts when
objects land instead of at the next interval, and a burst of uploads starts one ingest run.

MinIO (webhook target) or anything that forwards S3 event notifications POSTs them here. The bridge reads and
checks the whole body first (size, record count, nesting, key length: a body that is not a notification changes
nothing), then puts each created object of a configured `s3://` source into the Postgres ingest queue in one
transaction (with the notification's ETag; ingest looks for its sidecar itself) and answers 200 once that is
committed — 503 with Retry-After when the database or the Prefect API cannot take it, so the sender keeps the
notification and retries. Queueing is keyed by (bucket, key, ETag): a retried body queues nothing twice.

The first notification for a quiet bucket schedules one `aesq.object.created` event on resource
`aesq.bucket.<bucket>` after `notification_window_seconds`; later ones within the window only add to the queue.
That event triggers the bucket's ingest deployments with `listing=False`: the run drains the queue without listing
the bucket. An event is sent with Prefect's events client and confirmed by the server; one that cannot be sent
stays due and is tried again with back-off (under the same id).

No key is lost to the coalescing: an object is queued before its event is scheduled, and a bucket's pending event
is forgotten before it is sent, so an object queued after the run started (or while one is draining) schedules
another event and another run. The interval runs list the bucket anyway.

It runs on uvicorn (h11, as strict as HTTP/1.1 framing gets: `Content-Length: -1` or two lengths are a 400) with
what uvicorn lacks added here: a deadline for a request's headers and for its body, a hard connection cap (answered
503), and a connection closed after any answer that left its request's body unread (404, 405, HEAD, errors), so no
trickled body holds it. Memory is bounded by the cap × the body limit plus PARSES_AT_ONCE parsed bodies.
A notification must say `Content-Type: application/json` (as MinIO's does), so a web page cannot send one as a
"simple" cross-site request; without a token the bridge answers only requests to a loopback Host (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from urllib.parse import unquote_plus

import anyio
import h11
import httpx
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from aesq.core.claims import Listed, queue_objects
from aesq.core.config import Settings
from aesq.core.database import DatabaseError, answers, get_engine
from aesq.core.storage import is_sidecar, parse_location
from aesq.core.tokens import bearer_token, token_matches
from aesq.flows.events import OBJECT_CREATED, bucket_resource

STORAGE = "s3"
MAX_KEY_BYTES = 1024  # S3's limit on an object key
HEALTH_CACHE_SECONDS = 1.5  # how long one answer of the Prefect API's health check stands
HEALTH_TIMEOUT_SECONDS = 2.0
PARSES_AT_ONCE = 1  # bodies parsed at once: a body of tiny JSON values parses to ~25 times its size
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
RETRY_AFTER_SECONDS = 5  # what a 503 asks the sender to wait
SEND_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # between tries of an event the API did not take
SHUTDOWN_SEND_SECONDS = 20.0  # how long stopping waits for the events still due
MALFORMED = "check its Content-Length (one, a number) or Transfer-Encoding, and the size of its headers"
OVER_CAP_CLOSE_SECONDS = 1.0  # how long a connection beyond the cap may read its 503 before it is closed
logger = logging.getLogger(__name__)


class NotANotification(ValueError):
    """The body is not an S3 event notification; the message says why in one line."""


class TooLarge(ValueError):
    """The body is over the bridge's size or record limit; the message names the limit."""


@dataclass(frozen=True)
class Created:
    """One object-created record of a notification."""

    bucket: str
    key: str
    etag: str | None


def s3_sources(sources: Iterable[str]) -> list[tuple[str, str]]:
    """(bucket, prefix) of each `s3://` source."""
    locations = [parse_location(uri) for uri in sources]
    return [(location.bucket, location.prefix) for location in locations if location.storage == "s3"]


def parse_notification(body: bytes | bytearray, max_records: int) -> list[Created]:
    """Every object-created record of the body, checked whole before anything is queued: NotANotification for
    a body that is not one (or has a record that is not), TooLarge for more than `max_records` records.

    The error raised holds no traceback into the parse, so the parsed body (~25 times its size for tiny values)
    is freed before the next body is parsed, not when the event loop gets to the answer."""
    try:
        return _parse(body, max_records)
    except (NotANotification, TooLarge) as problem:
        refusal = type(problem)(str(problem))
    raise refusal


def _parse(body: bytes | bytearray, max_records: int) -> list[Created]:
    """parse_notification's work; its errors reference the parsed body through their traceback."""
    try:
        notification = json.loads(body)
    except RecursionError:
        raise NotANotification("not an S3 event notification: JSON nested too deeply") from None
    except ValueError as problem:  # also undecodable bytes
        raise NotANotification(f"not an S3 event notification: not JSON ({problem})") from None
    if not isinstance(notification, dict):
        raise NotANotification("not an S3 event notification: the body is not a JSON object")
    if notification.get("Event") == "s3:TestEvent":
        return []  # what S3 sends when a notification target is configured
    records = notification.get("Records")
    if not isinstance(records, list):
        raise NotANotification("not an S3 event notification: no Records list")
    if len(records) > max_records:
        raise TooLarge(f"{len(records)} records in one notification: at most {max_records} (AESQ_BRIDGE_MAX_RECORDS)")
    return [created for index, record in enumerate(records) if (created := _created(index, record))]


def _created(index: int, record: object) -> Created | None:
    """The object a record says was created, None for another event; NotANotification naming the record's
    problem."""
    if not isinstance(record, dict):
        raise NotANotification(f"record {index} is not a JSON object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise NotANotification(f"record {index} has no eventName")
    if not name.startswith(("s3:ObjectCreated:", "ObjectCreated:")):
        return None
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, dict) else None
    item = s3.get("object") if isinstance(s3, dict) else None
    bucket_name = bucket.get("name") if isinstance(bucket, dict) else None
    key = item.get("key") if isinstance(item, dict) else None
    if not isinstance(bucket_name, str) or not bucket_name or not isinstance(key, str) or not key:
        raise NotANotification(f"record {index} ({name}) has no s3.bucket.name and s3.object.key")
    key = unquote_plus(key)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise NotANotification(f"record {index} has an object key over S3's {MAX_KEY_BYTES} bytes")
    etag = item.get("eTag") if isinstance(item, dict) else None
    return Created(bucket_name, key, str(etag or "").strip('"') or None)


class Bridge:
    """Queues notified objects and sends one event per bucket per window."""

    def __init__(self, settings: Settings, api_url: str) -> None:
        self.settings = settings
        self.api_url = api_url.rstrip("/")
        self.sources = s3_sources(settings.sources)
        self.window = settings.notification_window_seconds
        self._counts: dict[str, int] = {}  # bucket → objects queued since its event was scheduled
        self._waiting: dict[str, asyncio.Task[None]] = {}  # bucket → its event, not yet sent
        self._sending: set[asyncio.Task[None]] = set()  # events being sent (or retried)
        self.database_limiter = anyio.CapacityLimiter(settings.database_pool_size)
        self.parse_limiter = anyio.CapacityLimiter(PARSES_AT_ONCE)
        self._health: tuple[float, bool] = (0.0, False)  # (checked at, answered)
        self._health_lock = asyncio.Lock()

    def covered(self, bucket: str, key: str) -> bool:
        """Whether a configured source holds the object (others would wait in the queue for nobody)."""
        return any(bucket == b and key.startswith(prefix) for b, prefix in self.sources)

    async def accept(self, created: list[Created]) -> dict[str, int]:
        """Queue the created objects in one transaction (committed on return) and schedule their buckets'
        events; SQLAlchemyError / DatabaseError when the database cannot take them. Returns how many objects
        were queued and ignored (outside the sources, sidecars, or already queued or ingested with that ETag)."""
        by_bucket: dict[str, dict[str, str | None]] = {}
        for record in created:
            if self.covered(record.bucket, record.key) and not is_sidecar(record.key):
                by_bucket.setdefault(record.bucket, {})[record.key] = record.etag  # a later record of a key wins
        queued = await anyio.to_thread.run_sync(partial(self._queue, by_bucket), limiter=self.database_limiter)
        for bucket, count in queued.items():
            self._schedule(bucket, count)
        total = sum(queued.values())
        return {"objects": total, "ignored": len(created) - total}

    def _queue(self, by_bucket: dict[str, dict[str, str | None]]) -> dict[str, int]:
        """Queue every bucket's objects in one transaction; bucket → how many were queued."""
        queued: dict[str, int] = {}
        if not by_bucket:
            return queued
        with get_engine(self.settings).begin() as connection:
            for bucket, etags in by_bucket.items():
                objects = [Listed(key, etag, listed=False) for key, etag in etags.items()]
                if count := queue_objects(connection, STORAGE, bucket, objects):
                    queued[bucket] = count
        return queued

    async def prefect_answers(self) -> bool:
        """Whether the Prefect API answers its health check, asked at most every HEALTH_CACHE_SECONDS."""
        async with self._health_lock:
            checked, answered = self._health
            if time.monotonic() - checked < HEALTH_CACHE_SECONDS:
                return answered
            answered = await api_answers_async(self.api_url)
            self._health = (time.monotonic(), answered)
            return answered

    def _schedule(self, bucket: str, count: int) -> None:
        """Send the bucket's event after the window, unless one is already waiting (then it covers these)."""
        self._counts[bucket] = self._counts.get(bucket, 0) + count
        if bucket not in self._waiting:
            self._waiting[bucket] = asyncio.create_task(self._after_window(bucket))

    async def _after_window(self, bucket: str) -> None:
        """Wait out the window, then hand the bucket's event on to be sent."""
        await asyncio.sleep(self.window)
        self._release(bucket)

    def _release(self, bucket: str) -> None:
        """Forget the bucket's waiting event (an object queued from now on schedules the next) and send it."""
        del self._waiting[bucket]
        count = self._counts.pop(bucket, 0)
        task = asyncio.create_task(self._send(bucket, count, uuid.uuid4()))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, bucket: str, count: int, event_id: uuid.UUID) -> None:
        """Send the event until the Prefect API confirms it, with back-off between tries (same id each time)."""
        for attempt in itertools.count():
            try:
                await send_event(self.api_url, bucket, count, event_id)
            except Exception as problem:  # any failure of the client: the event stays due
                delay = SEND_BACKOFF_SECONDS[min(attempt, len(SEND_BACKOFF_SECONDS) - 1)]
                logger.warning(
                    "cannot send the event for %d objects queued in bucket %s to the Prefect API at %s, "
                    "trying again in %g s: %s",
                    count,
                    bucket,
                    self.api_url,
                    delay,
                    problem or type(problem).__name__,
                )
                self._health = (0.0, False)
                await asyncio.sleep(delay)
                continue
            logger.info("%d objects queued in bucket %s: ingest notified", count, bucket)
            return

    async def flush(self) -> None:
        """Send every due event now, waiting up to SHUTDOWN_SEND_SECONDS (on shutdown, so queued objects do not
        wait for the interval); an event still unsent is named in the log: its objects stay queued."""
        for bucket, task in list(self._waiting.items()):
            task.cancel()
            self._release(bucket)
        if not self._sending:
            return
        _, unsent = await asyncio.wait(self._sending, timeout=SHUTDOWN_SEND_SECONDS)
        for task in unsent:
            task.cancel()
        if unsent:
            logger.error(
                "%d events not sent to the Prefect API at %s: their objects stay queued for the next interval run",
                len(unsent),
                self.api_url,
            )


async def send_event(api_url: str, bucket: str, count: int, event_id: uuid.UUID) -> None:
    """Send one `aesq.object.created` event and wait until the server has it; raises when it cannot."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    event = Event.model_validate(
        {
            "id": event_id,
            "event": OBJECT_CREATED,
            "resource": {"prefect.resource.id": bucket_resource(bucket)},
            "payload": {"objects": count},
        }
    )
    # checkpoint_every=1: emit waits for the server's pong after the event, so a return means it arrived
    async with PrefectEventsClient(api_url, reconnection_attempts=0, checkpoint_every=1) as client:
        await client.emit(event)


async def api_answers_async(api_url: str) -> bool:
    """Whether the Prefect API at `api_url` answers its health check within HEALTH_TIMEOUT_SECONDS."""
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS) as client:
            return (await client.get(f"{api_url.rstrip('/')}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def api_answers(api_url: str) -> bool:
    """Whether the Prefect API at `api_url` answers its health check (for the command, before serving)."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


def _refuse(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error answer that also closes the connection (the rest of an unread body is not waited for)."""
    return JSONResponse({"detail": detail}, status, headers={"Connection": "close", **(headers or {})})


async def _not_here(request: Request, problem: Exception) -> Response:
    """404 and 405 in the bridge's error shape: it takes notifications by POST / only."""
    assert isinstance(problem, HTTPException)
    detail = f"{request.method} {request.url.path}: {problem.detail}; the bridge takes notifications by POST /"
    return _refuse(problem.status_code, detail, problem.headers)


def _unavailable(detail: str) -> JSONResponse:
    """503 with Retry-After: the sender keeps the notification and tries again."""
    return _refuse(503, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def read_body(request: Request, max_bytes: int, seconds: float) -> bytearray:
    """The whole body, at most `max_bytes` (TooLarge beyond, from Content-Length before reading and while reading
    a chunked one) within `seconds` (TimeoutError); one buffer, never copied."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > max_bytes:
        raise TooLarge(f"a body of {declared} bytes: at most {max_bytes} (AESQ_BRIDGE_MAX_BODY_BYTES)")
    body = bytearray()
    async with asyncio.timeout(seconds):
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"a body over {max_bytes} bytes (AESQ_BRIDGE_MAX_BODY_BYTES)")
    return body


def loopback_host(host: str) -> bool:
    """Whether a Host header names the loopback (`localhost`, 127.0.0.0/8 or [::1], any port)."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rpartition(":")[0] or host
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def json_content(request: Request) -> bool:
    """Whether the request says its body is JSON (a browser sends no such body cross-site without asking first)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type == "application/json"


def close_unless_drained(app: ASGIApp) -> ASGIApp:
    """Answer `Connection: close` whenever the request's body was not read to its end (404, 405, HEAD, errors), so
    uvicorn closes the connection instead of waiting, deadline-free, for the rest of a trickled body."""

    async def closing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        drained = False

        async def receive_noting_end() -> Message:
            nonlocal drained
            message = await receive()
            drained = drained or (message["type"] == "http.request" and not message.get("more_body", False))
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not drained:
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive_noting_end, send_closing)

    return closing


def bridge_app(settings: Settings, api_url: str) -> Starlette:
    """The ASGI application taking notifications by POST (with `Authorization: Bearer <AESQ_BRIDGE_TOKEN>` when
    that is set) for the `s3://` sources of `settings`, sending its events to the Prefect API at `api_url`."""
    token = settings.bridge_token.get_secret_value() if settings.bridge_token else None
    bridge = Bridge(settings, api_url)

    def authorised(request: Request) -> bool:
        """True when no token is set or the request carries it (scheme in any case)."""
        if token is None:
            return True
        offered = bearer_token(request.headers.get("authorization", ""))
        return offered is not None and token_matches(offered, token)

    async def notify(request: Request) -> Response:
        """Queue the notification in the body; 400 for a body that is not one, 401 without the token, 408 for a
        body that does not arrive in time, 413 over the limits, 503 when the database or the Prefect API cannot
        take it (the sender keeps it and retries)."""
        if not authorised(request):
            return _refuse(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if token is None and not loopback_host(request.headers.get("host", "")):
            return _refuse(400, "without AESQ_BRIDGE_TOKEN the bridge answers only requests to a loopback Host")
        if request.method == "HEAD":
            return Response()  # MinIO checks that a webhook target is up with HEAD
        if not json_content(request):
            return _refuse(415, "a notification is sent with Content-Type: application/json")
        if not await bridge.prefect_answers():
            return _unavailable(f"the Prefect API at {bridge.api_url} does not answer: try again later")
        try:
            body = await read_body(request, settings.bridge_max_body_bytes, settings.bridge_read_timeout_seconds)
            created = await anyio.to_thread.run_sync(
                partial(parse_notification, body, settings.bridge_max_records), limiter=bridge.parse_limiter
            )
            del body  # the buffer goes before the database work
            counts = await bridge.accept(created)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except TimeoutError:
            return _refuse(408, f"the body did not arrive within {settings.bridge_read_timeout_seconds:g} s")
        except TooLarge as problem:
            return _refuse(413, str(problem))
        except NotANotification as problem:
            return _refuse(400, str(problem))
        except (sa.exc.SQLAlchemyError, DatabaseError) as problem:
            logger.warning("cannot queue notified objects: %s", problem)
            return _unavailable("the database cannot queue the objects now: try again later")
        return Response(json.dumps(counts), media_type="application/json")

    async def healthz(request: Request) -> Response:
        """For Kubernetes probes and load balancers, which send no token: 200 while both the database and the
        Prefect API answer (a notification is taken only then), else 503 naming which does not (never where)."""
        if not await anyio.to_thread.run_sync(answers, settings, limiter=bridge.database_limiter):
            return JSONResponse({"status": "database unreachable"}, 503)
        if not await bridge.prefect_answers():
            return JSONResponse({"status": "Prefect API unreachable"}, 503)
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Send the events still due when the server stops."""
        yield
        await bridge.flush()

    return Starlette(
        routes=[Route("/", notify, methods=["POST", "HEAD"]), Route("/healthz", healthz, methods=["GET"])],
        exception_handlers={404: _not_here, 405: _not_here},
        lifespan=lifespan,
    )


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with what it lacks: a connection whose request headers have not all arrived
    within `header_seconds` is closed, and connections beyond `max_connections` are answered 503 and closed."""

    header_seconds: float = 5.0
    max_connections: int = 64
    _header_deadline: asyncio.TimerHandle | None = None
    _over_cap = False  # answered 503 when it came: whatever it sends is discarded

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection's header deadline, or answer 503 and close it when the cap is reached."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)
            self._refuse_over_cap(transport)
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Keep the deadline while a request's headers are incomplete; drop it once they are in."""
        if self._over_cap:
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()
        elif self._header_deadline is None and self.conn.trailing_data[0]:
            self._arm()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (e.g. `Content-Length: -1`, two lengths, oversized headers) is answered in
        the bridge's error shape, then the connection is closed."""
        body = json.dumps({"detail": f"malformed HTTP/1.1 request: {MALFORMED}"}, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _refuse_over_cap(self, transport: asyncio.Transport) -> None:
        """Answer 503 with Retry-After before any request is read, end the sending side, and close the connection
        a moment later, discarding what the client sends meanwhile (closing with its request unread would reset
        the connection, and the client could lose the 503)."""
        detail = f"the bridge holds {self.max_connections} connections (AESQ_BRIDGE_MAX_CONNECTIONS): try again later"
        body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
        self._over_cap = True
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: %d\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (RETRY_AFTER_SECONDS, len(body), body)
        )
        transport.write_eof()
        self.loop.call_later(OVER_CAP_CLOSE_SECONDS, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline outlives its connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        """Close a connection whose request headers did not arrive in time."""
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def bridge_server(host: str, port: int, settings: Settings, api_url: str) -> uvicorn.Server:
    """A uvicorn server for the bridge's application on host:port, with its deadlines and connection cap."""
    protocol = type(
        "BridgeH11Protocol",
        (DeadlineH11Protocol,),
        {"header_seconds": settings.bridge_read_timeout_seconds, "max_connections": settings.bridge_max_connections},
    )
    config = uvicorn.Config(
        close_unless_drained(bridge_app(settings, api_url)),
        host=host,
        port=port,
        http=protocol,
        lifespan="on",
        limit_concurrency=settings.bridge_max_connections + 1,  # uvicorn counts the asking connection too
        timeout_keep_alive=max(1, round(settings.bridge_read_timeout_seconds)),
        timeout_graceful_shutdown=max(1, round(settings.bridge_read_timeout_seconds)),
        log_level="warning",
        access_log=False,
    )
    return uvicorn.Server(config)
