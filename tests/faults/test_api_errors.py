"""Client resilience: a real `aesq run` gets server errors and a stalled request from its Prefect API, or has its
database sessions ended under it, and still finishes the work."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from aesq.core.database import get_engine
from tests.faults.stack import (
    AESQ,
    contents_per_version,
    counted_per_version,
    end_process_group,
    generated_images,
    harness_environment,
    scored_count,
    upload,
    wait_until,
)
from tests.helpers import assert_every_content_scored_once, assert_statistics_match_rows, end_other_sessions

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# Calls whose failure ends a run: creating the flow run, reading it, and every change of its state.
RUN_CALL = re.compile(
    r"^(POST /api/flow_runs/|GET /api/flow_runs/[0-9a-f-]{36}|POST /api/flow_runs/[0-9a-f-]{36}/set_state)$"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "proxy-connection", "te"}
REQUEST_TIMEOUT = 5.0  # the subprocess's PREFECT_API_REQUEST_TIMEOUT, so a stalled request times out soon


class FlakyApi:
    """A loopback HTTP proxy in front of the Prefect API that fails requests as an overloaded or restarting API does.

    Each run call (RUN_CALL) is answered 500 or 504 at its first attempt and 503 or 502 at its second, and only
    its third reaches the API; so is every fourth other request (logs, CSRF token, version check) once. The first
    state change is held unanswered past the client's timeout instead, at its first attempt. Nothing refused
    reaches the API, so every retry is the first time the API sees the call. WebSockets (events) pass through.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.others = 0
        self.answered: list[tuple[str, int]] = []  # (call, status) of every refusal
        self.stalled: list[str] = []
        self.forwarded: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                proxy.handle(self)

            do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{parts.path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _verdict(self, call: str) -> int | str | None:
        """A status to answer with, "stall", or None to forward."""
        with self.lock:
            if RUN_CALL.match(call):
                attempt = self.attempts[call] = self.attempts.get(call, 0) + 1
                if call.endswith("/set_state") and not self.stalled:
                    self.stalled.append(call)
                    self.attempts[call] = 0
                    return "stall"
                step = attempt % 3
                if step == 0:
                    return None
                turn = attempt // 3
                return (500, 504)[turn % 2] if step == 1 else (503, 502)[turn % 2]
            self.others += 1
            if self.others % 4 == 0:
                return (500, 502, 503, 504)[self.others // 4 % 4]
            return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        call = f"{request.command} {path.split('?')[0]}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self._tunnel(request)
            return
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        verdict = self._verdict(call)
        if verdict == "stall":
            time.sleep(REQUEST_TIMEOUT + 1)  # the client gives up first; the API never sees this attempt
            request.close_connection = True
            return
        if verdict is not None:
            with self.lock:
                self.answered.append((call, verdict))
            payload = b'{"exception_message": "injected by the test proxy"}'
            request.send_response(verdict)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(request.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        with self.lock:
            self.forwarded.append(call)
        request.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def _tunnel(self, request: BaseHTTPRequestHandler) -> None:
        """Hand a WebSocket upgrade to the API unchanged and copy bytes both ways until either side ends."""
        upstream = socket.create_connection(self.upstream)
        head = f"{request.requestline}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
        upstream.sendall(head.encode("latin-1"))

        def back() -> None:
            try:
                while data := upstream.recv(65536):
                    request.connection.sendall(data)
            except OSError:
                pass
            request.connection.close()

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := request.rfile.read1(65536):
                upstream.sendall(data)
        except OSError:
            pass
        upstream.close()
        request.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_api() -> Iterator[FlakyApi]:
    """The proxy in front of the test harness's API."""
    proxy = FlakyApi(harness_environment()["PREFECT_API_URL"])
    yield proxy
    proxy.close()


def _aesq_run(source: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
    """`aesq run SOURCE` to its end with this environment, in its own process group."""
    process = subprocess.Popen(
        [AESQ, "run", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=400)
    finally:
        end_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _through(proxy: FlakyApi, **extra: str) -> dict[str, str]:
    """The harness environment with the API behind the proxy; no PREFECT_CLIENT_* of the user's."""
    environment = {
        **harness_environment(),
        "PREFECT_API_URL": proxy.url,
        "PREFECT_API_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
    }
    for name in ("PREFECT_CLIENT_MAX_RETRIES", "PREFECT_CLIENT_RETRY_EXTRA_CODES"):
        environment.pop(name, None)
    return {**environment, **extra}


def test_server_errors_and_a_stalled_request_from_the_api_are_retried_to_a_complete_run(
    flaky_api, fault_settings, source, s3_client, bucket
):
    objects = generated_images(versions=2, per_version=10, copies_per_version=2)
    upload(s3_client, bucket, objects)
    distinct = len(set(objects.values()))

    done = _aesq_run(source, _through(flaky_api))

    assert done.returncode == 0, done.stderr
    assert f"assets: duplicate {len(objects) - distinct}, scored {distinct}" in done.stdout, done.stdout
    refused_run_calls = {status for call, status in flaky_api.answered if RUN_CALL.match(call)}
    assert refused_run_calls == {500, 502, 503, 504}, flaky_api.answered  # each kind hit a call that ends a run
    assert any(call.endswith("/set_state") for call in flaky_api.stalled)
    assert sum(call.endswith("/set_state") for call in flaky_api.forwarded) >= 2  # Running, then Completed
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)


def test_the_users_own_client_retry_setting_wins(flaky_api, fault_settings, source, s3_client, bucket):
    """Where the user set PREFECT_CLIENT_RETRY_EXTRA_CODES, aesq leaves it: here without 500, so the run's first
    call fails on the proxy's 500 (which is also what the test above would see without aesq's settings)."""
    upload(s3_client, bucket, generated_images(versions=1, per_version=2, copies_per_version=0))

    done = _aesq_run(source, _through(flaky_api, PREFECT_CLIENT_RETRY_EXTRA_CODES="429"))

    assert done.returncode == 1
    assert "500" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert flaky_api.answered == [("POST /api/flow_runs/", 500)]


def test_a_run_whose_database_sessions_are_ended_reconnects_and_finishes(fault_settings, source, s3_client, bucket):
    objects = generated_images(versions=2, per_version=30, copies_per_version=3)
    upload(s3_client, bucket, objects)
    distinct = len(set(objects.values()))

    process = subprocess.Popen(
        [AESQ, "run", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=harness_environment(),
        start_new_session=True,
    )
    ended = []
    try:

        def scoring_under_way() -> bool:
            """some assets are scored, most not yet"""
            return 4 <= scored_count(fault_settings) < distinct // 2

        wait_until(scoring_under_way, 180, process)
        for _ in range(4):  # again and again while batches are in flight: idle pooled and busy connections alike
            ended.append(end_other_sessions(get_engine(fault_settings).url.render_as_string(hide_password=False)))
            time.sleep(0.7)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        end_process_group(process)
    assert ended[0] >= 1 and sum(ended) >= 4, ended  # the run's sessions were there to end
    assert process.returncode == 0, stderr
    assert f"assets: duplicate {len(objects) - distinct}, scored {distinct}" in stdout, stdout
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)
