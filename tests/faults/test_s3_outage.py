"""The object store going away under a run: an outage shorter than the tasks' retries is ridden out; a longer
one ends the run with one line naming the cause, and the next run finishes the work."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from aesq.core.config import get_settings
from aesq.flows.spine import run_flow
from tests.faults.stack import (
    aesq_run,
    contents_per_version,
    counted_per_version,
    generated_images,
    scored_count,
    upload,
)
from tests.helpers import assert_every_content_scored_once, assert_statistics_match_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset, as the host of a crashed or restarting server does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


class OutageProxy:
    """A loopback TCP proxy in front of the S3 server. Armed with `go_down_on`, it goes down when a request
    containing one of the markers arrives: that request, every open connection and every new one are reset until the
    outage ends (after `seconds`, or never)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.markers: list[bytes] = []
        self.seconds: float | None = None
        self.down = False
        self.outages = 0
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def go_down_on(self, markers: list[bytes], seconds: float | None) -> None:
        """Arm the outage."""
        self.markers, self.seconds = markers, seconds

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                if self.down:
                    _reset(client)
                    continue
                server = socket.create_connection(self.upstream)
                self.connections |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        """Copy one direction until either side ends (or, for requests, the outage begins), then end both."""
        try:
            while data := source.recv(65536):
                if requests and any(marker in data for marker in self.markers):
                    self._start_outage()
                    return
                target.sendall(data)
        except OSError:
            pass
        self._drop(source, target)

    def _drop(self, *connections: socket.socket) -> None:
        with self.lock:
            for connection in connections:
                if connection in self.connections:
                    self.connections.discard(connection)
                    _reset(connection)

    def _start_outage(self) -> None:
        with self.lock:
            if not self.markers:  # another request started it
                return
            self.markers, self.down, self.outages = [], True, self.outages + 1
            for connection in self.connections:
                _reset(connection)
            self.connections.clear()
            if self.seconds is not None:
                threading.Timer(self.seconds, self.end_outage).start()

    def end_outage(self) -> None:
        """Forward connections again."""
        with self.lock:
            self.down = False

    def close(self) -> None:
        """Stop listening and end the open connections."""
        self.listener.close()
        with self.lock:
            open_now = list(self.connections)
        self._drop(*open_now)


@pytest.fixture
def proxy(s3_endpoint, monkeypatch) -> Iterator[OutageProxy]:
    """The proxy, and aesq pointed at it."""
    proxy = OutageProxy(s3_endpoint)
    monkeypatch.setenv("AESQ_S3_ENDPOINT", proxy.endpoint)
    get_settings.cache_clear()
    yield proxy
    proxy.close()


def test_an_outage_shorter_than_the_retries_is_ridden_out(fault_settings, source, s3_client, bucket, proxy):
    objects = generated_images(versions=2, per_version=30, copies_per_version=3)
    upload(s3_client, bucket, objects)
    # Down from the first object read, for longer than the S3 client's own retries (about 6 s): the first
    # batches fail whole and the tasks' retries must carry them.
    proxy.go_down_on([f"GET /{bucket}/generated/".encode()], seconds=12)

    run = aesq_run(source)
    assert proxy.outages == 1
    assert run.returncode == 0, run.stderr
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)


def test_an_outage_longer_than_the_retries_ends_the_run_with_its_cause_and_the_next_run_finishes(
    fault_settings, source, s3_client, bucket, proxy, monkeypatch
):
    monkeypatch.setenv("AESQ_BATCH_SIZE", "16")  # the first four batches are read at once, the fifth after them
    get_settings.cache_clear()
    objects = generated_images(versions=2, per_version=30, copies_per_version=3)
    upload(s3_client, bucket, objects)
    last_batch = sorted(objects)[64:]  # the listing's order
    # Down for good once the run asks for an object of its last batch: earlier batches are scored meanwhile.
    proxy.go_down_on([f"GET /{bucket}/{key} ".encode() for key in last_batch], seconds=None)

    failed = aesq_run(source)
    proxy.end_outage()
    assert proxy.outages == 1
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    # The error is the one line on stderr and names the cause: the S3 client's (urllib3's) retry warnings stay off it.
    [error] = failed.stderr.strip().splitlines()
    assert error.startswith(
        f"aesq: error: StorageUnavailable: cannot read {len(last_batch)} objects of s3://{bucket}/: "
    )
    assert "Connection reset by peer" in error, error
    assert "UnfinishedRun" not in failed.stderr and "Traceback" not in failed.stderr
    assert scored_count(fault_settings) > 0, "what was scored before the outage is kept"

    run_flow(source)
    assert_every_content_scored_once(fault_settings, objects)
    assert_statistics_match_rows(fault_settings)
    assert counted_per_version(fault_settings) == contents_per_version(objects)
