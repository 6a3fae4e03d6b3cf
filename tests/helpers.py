"""Small builders of real test images and objects (generated in the tests, never committed)."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import uvicorn
import yaml
from minio import Minio
from PIL import Image
from skimage import data as skdata

if TYPE_CHECKING:
    from http.server import HTTPServer

    import torch
    from transformers import CLIPVisionConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast

    from aesq.analysis.report import ReportData, Thumbnail
    from aesq.core.config import Settings


def photo(name: str) -> Image.Image:
    """A real photograph bundled with scikit-image, as RGB."""
    pixels = getattr(skdata, name)()
    return Image.fromarray(pixels).convert("RGB")


def transparent_sticker() -> Image.Image:
    """A photograph whose left half is made fully transparent by its alpha channel alone, the photograph's colours
    still stored under it (as a mask applied in an editor leaves them): where compositing and a plain RGB
    conversion disagree most."""
    image = photo("chelsea").convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, image.width // 2, image.height))
    image.putalpha(alpha)
    return image


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def put(client: Minio, bucket: str, key: str, payload: bytes, metadata: dict[str, str] | None = None) -> None:
    """Upload bytes as an object."""
    client.put_object(bucket, key, io.BytesIO(payload), len(payload), metadata=metadata)


def noise_image(seed: int, size: int = 64) -> Image.Image:
    """A small random RGB image, distinct per seed."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def ingest_all(source: str, settings) -> list[int]:
    """Discover `source`, then ingest its queued objects batch by batch; the ids waiting for scores."""
    from aesq.core import discovery, ingest

    discovery.discover(source, settings)
    waiting = []
    while claimed := ingest.claim_batch(source, settings):
        waiting += ingest.ingest(source, claimed, settings)
    return waiting


def score_all(settings) -> None:
    """Claim and score batches until none is due (pending, then backfill), then give back what could not be
    finished (as a run does)."""
    from aesq.core import scoring

    unfinished, backfill_after = [], 0
    while batch := scoring.claim_batch(settings) or scoring.claim_backfill(settings, backfill_after):
        backfill_after = max(backfill_after, *batch)
        unfinished += scoring.score_assets(batch, settings).unfinished
    scoring.release(unfinished, settings)


def run_once(source: str, settings) -> None:
    """Discover, ingest, score what is due and aggregate, with the plain functions the flows call."""
    from aesq.analysis import aggregate

    ingest_all(source, settings)
    score_all(settings)
    aggregate.aggregate_versions(settings)


def technical_score(payload: bytes) -> float:
    """What the technical scorer gives these bytes, decoded as the pipeline decodes them."""
    from aesq.core.images import decode_image, pixel_budget
    from aesq.models.technical import TechnicalQualityScorer

    return TechnicalQualityScorer().score([decode_image(payload, 64_000_000, pixel_budget(64_000_000))])[0].value


def assert_every_content_scored_once(settings, objects: dict[str, bytes], failed: Collection[str] = ()) -> None:
    """The identity model's promise over `objects` (key → bytes now in the source): each distinct content
    has exactly one scored canonical asset carrying its own bytes' score, its other locations are
    duplicates pointing at it, nothing else holds live scores, and no asset outside `objects` counts
    but the keys `failed`: objects present that are not usable images, failed with a reason."""
    import hashlib

    import sqlalchemy as sa

    from aesq.core.database import get_engine

    with get_engine(settings).connect() as connection:
        assets = {row.key: row for row in connection.execute(sa.text("SELECT * FROM assets"))}
        scores = connection.execute(sa.text("SELECT asset_id, value FROM scores WHERE scorer = 'technical'")).all()
    live = {key: row for key, row in assets.items() if row.status != "deleted"}
    assert set(live) == set(objects) | set(failed), "every object present is an asset, and only those are live"
    for key in failed:
        assert live[key].status == "failed" and live[key].error, f"{key}: {live[key].status}, {live[key].error!r}"
    by_content: dict[str, list[str]] = {}
    for key, payload in objects.items():
        by_content.setdefault(hashlib.sha256(payload).hexdigest(), []).append(key)
    score_of = dict(scores)
    assert len(score_of) == len(scores), "one technical score per asset"
    canonical_ids = set()
    for sha, keys in by_content.items():
        assert {live[key].sha256 for key in keys} == {sha}
        canonical = [live[key] for key in keys if live[key].status == "scored"]
        assert len(canonical) == 1, f"content at {keys} has {len(canonical)} scored assets"
        canonical_ids.add(canonical[0].id)
        for key in keys:
            if live[key].id != canonical[0].id:
                assert (live[key].status, live[key].duplicate_of) == ("duplicate", canonical[0].id), key
        assert abs(score_of[canonical[0].id] - technical_score(objects[keys[0]])) < 1e-9, f"{keys}: not its own score"
        assert canonical[0].scored_at is not None
    assert set(score_of) == canonical_ids, "scores only on the canonical assets of present contents"


