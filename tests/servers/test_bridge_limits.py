"""The bridge on its real server bounds what a client can hold (slow requests dropped, trickled bodies after an
answer too, connections capped with a 503, bodies and record counts limited, memory bounded), refuses what a web
page could send it, checks a whole body before queueing any of it, queues a retried body once, answers 503 while
the Prefect API is away and sends the events due once it is back, and `aesq bridge` refuses to start without a
Prefect API that answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import psutil
import pytest
import sqlalchemy as sa
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from aesq.core.config import Settings
from aesq.core.database import get_engine
from tests.helpers import AESQ, bridge_settings, bucket_events, free_port, post, serving_bridge

pytestmark = pytest.mark.slow


def notification(bucket: str, *keys: str, etag: str = "e1") -> dict:
    """An S3 event notification of objects created in the bucket."""
    return {
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": urllib.parse.quote_plus(key), "eTag": etag}},
            }
            for key in keys
        ]
    }


def queue_rows(settings: Settings, bucket: str) -> list[tuple[str, str | None]]:
    """(key, etag) of every row of the bucket in the ingest queue."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(
            sa.text("SELECT key, etag FROM ingest_queue WHERE bucket = :bucket ORDER BY key"), {"bucket": bucket}
        ).all()
    return [(row.key, row.etag) for row in rows]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def connect(url: str) -> socket.socket:
    """A raw TCP connection to the bridge, reads timing out after 30 s."""
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    return connection