def assert_statistics_match_rows(settings) -> None:
    """Every stored per-version figure equals a recomputation from the score rows of scored assets."""
    import sqlalchemy as sa

    from aesq.core.database import get_engine

    recompute = sa.text(
        """
        SELECT a.generator_id, ls.scorer, count(*) AS count, avg(ls.value) AS mean
        FROM latest_scores ls JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        WHERE a.generator_id IS NOT NULL GROUP BY 1, 2
        """
    )
    daily = sa.text(
        """
        SELECT a.generator_id, ls.scorer, (a.scored_at AT TIME ZONE 'UTC')::date AS day, count(*) AS count
        FROM latest_scores ls JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        WHERE a.generator_id IS NOT NULL GROUP BY 1, 2, 3
        """
    )
    with get_engine(settings).connect() as connection:
        expected = {(r.generator_id, r.scorer): (r.count, r.mean) for r in connection.execute(recompute)}
        stored = {
            (r.generator_id, r.scorer): (r.count, r.mean)
            for r in connection.execute(sa.text("SELECT generator_id, scorer, count, mean FROM version_stats"))
        }
        expected_days = {(r.generator_id, r.scorer, r.day): r.count for r in connection.execute(daily)}
        stored_days = {
            (r.generator_id, r.scorer, r.day): r.count
            for r in connection.execute(sa.text("SELECT generator_id, scorer, day, count FROM version_daily_stats"))
        }
    assert set(stored) == set(expected)
    for group, (count, mean) in expected.items():
        assert stored[group][0] == count and abs(stored[group][1] - mean) < 1e-9, group
    assert stored_days == expected_days


def end_other_sessions(url: str) -> int:
    """End every other session on the database at `url`, as a failover or an administrator's kill does;
    returns how many."""
    import sqlalchemy as sa

    with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as admin:
        ended = admin.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        admin.commit()
    return ended


def sidecar_for(key: str, listed: Collection[str]) -> str | None:
    """The sidecar of `key` among the listed keys, by the rule ingest follows: `a/b.png.json`, else `a/b.json`."""
    from aesq.core.storage import sidecar_candidates

    return next((candidate for candidate in sidecar_candidates(key) if candidate in listed), None)


def seed_demo(settings) -> Path:
    """Build the demo sample (plus two images of a second generator) under the data folder, ingest, score,
    aggregate and analyse it with the plain functions the flows call; returns the sample folder."""
    from aesq.analysis import aggregate, defect_analysis
    from aesq.cli.demo import build_sample
    from aesq.core import scoring

    folder = settings.data_dir / "demo"
    build_sample(folder)
    for index in range(2):
        other = folder / "generated" / "other-model" / "v1" / f"noise-{index}.jpg"
        other.parent.mkdir(parents=True, exist_ok=True)
        noise_image(index, 160).save(other, "JPEG")
    ids = ingest_all(str(folder), settings)
    scoring.score_assets(ids, settings)
    aggregate.aggregate_versions(settings)
    for batch in defect_analysis.low_scorer_batches(settings):
        defect_analysis.analyse_assets(batch, settings)
    return folder


def tiff_whose_second_page_has_no_width() -> bytes:
    """A 2-page TIFF whose second page lacks the ImageWidth tag (renamed to an unknown tag): the reported
    poison file, on which Pillow raises TypeError when counting its frames."""
    import struct

    buffer = io.BytesIO()
    pages = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for entry in range(struct.unpack_from("<H", data, second)[0]):
        offset = second + 2 + 12 * entry
        if struct.unpack_from("<H", data, offset)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, offset, 65000)
    return bytes(data)


# --- the loopback S3 server, the Prefect API and served deployments (shared by flow and server tests) ---

S3_ACCESS_KEY, S3_SECRET_KEY = "testing", "testing-secret"
AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))
CHAIN = ("aesq-ingest/ingest-0", "aesq-score/score", "aesq-after-scoring/after-scoring", "aesq-report/nightly")


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def web_service(status: int, content_type: str, body: bytes) -> Iterator[str]:
    """A loopback HTTP server that answers every request as a web service (not S3) does; yields its host:port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_PUT = do_POST = do_GET

        def log_message(self, *args: object) -> None:
            """Quiet: the test reads what the client makes of the answer."""

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Answer)) as url:
        yield url.removeprefix("http://").rstrip("/")


def clear_prefect_api() -> None:
    """Delete every deployment, automation and flow run, so served names and triggers start fresh."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            client.delete_automation(automation.id)
        for deployment in client.read_deployments():
            client.delete_deployment(deployment.id)
        for run in client.read_flow_runs():
            client.delete_flow_run(run.id)


def flow_runs() -> list[tuple[str, str]]:
    """(flow name, state) of every flow run of this test."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {flow.id: flow.name for flow in client.read_flows()}
        return [(names[run.flow_id], run.state.type.value) for run in client.read_flow_runs()]


def deployment_exists(name: str) -> bool:
    """Whether the Prefect API knows the deployment `flow/deployment`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
        return True


class ServedChain:
    """A running `aesq worker` (the flows' deployments) and a way to wait on what it does."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = 240) -> None:
        """Poll `condition` until it holds; fail with the worker's log otherwise."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()}")
            if condition():
                return
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}: {self.log.read_text()[-3000:]}")


# --- the bridge: bucket notifications from the S3 server, POSTed to a bridge served in a thread ---


def subscribe(s3_endpoint: str, bucket: str) -> Callable[..., list[dict]]:
    """Make the bucket notify an SQS queue on the S3 server of created objects; returns `receive(count, each)`,
    which waits for `count` notifications and returns their bodies, as the S3 server sent them (handing each
    to `each` as it comes)."""
    import boto3

    session = {
        "endpoint_url": f"http://{s3_endpoint}",
        "region_name": "us-east-1",
        "aws_access_key_id": S3_ACCESS_KEY,
        "aws_secret_access_key": S3_SECRET_KEY,
    }
    sqs = boto3.client("sqs", **session)
    queue = sqs.create_queue(QueueName=f"q-{bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("s3", **session).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )

    def receive(count: int, each: Callable[[dict], object] = lambda body: None) -> list[dict]:
        bodies: list[dict] = []
        deadline = time.monotonic() + 60
        while len(bodies) < count and time.monotonic() < deadline:
            for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            ):
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                body = json.loads(message["Body"])
                if body.get("Records"):
                    bodies.append(body)
                    each(body)
        assert len(bodies) == count, f"the S3 server sent {len(bodies)} of {count} notifications"
        return bodies

    return receive


def post(url: str, body: bytes, token: str | None = None) -> tuple[int, str]:
    """POST to the bridge; (status, body)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextmanager
def serving(server: HTTPServer) -> Iterator[str]:
    """Serve an HTTP server (the bridge, a stand-in) on loopback in a thread; yields its URL."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serving_in_thread(server: uvicorn.Server, join_seconds: float = 10) -> Iterator[str]:
    """A uvicorn server (the dashboard's or the bridge's) run in a thread of this process; yields its base URL."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://{server.config.host}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(join_seconds)


@contextmanager
def serving_bridge(settings: Settings, api_url: str | None = None) -> Iterator[str]:
    """Serve the bridge on a free loopback port in a thread (its events to `api_url`, by default the test's
    Prefect API); yields its URL. Leaving stops it as a signal would: the events still due are sent."""
    from prefect.settings import PREFECT_API_URL

    from aesq.servers.bridge import bridge_server

    port = free_port()
    server = bridge_server("127.0.0.1", port, settings, api_url or str(PREFECT_API_URL.value()))
    with serving_in_thread(server, join_seconds=60) as base:
        yield base + "/"


def bridge_settings(settings: Settings, bucket: str, prefix: str = "", **changes: object) -> Settings:
    """The test settings with the bucket as the only source."""
    return settings.model_copy(update={"sources": [f"s3://{bucket}/{prefix}"], **changes})


def bucket_events(bucket: str) -> list[dict]:
    """Payloads of the bridge's events for the bucket, as the Prefect API stored them, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from aesq.flows.events import OBJECT_CREATED, bucket_resource

    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                event=EventNameFilter(name=[OBJECT_CREATED]), resource=EventResourceFilter(id=[bucket_resource(bucket)])
            ),
            limit=50,
        )
    return [event.payload for event in sorted(page.events, key=lambda event: event.occurred)]


# The example data of docs/sql.md's queries (tests/docs/test_sql.py checks them on it; tests/test_grafana.py runs
# the dashboard's panels on it).


class SqlExampleAsset(NamedTuple):
    """One seeded asset; `technical` is its latest score (None: unscored), `days_ago` when scored or created."""

    id: int
    generator_id: int | None
    prompt: str | None
    seed: int | None
    technical: float | None
    days_ago: float
    status: str = "scored"
    error: str | None = None