def answer(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


JSON_HEAD = "Host: 127.0.0.1\r\nContent-Type: application/json\r\n"


def raw_post(url: str, head: str, body: bytes = b"") -> bytes:
    """Send a hand-made JSON request (its head's lines, then `body`) and return the server's whole answer."""
    with connect(url) as connection:
        connection.sendall(f"POST / HTTP/1.1\r\n{JSON_HEAD}{head}\r\n".encode() + body)
        return answer(connection)


def closed_while_trickling(connection: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Read the answer to a request whose body is still due, then send that body a byte at a time for up to
    `seconds`; (the answer, whether the server closed the connection meanwhile)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    connection.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
            if not chunk:
                return received, True
            received += chunk
        except TimeoutError:
            pass
        except ConnectionError:
            return received, True
        try:
            connection.sendall(b"x")
        except ConnectionError:
            return received, True
    return received, False


@pytest.fixture
def limited(settings: Settings, bucket: str) -> Settings:
    """Bridge settings with small limits and a one-second read deadline."""
    return bridge_settings(
        settings,
        bucket,
        bridge_read_timeout_seconds=1.0,
        bridge_max_body_bytes=4096,
        bridge_max_records=3,
        bridge_max_connections=20,
        notification_window_seconds=0.5,
    )


def test_slow_headers_and_bodies_are_dropped(prefect_harness, limited, bucket):
    with serving_bridge(limited) as url:
        with connect(url) as silent, connect(url) as half_head, connect(url) as half_body:
            half_head.sendall(b"POST / HTTP/1.1\r\nHost: bridge\r\nContent-Le")
            half_body.sendall(f'POST / HTTP/1.1\r\n{JSON_HEAD}Content-Length: 100\r\n\r\n{{"Records"'.encode())
            # each read ends with the server closing the connection, long before the 30 s socket timeout
            assert answer(silent) == b""
            assert answer(half_head) == b""
            late = answer(half_body)
        assert late.startswith(b"HTTP/1.1 408 ") and b'"detail":"the body did not arrive within 1 s"' in late
        assert post(url, json.dumps(notification(bucket, "a.jpg")).encode()) == (200, '{"objects": 1, "ignored": 0}')


def test_connections_are_capped_without_a_thread_each(prefect_harness, limited, bucket):
    this = psutil.Process()
    with serving_bridge(limited) as url:
        port = urllib.parse.urlsplit(url).port
        threads = this.num_threads()
        with ExitStack() as stack:
            idle = [stack.enter_context(connect(url)) for _ in range(300)]
            time.sleep(0.5)
            held = [c for c in this.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"]
            assert len(held) <= limited.bridge_max_connections
            assert this.num_threads() - threads < 10
            answers = [answer(connection) for connection in idle]  # every one closed in the end
            refused = [received for received in answers if received]
            assert refused
            assert all(received == refused[0] for received in refused)
            assert (
                refused[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"retry-after: 5\r\n" in refused[0]
            )
            assert refused[0].endswith(
                b'"the bridge holds 20 connections (AESQ_BRIDGE_MAX_CONNECTIONS): try again later"}'
            )
            assert answers.count(b"") >= limited.bridge_max_connections
        held = [c for c in this.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"]
        assert held == []
        assert post(url, json.dumps(notification(bucket, "a.jpg")).encode()) == (200, '{"objects": 1, "ignored": 0}')


@pytest.mark.parametrize(
    ("request_line", "status"),
    [("POST /other", b"404 Not Found"), ("GET /", b"405 Method Not Allowed"), ("HEAD /", b"200 OK")],
)
def test_a_body_trickled_after_an_answer_does_not_hold_the_connection(
    prefect_harness, limited, bucket, request_line, status
):
    with serving_bridge(limited) as url, connect(url) as connection:
        connection.sendall(f"{request_line} HTTP/1.1\r\n{JSON_HEAD}Content-Length: 100000\r\n\r\n".encode())
        received, closed = closed_while_trickling(connection, seconds=8)  # the read deadline is 1 s
        assert received.startswith(b"HTTP/1.1 " + status) and b"connection: close\r\n" in received
        assert closed
        if request_line != "HEAD /":
            assert b'{"detail":"' + request_line.encode() + b": " in received


def test_connections_beyond_the_cap_are_answered_503_and_the_cap_holds_after_answers(prefect_harness, limited, bucket):
    body = json.dumps(notification(bucket, "a.jpg")).encode()
    trickle = f"POST /x HTTP/1.1\r\n{JSON_HEAD}Content-Length: 100000\r\n\r\n".encode()
    with serving_bridge(limited) as url, ExitStack() as stack:
        trickling = [stack.enter_context(connect(url)) for _ in range(limited.bridge_max_connections)]
        for connection in trickling:
            connection.sendall(trickle)
        time.sleep(0.5)
        # each 404 closed its connection: a real notification finds room
        assert post(url, body) == (200, '{"objects": 1, "ignored": 0}')
        idle = [stack.enter_context(connect(url)) for _ in range(limited.bridge_max_connections)]
        time.sleep(0.2)
        with connect(url) as late:
            late.sendall(f"POST / HTTP/1.1\r\n{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            refused = answer(late)  # the whole 503, then the server closes without a reset
        assert refused.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5\r\n" in refused
        assert b"AESQ_BRIDGE_MAX_CONNECTIONS" in refused
        assert all(answer(connection) == b"" for connection in idle)  # dropped by the header deadline
        assert post(url, body) == (200, '{"objects": 0, "ignored": 1}')


def test_framing_and_limits_are_refused_without_reading_the_body(prefect_harness, limited, bucket):
    with serving_bridge(limited) as url:
        negative = raw_post(url, "Content-Length: -1\r\n")
        assert negative.startswith(b"HTTP/1.1 400 ") and b'{"detail":"malformed HTTP/1.1 request: ' in negative
        huge = raw_post(url, "Content-Length: 8000000000\r\n")  # and nothing of it sent: the answer comes anyway
        assert huge.startswith(b"HTTP/1.1 413 ") and b"a body of 8000000000 bytes: at most 4096" in huge
        chunk = b"x" * 3000
        chunked = raw_post(url, "Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)
        assert chunked.startswith(b"HTTP/1.1 413 ") and b"a body over 4096 bytes" in chunked
        many = json.dumps(notification(bucket, "1.jpg", "2.jpg", "3.jpg", "4.jpg")).encode()
        assert post(url, many) == (
            413,
            '{"detail":"4 records in one notification: at most 3 (AESQ_BRIDGE_MAX_RECORDS)"}',
        )
    assert queue_rows(limited, bucket) == []


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "not an S3 event notification: JSON nested too deeply"),
        (json.dumps(notification("any", "k" * 1025)["Records"][0]), "record 1 has an object key over S3's 1024 bytes"),
        ('{"eventName": "s3:ObjectCreated:Put", "s3": {}}', "record 1 (s3:ObjectCreated:Put) has no s3.bucket.name"),
        ('"a string"', "record 1 is not a JSON object"),
    ],
)
def test_a_body_with_one_bad_record_queues_nothing(prefect_harness, settings, bucket, tail, reason):
    first = json.dumps(notification(bucket, "good.jpg")["Records"][0])
    body = f'{{"Records": [{first}, {tail}]}}'.encode()
    with serving_bridge(bridge_settings(settings, bucket, bridge_max_body_bytes=1 << 20)) as url:
        status, detail = post(url, body)
        assert queue_rows(settings, bucket) == []
        assert post(url, b"[]") == (400, '{"detail":"not an S3 event notification: the body is not a JSON object"}')
    assert status == 400 and json.loads(detail)["detail"].startswith(reason), detail


def test_a_retried_body_queues_and_announces_its_objects_once(prefect_harness, settings, bucket):
    body = json.dumps(notification(bucket, "a.jpg", "b.jpg")).encode()
    with serving_bridge(bridge_settings(settings, bucket, notification_window_seconds=0.5)) as url:
        assert post(url, body) == (200, '{"objects": 2, "ignored": 0}')
        wait_for(lambda: bucket_events(bucket), "the first event")
        assert post(url, body) == (200, '{"objects": 0, "ignored": 2}')  # the sender did not see the answer
        time.sleep(2)
    assert queue_rows(settings, bucket) == [("a.jpg", "e1"), ("b.jpg", "e1")]
    assert bucket_events(bucket) == [{"objects": 2}]


@contextmanager
def switchable_proxy(target: str) -> Iterator[tuple[int, Callable[[bool], None]]]:
    """A TCP proxy on loopback to `target` (host:port); yields its port and `switch(up)`: down, it refuses
    connections and cuts the ones it carries."""
    host, _, target_port = target.rpartition(":")
    port = free_port()
    state: dict[str, object] = {"listener": None, "pipes": []}

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def accept(listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, int(target_port)))
            state["pipes"].append((client, upstream))  # type: ignore[union-attr]
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    def switch(up: bool) -> None:
        if up:
            listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
            state["listener"] = listener
            threading.Thread(target=accept, args=(listener,), daemon=True).start()
            return
        listener = state["listener"]
        assert isinstance(listener, socket.socket)
        listener.close()
        for ends in state["pipes"]:  # type: ignore[attr-defined]
            for end in ends:
                end.close()
        state["pipes"] = []

    try:
        yield port, switch
    finally:
        if state["listener"] is not None:
            switch(False)


def test_prefect_api_down_answers_503_and_sends_the_events_due_once_it_is_back(prefect_harness, settings, bucket):
    api = urllib.parse.urlsplit(PREFECT_API_URL.value())
    with switchable_proxy(api.netloc) as (port, switch):
        bridged = bridge_settings(settings, bucket, notification_window_seconds=0.5)
        with serving_bridge(bridged, f"http://127.0.0.1:{port}{api.path}") as url:
            first = json.dumps(notification(bucket, "first.jpg")).encode()
            status, detail = post(url, first)
            assert status == 503 and "does not answer: try again later" in detail
            assert queue_rows(settings, bucket) == []  # the sender keeps it
            switch(True)
            time.sleep(2)  # past the cached health answer
            assert post(url, first) == (200, '{"objects": 1, "ignored": 0}')  # the sender's retry
            wait_for(lambda: bucket_events(bucket) == [{"objects": 1}], "the first event")
            # queued while the API answers, then the API goes before the event is sent: it is sent once back
            assert post(url, json.dumps(notification(bucket, "second.jpg")).encode()) == (
                200,
                '{"objects": 1, "ignored": 0}',
            )
            switch(False)
            time.sleep(3)  # the event's first tries fail
            assert bucket_events(bucket) == [{"objects": 1}]
            switch(True)
            wait_for(lambda: bucket_events(bucket) == [{"objects": 1}, {"objects": 1}], "the event sent once back")
    assert queue_rows(settings, bucket) == [("first.jpg", "e1"), ("second.jpg", "e1")]


def test_aesq_bridge_refuses_to_start_without_a_prefect_api_that_answers(settings, tmp_path):
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("PREFECT_API")},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # no profile naming an API
        "AESQ_SOURCES": "s3://notified/",
    }
    down = f"http://127.0.0.1:{free_port()}/api"
    for extra, expected in [
        ({"PREFECT_API_URL": down}, f"the Prefect API at {down} (PREFECT_API_URL) does not answer"),
        ({}, "no Prefect API to send events to: set PREFECT_API_URL to the Prefect API your `aesq worker` uses"),
    ]:
        refused = subprocess.run(
            [AESQ, "bridge", "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**environment, **extra},
        )
        assert refused.returncode == 1, refused
        [line] = refused.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith(f"aesq: error: {expected}"), line
    assert not (settings.data_dir / "prefect" / "server.json").exists()  # no local server started


def test_a_body_from_a_web_page_is_refused(prefect_harness, settings, bucket):
    body = json.dumps(notification(bucket, "a.jpg")).encode()
    with serving_bridge(bridge_settings(settings, bucket)) as url:
        port = urllib.parse.urlsplit(url).port
        # a cross-site "simple" request cannot set Content-Type: application/json
        simple = httpx.post(url, content=body, headers={"Content-Type": "text/plain"})
        assert (simple.status_code, simple.json()) == (
            415,
            {"detail": "a notification is sent with Content-Type: application/json"},
        )
        # DNS rebinding: the page's own host name resolved to loopback
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example"):
            rebound = httpx.post(url, content=body, headers={"Content-Type": "application/json", "Host": host})
            assert (rebound.status_code, rebound.json()) == (
                400,
                {"detail": "without AESQ_BRIDGE_TOKEN the bridge answers only requests to a loopback Host"},
            ), host
        assert queue_rows(settings, bucket) == []
        for host in (f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", f"127.0.0.2:{port}"):
            sent = httpx.post(
                url, content=body, headers={"Content-Type": "application/json; charset=utf-8", "Host": host}
            )
            assert sent.status_code == 200, (host, sent.text)
    with serving_bridge(bridge_settings(settings, bucket, bridge_token=SecretStr("secret"))) as url:
        # with a token the sender may name the bridge as it likes (MinIO on another machine)
        named = {"Content-Type": "application/json", "Host": "bridge.internal:8787", "Authorization": "Bearer secret"}
        assert httpx.post(url, content=body, headers=named).status_code == 200
    assert queue_rows(settings, bucket) == [("a.jpg", "e1")]


def test_memory_stays_bounded_under_bodies_that_parse_large(prefect_harness, settings, bucket):
    """Bodies of the largest size the defaults allow, of tiny JSON values (~25 times their size parsed), all at
    once: the server's memory grows by a fraction of what parsing them together would take."""
    this = psutil.Process()  # the bridge serves in this process
    bridged = bridge_settings(settings, bucket)
    values = (bridged.bridge_max_body_bytes - len('{"x":[]}')) // 3
    body = ("{" + '"x":[' + "{}," * (values - 1) + "{}]}").encode()
    assert len(body) <= bridged.bridge_max_body_bytes
    senders = 24
    with serving_bridge(bridged) as url:
        assert post(url, body)[0] == 400  # warmed up: one parse's garbage is reusable
        start = this.memory_info().rss
        peak = [start]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], this.memory_info().rss)
                time.sleep(0.01)

        answers: list[tuple[int, str]] = []
        watcher = threading.Thread(target=watch)
        threads = [threading.Thread(target=lambda: answers.append(post(url, body))) for _ in range(senders)]
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        watcher.join()
    assert answers == [(400, '{"detail":"not an S3 event notification: no Records list"}')] * senders
    parsed_all_at_once = senders * 25 * len(body)
    assert peak[0] - start < parsed_all_at_once / 4, (peak[0] - start) >> 20