SQL_GENERATORS = {1: ("sdxl", "1.0", "base", None), 2: ("sdxl", "1.1", "lora", 1)}
SQL_VERSION = {gid: version for gid, (_, version, _, _) in SQL_GENERATORS.items()}
SQL_ASSETS = [
    SqlExampleAsset(1, 1, "a cat", 1, 4.0, 10),
    SqlExampleAsset(2, 1, "a cat", 2, 6.0, 10),
    SqlExampleAsset(3, 1, "a dog", 1, 3.0, 9),
    SqlExampleAsset(4, 1, "a dog", 2, 7.0, 2),
    SqlExampleAsset(5, 1, "a house", 1, 2.0, 2),
    SqlExampleAsset(6, 1, "a house", 2, 5.0, 1),
    SqlExampleAsset(7, 2, "a cat", 1, 5.0, 12),
    SqlExampleAsset(8, 2, "a cat", 2, 6.5, 8),
    SqlExampleAsset(9, 2, "a dog", 1, 8.0, 2),
    SqlExampleAsset(10, 2, "a dog", 2, 6.0, 2),
    SqlExampleAsset(11, 2, "a house", 1, 1.0, 1),
    SqlExampleAsset(12, 2, "a house", 3, 9.0, 1),
    SqlExampleAsset(13, None, None, None, 7.5, 1),
    SqlExampleAsset(14, 2, "a tree", 1, None, 3, "failed", "cannot identify image file"),
    SqlExampleAsset(15, None, None, None, None, 2, "failed", "truncated image: 812 of 4096 bytes"),
    SqlExampleAsset(16, 1, "a tree", 1, None, 0.5, "pending"),
    SqlExampleAsset(17, 2, "a tree", 2, 4.0, 9),
    SqlExampleAsset(18, 1, "a tree", 2, 4.0, 11),
    SqlExampleAsset(19, 1, "a cat", 1, None, 10, "duplicate"),
]
SQL_SCORED = [asset for asset in SQL_ASSETS if asset.status == "scored"]
SQL_STALE_TECHNICAL = {1: 9.5}  # an older scorer version's value: latest_scores must hide it
SQL_LAION = {1: 5.0, 2: 6.0, 3: 4.0, 4: 7.5}
SQL_DEFECTS = {
    (1, "blur"): 0.4,
    (5, "blur"): 0.7,
    (6, "blur"): 0.5,
    (7, "blur"): 0.6,
    (13, "blur"): 0.9,
    (3, "noise"): 0.3,
    (11, "noise"): 0.8,
    (13, "compression"): 0.5,
}
SQL_CRITIQUES = {
    3: {"critic": "artimuse", "score": 31.0, "aspects": {"Technical Execution": "soft focus on the dog"}},
    5: {
        "critic": "artimuse",
        "score": 22.5,
        "aspects": {"Composition & Design": "the house is cut off", "Technical Execution": "flat, grey light"},
    },
    11: {
        "critic": "artimuse",
        "score": 12.0,
        "aspects": {"Composition & Design": "tilted horizon", "Originality & Creativity": "a stock photo"},
    },
}
SQL_EMBEDDINGS = {1: {0: 1.0}, 2: {0: 1.0, 1: 0.1}, 3: {0: 1.0, 1: 1.0}, 4: {1: 1.0}, 5: {0: -1.0, 1: 0.5}}
SQL_CLIP_EMBEDDINGS = {6: {0: 1.0}}  # another embedder (768-d) the neighbour query must leave out
SQL_OLD_DAILY = (1, 40, 3, 2.0)  # generator, days ago, count, mean: outside the 30-day window


def sql_example_key(asset: SqlExampleAsset) -> str:
    """The object key the seed gives an asset, after the layout ingest reads provenance from."""
    if asset.generator_id:
        return f"generated/sdxl/{SQL_VERSION[asset.generator_id]}/{asset.id}.png"
    return f"crawled/{asset.id}.jpg"


def sql_example_scored(gid: int) -> list[SqlExampleAsset]:
    """The scored assets of one generator version."""
    return [asset for asset in SQL_SCORED if asset.generator_id == gid]


def sql_example_daily() -> list[tuple[int, int, int, float]]:
    """(generator, days ago, count, mean) of technical scores per scoring day, as the aggregate flow writes."""
    import statistics

    days: dict[tuple[int, int], list[float]] = {}
    for asset in SQL_SCORED:
        if asset.generator_id:
            days.setdefault((asset.generator_id, int(asset.days_ago)), []).append(asset.technical)
    return [(gid, ago, len(values), statistics.mean(values)) for (gid, ago), values in days.items()] + [SQL_OLD_DAILY]


def sparse_vector(components: dict[int, float], dimension: int) -> np.ndarray:
    """A dense vector from its non-zero components."""
    dense = np.zeros(dimension)
    for index, value in components.items():
        dense[index] = value
    return dense


def seed_sql_examples(settings: Settings) -> None:
    """Write docs/sql.md's example data with plain INSERTs, times relative to the database's now()."""
    import statistics

    import sqlalchemy as sa

    from aesq.core import database

    ago = "now() - CAST(:days AS float8) * interval '1 day'"
    with database.get_engine(settings).begin() as connection:

        def insert(sql: str, rows: list[dict[str, Any]]) -> None:
            connection.execute(sa.text(sql), rows)

        insert(
            "INSERT INTO generators (id, name, version, kind, parent_id) VALUES (:id, :name, :version, :kind, :parent)",
            [
                {"id": gid, "name": name, "version": version, "kind": kind, "parent": parent}
                for gid, (name, version, kind, parent) in SQL_GENERATORS.items()
            ],
        )
        insert(
            f"""INSERT INTO assets (id, storage, bucket, key, sha256, size_bytes, width, height, source_kind,
                                       generator_id, prompt, seed, status, error, created_at, scored_at)
                   VALUES (:id, 's3', 'images', :key, :sha, 1000, 1024, 1024, :kind, :generator_id, :prompt, :seed,
                           :status, :error, {ago}, now() - CAST(:scored_days AS float8) * interval '1 day')""",
            [
                {
                    **asset._asdict(),
                    "days": asset.days_ago,
                    "sha": f"sha-{asset.id}",
                    "scored_days": asset.days_ago if asset.status == "scored" else None,
                    "kind": "generated" if asset.generator_id else "crawled",
                    "key": sql_example_key(asset),
                }
                for asset in SQL_ASSETS
            ],
        )
        scores = (
            [(asset.id, "technical", "1", asset.technical, asset.days_ago) for asset in SQL_SCORED]
            + [(asset_id, "technical", "0", value, 30) for asset_id, value in SQL_STALE_TECHNICAL.items()]
            + [(asset_id, "laion-aes-v2", "2", value, 1) for asset_id, value in SQL_LAION.items()]
        )
        insert(
            f"INSERT INTO scores (asset_id, scorer, scorer_version, value, created_at) VALUES (:a, :s, :v, :x, {ago})",
            [{"a": a, "s": s, "v": v, "x": x, "days": days} for a, s, v, x, days in scores],
        )
        embeddings = [
            (asset_id, "efficientnet-lite0", sparse_vector(parts, 1280)) for asset_id, parts in SQL_EMBEDDINGS.items()
        ]
        embeddings += [
            (asset_id, "clip-vit-l-14", sparse_vector(parts, 768)) for asset_id, parts in SQL_CLIP_EMBEDDINGS.items()
        ]
        insert(
            "INSERT INTO embeddings (asset_id, embedder, vector) VALUES (:a, :e, CAST(:v AS halfvec))",
            [{"a": a, "e": e, "v": "[" + ",".join(map(str, v)) + "]"} for a, e, v in embeddings],
        )
        insert(
            "INSERT INTO defects (asset_id, category, severity, detail) VALUES (:a, :c, :s, :d)",
            [{"a": a, "c": c, "s": s, "d": f"measured {s}"} for (a, c), s in SQL_DEFECTS.items()],
        )
        insert(
            "INSERT INTO critiques (asset_id, critic, critic_score, aspects) VALUES (:a, :c, :s, CAST(:x AS json))",
            [
                {"a": a, "c": detail["critic"], "s": detail["score"], "x": json.dumps(detail["aspects"])}
                for a, detail in SQL_CRITIQUES.items()
            ],
        )
        stats = [(gid, "technical", [a.technical for a in sql_example_scored(gid)]) for gid in SQL_GENERATORS]
        stats.append((1, "laion-aes-v2", [SQL_LAION[a.id] for a in sql_example_scored(1) if a.id in SQL_LAION]))
        insert(
            """INSERT INTO version_stats (generator_id, scorer, count, mean, mean_low, mean_high, std, median,
                                             p10, p90, threshold, share_above)
                  VALUES (:g, :s, :n, :mean, :low, :high, :std, :median, :p10, :p90, 5.0, :above)""",
            [
                {
                    "g": gid,
                    "s": scorer,
                    "n": len(values),
                    "mean": statistics.mean(values),
                    "low": statistics.mean(values) - 1,
                    "high": statistics.mean(values) + 1,
                    "std": statistics.stdev(values),
                    "median": statistics.median(values),
                    "p10": float(np.percentile(values, 10)),
                    "p90": float(np.percentile(values, 90)),
                    "above": statistics.mean(value >= 5.0 for value in values),
                }
                for gid, scorer, values in stats
            ],
        )
        insert(
            """INSERT INTO version_daily_stats (generator_id, scorer, day, count, mean)
                  VALUES (:g, 'technical', current_date - :days, :n, :mean)""",
            [{"g": gid, "days": days, "n": n, "mean": mean} for gid, days, n, mean in sql_example_daily()],
        )


# The compose stack as tests read it (tests/test_docker_compose.py, tests/test_grafana.py).
COMPOSE_TEXT = (Path(__file__).resolve().parent.parent / "docker-compose.yml").read_text()
COMPOSE_SERVICES = yaml.safe_load(COMPOSE_TEXT)["services"]
COMPOSE_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")
# A `.env` setting every interpolated variable, to catch services that spell the same secret differently.
COMPOSE_DOTENV = {name: f"x{name.lower()}" for name in set(re.findall(r"\$\{(\w+)", COMPOSE_TEXT))} | {
    "AESQ_POOLS": json.dumps({"xaesq_gpu_pool": {"scorers": ["technical"], "device": "cuda"}}),
    "AESQ_RESULT_STORAGE": "s3://xaesq-results/prefect",
}
# The documented GPU setup (deploy/compose-gpu.env, appended to `.env`): KEY=VALUE lines, values literal.
COMPOSE_GPU_DOTENV = dict(
    line.split("=", 1)
    for line in (Path(__file__).resolve().parent.parent / "deploy" / "compose-gpu.env").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)


def resolve_compose(value: object, dotenv: dict[str, str]) -> str:
    """Interpolate `$$`, `${VAR}` and `${VAR:-default}` as compose does; anything else is an error."""
    text = str(value)
    assert "$" not in COMPOSE_INTERPOLATION.sub("", text), f"unsupported interpolation in {text!r}"

    def substitute(match: re.Match[str]) -> str:
        name, default = match.groups()
        if name is None:
            return "$"
        assert dotenv.get(name) or default is not None, f"${{{name}}} has no default"
        return dotenv.get(name) or default

    return COMPOSE_INTERPOLATION.sub(substitute, text)


def compose_env(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """The resolved environment of a service."""
    return {
        key: resolve_compose(value, dotenv) for key, value in COMPOSE_SERVICES[service].get("environment", {}).items()
    }


def wait_for_slot(name: str, worker: subprocess.Popen, log: Path) -> None:
    """Block until a scoring pool's worker has loaded its models and claimed its slot, against the current Prefect
    API: it serves a moment later (and batches handed over before then wait for it)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited early: {log.read_text()}")
            if any(limit.name == name for limit in client.read_global_concurrency_limits()):
                time.sleep(2)  # subscribing to its task runs follows the slot at once
                return
            time.sleep(0.5)
    raise AssertionError(f"worker did not start: {log.read_text()}")


# The Kubernetes manifests as tests read them (tests/test_kubernetes.py, and the probes run against real processes).
KUBERNETES = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def kubernetes_probe(manifest: str, probe: str, port: int) -> list[str]:
    """The exec command of `probe` (e.g. livenessProbe) of the first container in a Kubernetes manifest file,
    pointed at `port` on loopback instead of the port the manifest names, run by this Python."""
    (document,) = yaml.safe_load_all((KUBERNETES / manifest).read_text())
    program, *arguments = document["spec"]["template"]["spec"]["containers"][0][probe]["exec"]["command"]
    assert program == "python", program
    return [sys.executable, *(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", part) for part in arguments)]


# A nightly report's figures with known answers, to render (tests/analysis/test_report.py, also in a subprocess).
REPORT_HOSTILE = "<script>alert(1)</script>"
REPORT_VERSIONS = ["sdxl/lora-7", "sdxl/base", REPORT_HOSTILE]
REPORT_FIRST_DAY = date(2024, 5, 1)


def report_thumbnail(asset_id: int, name: str, score: float) -> Thumbnail:
    """A real photograph shrunk to at most 128 px, as a JPEG thumbnail."""
    from aesq.analysis.report import Thumbnail

    image = photo(name)
    image.thumbnail((128, 128))
    return Thumbnail(asset_id=asset_id, caption=f"{name}.png · {score:.1f}", jpeg=jpeg_bytes(image, quality=80))


def sample_report() -> ReportData:
    """Three versions under two scorers, five days of trends, defects, changes and thumbnails."""
    from aesq.analysis.report import ReportData, VersionLine

    rng = np.random.default_rng(7)
    return ReportData(
        title="aesq nightly report",
        generated_at=datetime(2024, 5, 6, 3, 0, tzinfo=UTC),
        since=datetime(2024, 4, 30, tzinfo=UTC),
        leaderboard=[
            VersionLine("sdxl/lora-7", "ernie-aes", 1250, 72.14, 70.31, 73.82, 71.96, 0.643, 1.42),
            VersionLine("sdxl/base", "ernie-aes", 980, 65.5, 63.2, 67.9, 66.04, 0.41, -3.1),
            VersionLine(REPORT_HOSTILE, "ernie-aes", 12, 58.0, None, None, 57.5, None, None),
            VersionLine("sdxl/lora-7", "technical", 1250, 6.432, 6.31, 6.55, 6.5, 0.7, 0.004),
            VersionLine("sdxl/base", "technical", 980, 5.9, 5.71, 6.08, 5.88, 0.52, -0.25),
        ],
        distributions={
            ("sdxl/lora-7", "ernie-aes"): list(rng.normal(72, 8, 300)),
            ("sdxl/base", "ernie-aes"): list(rng.normal(65, 10, 200)),
            (REPORT_HOSTILE, "ernie-aes"): list(rng.normal(58, 6, 12)),
            ("sdxl/lora-7", "technical"): list(rng.normal(6.4, 1.0, 300)),
            ("sdxl/base", "technical"): list(rng.normal(5.9, 1.2, 200)),
            (REPORT_HOSTILE, "technical"): [],
        },
        trends={
            (version, scorer): [
                (REPORT_FIRST_DAY + timedelta(days=day), float(rng.normal(base, base / 20)), int(rng.integers(50, 300)))
                for day in range(5)
            ]
            for version in REPORT_VERSIONS[:2]
            for scorer, base in [("ernie-aes", 70.0), ("technical", 6.0)]
        },
        changes=[f"new version {REPORT_HOSTILE}", "sdxl/base ernie-aes mean -3.1 & share above 41% < 50%"],
        defects={
            "sdxl/lora-7": {"blur": 3, "noise": 1},
            "sdxl/base": {"overexposure": 2, "blur": 5},
            REPORT_HOSTILE: {},
        },
        best={
            "sdxl/lora-7": [report_thumbnail(1, "astronaut", 91.5), report_thumbnail(2, "chelsea", 88.0)],
            "sdxl/base": [report_thumbnail(3, "coffee", 84.2)],
        },
        worst={
            "sdxl/lora-7": [report_thumbnail(4, "rocket", 31.0)],
            REPORT_HOSTILE: [report_thumbnail(5, "immunohistochemistry", 12.5)],
        },
    )


def add_scored_assets(settings, version: str, values: list[float], offset: int = 0, name: str = "m") -> list[int]:
    """Scored assets of generator `name`:`version` with these technical scores, written in this order; their ids."""
    from aesq.core.database import get_engine
    from aesq.core.images import ImageFacts
    from aesq.core.provenance import GeneratorRef, Provenance
    from aesq.core.writes import AssetRecord, ScoreValue, mark_scored, upsert_assets, upsert_generators, write_scores

    facts = ImageFacts(width=8, height=8, format="PNG", mode="RGB", frames=1)
    generator = GeneratorRef(name, version)
    records = [
        AssetRecord(
            "s3",
            "bkt",
            f"{name}/{version}/{offset + i}.png",
            f"{name}-{version}-{offset + i}",
            None,
            10,
            facts,
            Provenance("generated", generator, "p", i, {}),
            None,
        )
        for i in range(len(values))
    ]
    with get_engine(settings).begin() as connection:
        upsert_generators(connection, [generator])
        ids = upsert_assets(connection, records)
        write_scores(connection, [ScoreValue(i, "technical", "1", v, {}) for i, v in zip(ids, values, strict=True)])
        mark_scored(connection, ids)
    return ids


# A tiny random InternVL-chat checkpoint in the published layout (tests of the InternVL scorers and of the
# pipeline around a VLM). Its libraries are imported when it is built, so importing these helpers stays light.

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
PAIRS = (
    [f"a{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    + [f"c{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
    + [f"d{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
    + [f"e{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
)
VOCAB_SIZE = 400
VISION = {
    "architectures": ["InternVisionModel"],
    "model_type": "intern_vit_6b",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "image_size": 448,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "qk_normalization": False,
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "initializer_factor": 0.1,
    "drop_path_rate": 0.0,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "use_flash_attn": True,
}
LLM = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "attn_implementation": "flash_attention_2",
    "use_cache": True,
}


def chat_config(**extra) -> dict:
    """The tiny checkpoint's config.json as InternVL-chat publishes one, with `extra` fields set."""
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "model_type": "internvl_chat",
        "llm_config": LLM,
        "vision_config": VISION,
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": 448,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "pad2square": False,
        "torch_dtype": "bfloat16",
        **extra,
    }


def make_tokenizer(split: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the chat special tokens; every score pair one merged token unless `split`."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as token_models
    from transformers import PreTrainedTokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for pair in PAIRS:
        if pair != split:
            vocab[pair] = len(vocab)
            merges.append((pair[0], pair[1]))
    tokenizer = Tokenizer(token_models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def native_model(
    image_token_id: int, qkv_bias: bool = True, qk_normalization: bool = False, norm_type: str = "layer_norm"
) -> InternVLForConditionalGeneration:
    """The tiny model in transformers' own InternVL classes, every weight random (seeded).

    The vision layout is named by the published vision_config fields: InternViT-300M's by default,
    InternViT-6B's with `qkv_bias=False, qk_normalization=True, norm_type="rms_norm"`.
    """
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

    vision = InternVLVisionConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=448,
        patch_size=14, attention_bias=qkv_bias, use_qk_norm=qk_normalization, norm_type=norm_type,
        layer_norm_eps=1e-6,
    )  # fmt: skip
    text = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )  # fmt: skip
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=256,
        downsample_ratio=0.5, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.5 if "lm_head" in name or "embed_tokens" in name else 0.2
            parameter.copy_(torch.randn_like(parameter) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def to_chat_layout(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the published→native mapping, written from InternVL-chat's module names."""
    import torch

    vision_renames = [
        ("model.vision_tower.", "vision_model."),
        (".encoder.layer.", ".encoder.layers."),
        ("embeddings.cls_token", "embeddings.class_embedding"),
        ("embeddings.position_embeddings", "embeddings.position_embedding"),
        ("embeddings.patch_embeddings.projection", "embeddings.patch_embedding"),
        ("attention.projection_layer", "attn.proj"),
        ("attention.q_norm", "attn.q_norm"),
        ("attention.k_norm", "attn.k_norm"),
        ("lambda_1", "ls1"),
        ("lambda_2", "ls2"),
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
    ]
    chat: dict[str, torch.Tensor] = {}
    for key, tensor in native.items():
        if key == "lm_head.weight":
            chat["language_model.lm_head.weight"] = tensor
        elif key.startswith("model.language_model."):
            chat["language_model.model." + key.removeprefix("model.language_model.")] = tensor
        elif key.startswith("model.multi_modal_projector."):
            name = key.removeprefix("model.multi_modal_projector.")
            for old, new in (("layer_norm", "mlp1.0"), ("linear_1", "mlp1.1"), ("linear_2", "mlp1.3")):
                name = name.replace(old, new)
            chat[name] = tensor
        elif key.startswith("model.vision_tower."):
            name = key
            for old, new in vision_renames:
                name = name.replace(old, new)
            if ".attention.k_proj." in name or ".attention.v_proj." in name:
                continue
            if ".attention.q_proj." in name:
                parts = [native[key.replace("q_proj", part)] for part in ("q_proj", "k_proj", "v_proj")]
                chat[name.replace("attention.q_proj", "attn.qkv")] = torch.cat(parts, dim=0)
            else:
                chat[name] = tensor
        else:
            raise AssertionError(f"unexpected native weight {key}")
    return chat


def write_checkpoint(
    folder: Path, state: dict[str, torch.Tensor], config: dict, tokenizer, sharded: bool = True
) -> Path:
    """Write the published layout: config.json, safetensors (sharded with an index, or one file), tokenizer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    state = {key: tensor.contiguous().clone() for key, tensor in state.items()}
    if sharded:
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard_keys in shards.items():
            save_file({key: state[key] for key in shard_keys}, str(folder / name), metadata={"format": "pt"})
        weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(folder))
    return folder


def write_tiny_ernie(root: Path) -> Path:
    """A weights folder with this tiny model as ERNIE-Image-Aes (for tests of the pipeline around it)."""
    tokenizer = make_tokenizer()
    native = native_model(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    write_checkpoint(root / "ERNIE-Image-Aes", to_chat_layout(native.state_dict()), chat_config(), tokenizer)
    return root


def ship_vocabulary_files(folder: Path, without_merge: str | None = None) -> Path:
    """Add to a tiny checkpoint the files its tokenizer is also published as (vocab.json, merges.txt and a
    tokenizer_config.json naming Qwen2Tokenizer, as InternVL-chat checkpoints ship them), made from its
    tokenizer.json; `without_merge` (a score pair such as "ey") is left out of merges.txt only, so that the
    two disagree on it."""
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [" ".join(merge) for merge in model["model"]["merges"] if "".join(merge) != without_merge]
    (folder / "vocab.json").write_text(json.dumps(model["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), encoding="utf-8")
    added = {
        str(token["id"]): {
            "content": token["content"], "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in model["added_tokens"]
    }  # fmt: skip
    config = {
        "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 16384, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def answer_with_score_tokens(folder: Path) -> Path:
    """Zero the LM-head rows of every token but the 101 score tokens of a tiny checkpoint, so that, as a trained
    scorer does, it puts most of its next-token probability on them."""
    import torch
    from safetensors.torch import load_file, save_file

    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    keep = torch.tensor([vocab[pair] for pair in PAIRS])
    index = folder / "model.safetensors.index.json"
    head = "language_model.lm_head.weight"
    shard = folder / (json.loads(index.read_text())["weight_map"][head] if index.is_file() else "model.safetensors")
    state = load_file(str(shard))
    answering = torch.zeros_like(state[head])
    answering[keep] = state[head][keep]
    save_file({**state, head: answering}, str(shard), metadata={"format": "pt"})
    return folder


# A tiny random CLIP vision tower with the real 768-d projection (so the real-size LAION head fits) and a random head
# in the published key layout, standing in for CLIP ViT-L/14 and the LAION aesthetic head v2.

LAION_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


def tiny_clip_config(**overrides) -> CLIPVisionConfig:
    """The tiny CLIP vision tower's config, with `overrides`."""
    from transformers import CLIPVisionConfig

    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=768,
    )
    return CLIPVisionConfig(**(settings | overrides))


def published_laion_head(seed: int = 0, inputs: int = 768) -> torch.nn.Sequential:
    """The published head's module layout (Linear/Dropout at the original indices), random weights; with
    `inputs` 1152, the v2.5 head's shapes (over SigLIP)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def save_laion_head(path: Path, module: torch.nn.Module, prefix: str = "layers.") -> dict[str, torch.Tensor]:
    """Save `module`'s state with its keys under `prefix`, as the published head file holds them."""
    import torch

    state = {f"{prefix}{key}": value for key, value in module.state_dict().items()}
    torch.save(state, path)
    return state


def write_tiny_clip(root: Path) -> Path:
    """A weights folder: the tiny CLIP in clip-vit-large-patch14/ and a random head in the published layout."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(1)
    CLIPVisionModelWithProjection(tiny_clip_config()).save_pretrained(root / "clip-vit-large-patch14")
    save_laion_head(root / LAION_HEAD_FILE, published_laion_head())
    return root


def defect_shares_from_rows(settings) -> list[dict]:
    """Per version and defect category found: assets with it, scored assets, share; counted in Python from the
    asset and defect rows (independently of the view the API reads), ordered by version and category."""
    import sqlalchemy as sa

    from aesq.core.database import get_engine

    query = """
        SELECT g.name || ':' || g.version AS version, a.id, a.status, d.category
        FROM assets a JOIN generators g ON g.id = a.generator_id LEFT JOIN defects d ON d.asset_id = a.id
    """
    scored: dict[str, set[int]] = {}
    flagged: dict[tuple[str, str], set[int]] = {}
    with get_engine(settings).connect() as connection:
        for version, asset_id, status, category in connection.execute(sa.text(query)):
            if status == "scored":
                scored.setdefault(version, set()).add(asset_id)
                if category is not None:
                    flagged.setdefault((version, category), set()).add(asset_id)
    return [
        {"version": version, "category": category, "assets": len(ids), "scored": len(scored[version]),
         "share": len(ids) / len(scored[version])}
        for (version, category), ids in sorted(flagged.items())
    ]  # fmt: skip
